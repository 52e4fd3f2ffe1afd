"""The resumable training loop: exact resume, stop requests, NaN detection, checkpoints, export.

All runs: CPU, fp32, a 4-wide convnet on 48 synthetic 16 px images (3 steps of 16 per epoch).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ssl_core.errors import NonFiniteLossError, PermanentError
from ssl_core.specs import PretrainSpec
from ssl_core.checkpoint import load_checkpoint
from ssl_core.train import pretrain

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tiny"


def tiny_spec(name: str = "simclr", **overrides) -> PretrainSpec:
    raw = json.loads((EXAMPLES / f"{name}.json").read_text())
    raw.update(overrides)
    return PretrainSpec.model_validate(raw)


class ListSink:
    def __init__(self, stop_after: int | None = None):
        self.rows, self.artifacts, self.progress_calls = [], [], []
        self.calls, self.stop_after = 0, stop_after

    def metrics(self, step, values, epoch=None):
        self.rows.append((step, dict(values), epoch))

    def progress(self, **kw):
        self.progress_calls.append(kw)

    def artifact(self, name, path, kind):
        self.artifacts.append((name, Path(path), kind))

    def should_stop(self):
        self.calls += 1
        return self.stop_after is not None and self.calls > self.stop_after

    def flush(self):
        pass


def stop_after(n: int):
    """A should_stop that lets ``n`` steps run, then asks to stop."""
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > n

    return stop


def model_state(out: Path) -> dict:
    return load_checkpoint(out / "checkpoints" / "last.safetensors")["model"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_stop_resume_equals_straight(spec, root: Path, stop_at: int = 4, total: int = 6) -> None:
    """Stopping after ``stop_at`` steps and resuming ends with the weights of a straight run."""
    straight = pretrain(spec, root / "straight", resume=False)
    first = pretrain(spec, root / "resumed", should_stop=stop_after(stop_at), resume=False)
    assert not first.completed and first.step == stop_at
    second = pretrain(spec, root / "resumed")
    assert second.completed and second.step == straight.step == total
    assert_same_state(model_state(root / "straight"), model_state(root / "resumed"))


@pytest.mark.parametrize(
    "name,steps_before_stop",
    [("simclr", 3), ("simclr", 1), ("moco_v2", 3), ("moco_v2", 4)],
    ids=["simclr-epoch-boundary", "simclr-mid-epoch", "moco-epoch-boundary", "moco-mid-epoch"],
)
def test_stop_and_resume_equals_straight_run(tmp_path, name, steps_before_stop):
    spec = tiny_spec(name)
    straight = pretrain(spec, tmp_path / "straight", resume=False)
    assert straight.completed and straight.step == 6 and straight.epoch == 2

    first = pretrain(spec, tmp_path / "resumed", should_stop=stop_after(steps_before_stop), resume=False)
    assert not first.completed and first.step == steps_before_stop
    assert first.backbone_path is None and first.checkpoint_path.exists()
    ck = load_checkpoint(first.checkpoint_path)
    assert (ck["epoch"], ck["step_in_epoch"], ck["step"]) == (steps_before_stop // 3, steps_before_stop % 3,
                                                            steps_before_stop)
    second = pretrain(spec, tmp_path / "resumed")
    assert second.completed and second.step == 6  # global steps continue

    assert_same_state(model_state(tmp_path / "straight"), model_state(tmp_path / "resumed"))
    if name.startswith("moco"):  # the queue and its pointer travel in the checkpoint
        assert "queue" in "".join(model_state(tmp_path / "resumed"))
    from safetensors.torch import load_file

    assert_same_state(load_file(straight.backbone_path), load_file(second.backbone_path))


def test_resume_with_more_epochs_continues_global_steps(tmp_path):
    spec1 = tiny_spec("rotation", epochs=1, optim={"name": "sgd", "lr": 0.05, "schedule": "constant"})
    r1 = pretrain(spec1, tmp_path)
    spec2 = tiny_spec("rotation", epochs=2, optim={"name": "sgd", "lr": 0.05, "schedule": "constant"})
    sink = ListSink()
    r2 = pretrain(spec2, tmp_path, sink=sink)
    assert (r1.step, r2.step, r2.epoch) == (3, 6, 2)
    assert min(step for step, _, _ in sink.rows) == 4  # no step re-run
    straight = pretrain(spec2, tmp_path / "straight")
    assert_same_state(model_state(tmp_path), model_state(tmp_path / "straight"))


def test_checkpoint_round_trip_and_contents(tmp_path):
    r = pretrain(tiny_spec("moco_v2", epochs=1), tmp_path)
    assert r.checkpoint_path.name == "last.safetensors"
    with safe_open(str(r.checkpoint_path), framework="pt") as f:  # a safetensors file: no pickle inside
        assert f.metadata()["format"] == "pretextlab-checkpoint"
    ck = load_checkpoint(r.checkpoint_path)
    assert {"model", "optimizer", "scaler", "epoch", "step", "step_in_epoch", "rng", "spec"} <= ck.keys()
    assert {"torch", "cuda", "aug", "python", "numpy"} <= ck["rng"].keys()
    assert PretrainSpec.model_validate_json(ck["spec"]).method.name == "moco"
    assert any("key" in k or "momentum" in k for k in ck["model"])  # key encoder saved
    assert ck["optimizer"]["state"]  # momentum buffers saved
    assert not list(r.checkpoint_path.parent.glob(".*tmp*"))  # atomic write left no temp file


def test_nan_loss_raises_naming_the_step(tmp_path, monkeypatch):
    import ssl_core.registry as registry

    real = registry.build_method

    def build(spec):
        method = real(spec)
        inner = method.training_step
        count = {"n": 0}

        def step(images, targets, generator=None):
            loss, metrics = inner(images, targets, generator)
            count["n"] += 1
            return (loss * float("nan") if count["n"] == 3 else loss), metrics

        method.training_step = step
        return method

    monkeypatch.setattr(registry, "build_method", build)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2\b"):
        pretrain(tiny_spec("simclr", log_every=100), tmp_path)  # found at the end-of-epoch read
    assert not (tmp_path / "checkpoints" / "last.safetensors").exists()  # a diverged model is never saved


def test_should_stop_from_sink_and_metrics(tmp_path):
    sink = ListSink(stop_after=2)
    r = pretrain(tiny_spec("simclr"), tmp_path, sink=sink)
    assert not r.completed and r.step == 2 and r.checkpoint_path.exists()
    assert ("last.safetensors", r.checkpoint_path, "checkpoint") in sink.artifacts
    names = set().union(*(v.keys() for _, v, _ in sink.rows))
    assert {"train/loss", "train/lr", "train/images_per_sec", "train/pretext_acc"} <= names
    assert [s for s, _, _ in sink.rows] == [1, 2]
    assert sink.progress_calls[-1]["total_steps"] == 6


def test_backbone_export_loads_with_metadata(tmp_path):
    from ssl_core.backbone_file import load_backbone
    from ssl_core.features import extract_features

    spec = tiny_spec("rotation", epochs=1, eval={"monitor": {"every_epochs": 1, "train_subset": 20,
                                                            "test_subset": 10, "k": 5}})
    sink = ListSink()
    r = pretrain(spec, tmp_path, sink=sink)
    assert ("backbone.safetensors", r.backbone_path, "backbone") in sink.artifacts
    epoch_rows = [v for _, v, _ in sink.rows if "epoch/loss" in v]
    assert len(epoch_rows) == 1 and 0.0 <= epoch_rows[0]["monitor/knn_top1"] <= 1.0
    backbone, meta = load_backbone(r.backbone_path)
    assert meta["in_channels"] == 3 and meta["image_size"] == 16 and meta["method"] == "rotation"
    assert meta["backbone"]["name"] == "convnet" and meta["feature_dim"] == backbone.feature_dim
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["epochs"] == 1
    assert PretrainSpec.model_validate(meta["spec"]).method.name == "rotation"
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    assert extract_features(backbone, x, meta["mean"], meta["std"], 4, "cpu").shape == (5, meta["feature_dim"])


def test_dataset_smaller_than_a_batch_is_a_clear_error(tmp_path):
    with pytest.raises(PermanentError, match=r"data\.subset.*|batch_size"):
        pretrain(tiny_spec("simclr", data={"dataset": "synthetic", "image_size": 16, "subset": 8}), tmp_path)


def test_jsonl_sink_writes_lines_and_null_sink_is_silent(tmp_path, capsys):
    from ssl_core.reporting import JsonlSink, NullSink, Sink

    sink = JsonlSink(tmp_path, echo=True)
    assert isinstance(sink, Sink) and isinstance(NullSink(), Sink)
    sink.metrics(3, {"train/loss": 1.5, "train/bad": float("nan")}, epoch=0)
    sink.progress(epoch=0, step=3, total_steps=10, images_per_sec=100.0, eta_s=7.0)
    sink.artifact("last.pt", tmp_path / "last.pt", "checkpoint")
    sink.flush()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["type"] == "metrics" and rows[0]["step"] == 3 and rows[0]["values"] == {"train/loss": 1.5,
                                                                                           "train/bad": None}
    assert rows[1]["type"] == "artifact" and rows[1]["kind"] == "checkpoint"
    out = capsys.readouterr().out
    assert "train/loss=1.5" in out and "eta 7s" in out
    assert NullSink().should_stop() is False


EXEMPLAR = {"name": "exemplar", "num_classes": 8, "samples_per_class": 6, "hidden_dim": 16}


def test_exemplar_epoch_is_n_times_k_samples(tmp_path, monkeypatch):
    """Exemplar-CNN: an epoch visits each of the N seeds K times (N*K samples), without N*K images stored."""
    import ssl_core.registry as registry

    real, seen, prepared = registry.build_method, [], {}

    def build(spec):
        method = real(spec)
        inner_prepare, inner_step = method.prepare_data, method.training_step

        def prepare(images, generator=None):
            x, y = inner_prepare(images, generator)
            prepared["shape"] = tuple(x.shape)
            return x, y

        def step(images, targets, generator=None):
            seen.append(targets.clone())
            return inner_step(images, targets, generator)

        method.prepare_data, method.training_step = prepare, step
        return method

    monkeypatch.setattr(registry, "build_method", build)
    sink = ListSink()
    r = pretrain(tiny_spec("simclr", method=EXEMPLAR), tmp_path, sink=sink)
    assert prepared["shape"][0] == 8  # only the N seeds are materialised
    assert r.completed and r.step == 6  # 8 seeds x 6 samples = 48 per epoch = 3 batches of 16, 2 epochs
    assert sink.progress_calls[-1]["total_steps"] == 6
    for epoch in range(2):
        labels = torch.cat(seen[3 * epoch:3 * epoch + 3])
        assert torch.bincount(labels, minlength=8).tolist() == [6] * 8  # every seed exactly K times


def test_exemplar_stop_and_resume_equals_straight_run(tmp_path):
    assert_stop_resume_equals_straight(tiny_spec("simclr", method=EXEMPLAR), tmp_path)


# ---------------------------------------------------------------------------------------------
# Resume continues the same run only
def test_resume_refuses_a_different_run_naming_the_fields(tmp_path):
    from ssl_core.checkpoint import ResumeMismatchError

    r = pretrain(tiny_spec("simclr", epochs=1), tmp_path)
    exported = r.backbone_path.read_bytes()
    other = tiny_spec("simclr", epochs=1, seed=3, method={"name": "simclr", "temperature": 0.2})
    with pytest.raises(ResumeMismatchError, match=r"method\.temperature, seed") as err:
        pretrain(other, tmp_path)
    assert isinstance(err.value, PermanentError) and "epochs" not in str(err.value).split("Differing:")[1]
    with pytest.raises(ResumeMismatchError, match=r"optim\.lr"):  # an explicit optimizer that differs
        pretrain(tiny_spec("simclr", epochs=1, optim={"name": "lars", "lr": 0.5}), tmp_path)
    with pytest.raises(ResumeMismatchError, match=r"data\.subset"):
        pretrain(tiny_spec("simclr", epochs=1, data={"dataset": "synthetic", "image_size": 16, "subset": 64}),
                 tmp_path)
    assert r.backbone_path.read_bytes() == exported  # nothing re-exported under a foreign spec
    assert load_checkpoint(r.checkpoint_path)["step"] == 3
    pretrain(tiny_spec("simclr", epochs=1, seed=3), tmp_path / "fresh", resume=True)  # no checkpoint: a new run


def test_resume_refuses_fewer_epochs(tmp_path):
    from ssl_core.checkpoint import ResumeMismatchError

    pretrain(tiny_spec("rotation", epochs=2), tmp_path, should_stop=stop_after(2))
    with pytest.raises(ResumeMismatchError, match=r"epochs \(2 -> 1"):
        pretrain(tiny_spec("rotation", epochs=1), tmp_path)


def test_resume_allows_execution_settings_and_growing_epochs_with_the_recipe_optimizer(tmp_path):
    """SimCLR's recipe warmup is epochs/10: 1 -> 2 epochs changes optim.warmup_epochs, yet the optimizer
    is still the method's recipe in both specs, so the run continues (and device/logging/eval may change)."""
    first = pretrain(tiny_spec("simclr", epochs=1), tmp_path)
    assert first.completed and first.step == 3
    grown = tiny_spec("simclr", epochs=2, device="auto", precision="fp32", log_every=2, checkpoint_every=2,
                      eval={"monitor": {"every_epochs": 1, "train_subset": 20, "test_subset": 10, "k": 5}})
    assert grown.optim.warmup_epochs != tiny_spec("simclr", epochs=1).optim.warmup_epochs
    sink = ListSink()
    second = pretrain(grown, tmp_path, sink=sink)
    assert second.completed and (second.step, second.epoch) == (6, 2)
    assert min(step for step, _, _ in sink.rows) >= 4  # steps 1-3 are not re-run
    assert any("monitor/knn_top1" in v for _, v, _ in sink.rows)
    from ssl_core.backbone_file import load_backbone

    assert load_backbone(second.backbone_path)[1]["epochs"] == 2


