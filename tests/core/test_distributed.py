"""Data-parallel training on 2 gloo processes (CPU): the trainer under torch.distributed and its launcher.

Tiny convnets on 16 px synthetic images. The rank functions live in dist_testkit (spawn pickles them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_core.checkpoint import load_checkpoint
from ssl_core.errors import SpecError
from ssl_core.train import pretrain
from tests.support.net import wait_for

import dist_testkit as kit
from methods_testkit import random_images

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def test_simclr_world_2_equals_world_1_with_the_global_batch(tmp_path):
    """Per-rank batch B at world size 2 == batch 2B on one process: same loss, same (averaged) gradients."""
    spec = kit.tiny({"name": "simclr"}, batch=8, augment=[])
    images = random_images(8, side=16, seed=3)
    ranks = kit.spawn(kit.simclr_step, tmp_path, spec.model_dump_json(), images)

    from ssl_core.registry import build_method

    torch.manual_seed(0)
    method = build_method(spec).eval()
    loss, _ = method.training_step(images, None, torch.Generator().manual_seed(0))
    loss.backward()
    for r in ranks:
        assert r["loss"] == pytest.approx(loss.item(), rel=1e-5)  # every rank computes the global loss
        for name, p in method.named_parameters():
            assert torch.allclose(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6), name
    # the negatives really came from the other rank: a per-rank loss (batch B alone) is another number
    torch.manual_seed(0)
    half, _ = build_method(spec).eval().training_step(images[:4], None, torch.Generator().manual_seed(0))
    assert abs(half.item() - loss.item()) > 1e-3


def test_moco_world_2_enqueues_both_ranks_keys_and_mixes_the_key_batches(tmp_path):
    spec = kit.tiny({"name": "moco", "version": 2, "queue_size": 24}, batch=8, augment=[])
    images = random_images(8, side=16, seed=4)
    r0, r1 = kit.spawn(kit.moco_step, tmp_path, spec.model_dump_json(), images)
    assert r0["ptr"] == r1["ptr"] == 8  # the global batch's keys
    assert torch.equal(r0["queue"], r1["queue"])
    assert torch.allclose(r0["queue"][:8], torch.cat([r0["keys"], r1["keys"]]), atol=1e-6)  # rank order
    for r in (r0, r1):  # this rank's key batch held samples of both ranks: never a query's BN batch
        assert sorted(r["key_batch_owners"]) == [0, 0, 1, 1]


def test_every_method_trains_on_two_processes(tmp_path):
    names = list(kit.EVERY_METHOD)
    r0, r1 = kit.spawn(kit.every_method, tmp_path, names)
    for name in names:
        completed, step, loss = r0[name]
        assert completed and step >= 1 and loss is not None and loss == loss, name
        assert r1[name][:2] == r0[name][:2], name  # both ranks ran the same global steps
        assert (tmp_path / name / "backbone.safetensors").exists(), name


def test_cancel_stops_both_ranks_at_one_step_and_resume_at_world_2_and_1(tmp_path):
    spec = kit.tiny({"name": "simclr"}, subset=48, batch=8, epochs=2)  # 6 steps per epoch, 12 in all
    r0, r1 = kit.spawn(kit.stop_then_resume, tmp_path, spec.model_dump_json(), 4)
    assert r0["stopped"] == r1["stopped"] == (False, 4)  # rank 1 asked; both stopped at step 4
    assert r0["ck"] == (4, 2, 1)  # one checkpoint at step 4, world size 2, rank 1's random states
    assert r0["resumed"] == r1["resumed"] == (True, 12) and r0["straight"] == 12
    assert r0["same_as_straight"]  # stop + resume at world size 2 == the uninterrupted run (CPU, fp32)
    # elastic resume: the world-size-2 checkpoint continues on one process with the same global batch
    result = pretrain(spec, tmp_path / "for_world1")
    assert result.completed and result.step == 12
    assert load_checkpoint(tmp_path / "for_world1" / "checkpoints" / "last.safetensors")["world_size"] == 1


def test_global_batch_must_divide_among_the_ranks(tmp_path):
    from ssl_core.distributed import DistContext

    with pytest.raises(SpecError, match=r"^batch_size: the global batch 9 does not divide among 2"):
        DistContext(rank=0, world=2).local_batch(9)
    with pytest.raises(ValueError, match="batch_size: the global batch 10 does not divide among resources.gpus 4"):
        kit.tiny({"name": "rotation"}, batch=10, resources={"gpus": 4})



def test_sync_bn_on_cpu_ranks_is_refused_naming_the_field():
    from ssl_core.distributed import DistContext
    from ssl_core.registry import build_method

    method = build_method(kit.tiny({"name": "simclr", "sync_bn": True}))
    with pytest.raises(SpecError, match=r"^method.sync_bn: SyncBatchNorm needs CUDA devices"):
        DistContext(rank=0, world=2).wrap(method, torch.device("cpu"), sync_bn=True)


# ----------------------------------------------------------------------------- the service's launcher
class ListSink:
    def __init__(self, stop_after_metrics: int | None = None):
        self.rows, self.progress_calls, self.artifacts, self.flushes = [], [], [], 0
        self.stop_after = stop_after_metrics

    def metrics(self, step, values, epoch=None):
        self.rows.append((step, values, epoch))

    def progress(self, **kw):
        self.progress_calls.append(kw)

    def artifact(self, name, path, kind):
        self.artifacts.append((name, Path(path), kind))

    def should_stop(self):
        return self.stop_after is not None and len(self.rows) >= self.stop_after

    def flush(self):
        self.flushes += 1


def test_run_pretrain_forwards_rank_0_to_the_callers_sink_and_passes_a_stop(tmp_path):
    from ssl_core.launch import run_pretrain

    spec = kit.tiny({"name": "rotation"}, subset=64, batch=8, epochs=2)  # 8 steps per epoch
    sink = ListSink()
    result = run_pretrain(spec, tmp_path / "full", nproc=2, sink=sink)
    assert result.completed and result.step == 16
    assert [s for s, v, _ in sink.rows if "train/loss" in v] == list(range(1, 17))  # rank 0 alone reports
    assert sink.progress_calls and sink.flushes
    assert ("backbone.safetensors", tmp_path / "full" / "backbone.safetensors", "backbone") in sink.artifacts
    from safetensors import safe_open

    with safe_open(str(result.backbone_path), "pt") as f:
        assert f.metadata()["world_size"] == "2"

    stopping = ListSink(stop_after_metrics=3)
    stopped = run_pretrain(spec, tmp_path / "stopped", nproc=2, sink=stopping)
    assert not stopped.completed and 3 <= stopped.step < 16
    assert load_checkpoint(stopped.checkpoint_path)["step"] == stopped.step


def test_run_pretrain_raises_the_ranks_permanent_error_by_type(tmp_path):
    from ssl_core.checkpoint import ResumeMismatchError
    from ssl_core.launch import run_pretrain

    pretrain(kit.tiny({"name": "rotation"}), tmp_path)
    with pytest.raises(ResumeMismatchError, match="Differing: seed"):
        run_pretrain(kit.tiny({"name": "rotation"}, seed=1), tmp_path, nproc=2)


CALLER = """
import sys
from ssl_core.launch import run_pretrain
from dist_testkit import tiny