# ---------------------------------------------------------------------------------------------
# The streaming path: an image folder over PRETEXTLAB_MAX_IN_MEMORY_BYTES, decoded by DataLoader workers
@pytest.fixture
def folder_env(tmp_path, monkeypatch):
    """48 16x16 PNGs (2 classes) under a private data root; in-memory limit untouched until a test sets it."""
    import numpy as np
    from PIL import Image

    from ssl_core import data as D

    root = tmp_path / "data"
    g = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(g.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "imgs" / c / f"{i}.png")
    monkeypatch.setenv("PRETEXTLAB_DATA_ROOT", str(root))
    monkeypatch.delenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", raising=False)
    monkeypatch.setenv("PRETEXTLAB_LOADER_WORKERS", "0")
    D.clear_cache()
    yield tmp_path
    D.clear_cache()


FOLDER = {"dataset": "image_folder", "path": "imgs", "split": "all", "image_size": 16}


def test_streamed_folder_trains_like_the_in_memory_one(folder_env, monkeypatch):
    """Same decode, same epoch-seeded order: streaming (limit 0 B) gives the in-memory run's weights."""
    from ssl_core.data import DatasetError, clear_cache, load_dataset

    spec = tiny_spec("simclr", data=FOLDER)
    in_memory = pretrain(spec, folder_env / "mem", resume=False)
    monkeypatch.setenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", "0")
    clear_cache()
    with pytest.raises(DatasetError):  # the folder can no longer be held in memory: the run below streams
        load_dataset("image_folder", "all", path="imgs", image_size=16)
    import ssl_core.train as train

    sources = []
    real = train.data_source
    monkeypatch.setattr(train, "data_source", lambda *a: sources.append(real(*a)) or sources[-1])
    streamed = pretrain(spec, folder_env / "stream", resume=False)
    assert [type(x).__name__ for x in sources] == ["StreamingBatches"]
    assert streamed.completed and streamed.step == 6
    assert torch.isfinite(torch.tensor(streamed.final_loss)) and streamed.backbone_path.exists()
    assert_same_state(model_state(folder_env / "mem"), model_state(folder_env / "stream"))
    assert in_memory.final_loss == streamed.final_loss


def test_streamed_folder_stop_mid_epoch_and_resume_equals_straight_run(folder_env, monkeypatch):
    """With a persistent DataLoader worker: the resumed epoch starts at batch k of the same order."""
    monkeypatch.setenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", "0")
    monkeypatch.setenv("PRETEXTLAB_LOADER_WORKERS", "1")
    assert_stop_resume_equals_straight(tiny_spec("rotation", data=FOLDER), folder_env)


def test_streaming_refuses_a_method_that_needs_the_whole_set_in_memory(folder_env, monkeypatch):
    monkeypatch.setenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", "0")
    with pytest.raises(PermanentError, match=r"method exemplar .*cannot stream"):
        pretrain(tiny_spec("simclr", method=EXEMPLAR, data=FOLDER), folder_env / "ex")


def test_check_resume_spec_recipe_fields_follow_epochs_even_with_an_override():
    from ssl_core.checkpoint import ResumeMismatchError, check_resume_spec

    lars = lambda **kw: {"name": "lars", "lr": 0.7, "weight_decay": 1e-6, "warmup_epochs": kw.get("w", 0.1)}  # noqa: E731
    old = tiny_spec("simclr", epochs=1, optim=lars(w=0.1))  # lr overridden, warmup = the recipe's epochs/10
    check_resume_spec(old.model_dump_json(), tiny_spec("simclr", epochs=3, optim=lars(w=0.3)))
    with pytest.raises(ResumeMismatchError, match=r"Differing: optim\.warmup_epochs\."):
        check_resume_spec(old.model_dump_json(), tiny_spec("simclr", epochs=3, optim=lars(w=0.2)))
    with pytest.raises(ResumeMismatchError, match=r"Differing: augment\.0\.scale\.0, batch_size\."):
        check_resume_spec(old.model_dump_json(), tiny_spec(
            "simclr", epochs=1, batch_size=8, optim=lars(w=0.1),
            augment=[{"op": "random_resized_crop", "scale": [0.2, 1.0]}] + json.loads(old.model_dump_json())["augment"][1:]))

    # a checkpoint written before a field was added to the specs: the field's default is no difference
    stored = json.loads(old.model_dump_json())
    del stored["channels_last"], stored["method"]["temperature"]
    check_resume_spec(json.dumps(stored), tiny_spec("simclr", epochs=2, optim=lars(w=0.2)))