class Echo:
    def metrics(self, step, values, epoch=None): print("metrics", step, flush=True)
    def progress(self, **kw): pass
    def artifact(self, *a): pass
    def should_stop(self): return False
    def flush(self): pass

run_pretrain(tiny({"name": "rotation"}, subset=4096, batch=8, epochs=50), sys.argv[1], nproc=2, sink=Echo())
"""


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and "spawn_main" in (stat.parent / "cmdline").read_bytes().decode(errors="replace"):
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killing_the_caller_leaves_no_rank_alive(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "core")])}
    log = open(tmp_path / "caller.log", "w+")
    caller = subprocess.Popen([sys.executable, "-c", CALLER, str(tmp_path / "run")], env=env, stdout=log,
                              stderr=subprocess.STDOUT, cwd=str(REPO))
    try:
        wait_for(lambda: "metrics" in (tmp_path / "caller.log").read_text(), 120, "the ranks training",
                 on_timeout=lambda: (tmp_path / "caller.log").read_text()[-3000:])
        ranks = [p for p in _children(caller.pid) if _alive(p)]
        assert len(ranks) == 2, ranks
        caller.send_signal(signal.SIGKILL)
        caller.wait(10)
        wait_for(lambda: not any(_alive(p) for p in ranks), 20, "every rank to die with its caller")
    finally:
        if caller.poll() is None:
            caller.kill()
        log.close()


def test_cli_nproc_2_runs_the_ranks_and_rank_0_prints_the_result(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ssl_core.cli", "train", str(REPO / "examples" / "tiny" / "rotation.json"),
           "--out", str(tmp_path / "run"), "--nproc", "2", "--no-progress"]
    odd = subprocess.run(cmd + ["--set", "batch_size=15"], capture_output=True, text=True, env=env, timeout=120)
    assert odd.returncode == 2 and "batch_size: the global batch 15 does not divide among --nproc 2" in odd.stderr
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"completed"') == 1  # rank 0 alone prints the result
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["completed"] and result["step"] == 6
    from safetensors import safe_open

    with safe_open(result["backbone"], "pt") as f:
        assert f.metadata()["world_size"] == "2"
