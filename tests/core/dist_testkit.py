"""Rank functions for the data-parallel tests: module level, so torch.multiprocessing.spawn pickles them.

Every rank joins a 2-process gloo group through a file store, runs its part and writes what the
test checks into ``out/rank{r}.pt`` (an assertion inside a rank fails the spawn with its traceback).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ssl_core.specs import PretrainSpec

WORLD = 2
TINY = {"backbone": {"name": "convnet", "width": 4}, "device": "cpu", "precision": "fp32", "channels_last": False,
        "log_every": 1}


def tiny(method: dict[str, Any], size: int = 16, subset: int = 32, batch: int = 8, **over: Any) -> PretrainSpec:
    """A tiny CPU spec: 16 px synthetic images (32 px for the patch methods), a 4-wide convnet."""
    raw = {**TINY, "method": method, "data": {"dataset": "synthetic", "image_size": size, "subset": subset},
           "epochs": 1, "batch_size": batch, **over}
    return PretrainSpec.model_validate(raw)


EVERY_METHOD = {
    "rotation": lambda: tiny({"name": "rotation"}),
    "exemplar": lambda: tiny({"name": "exemplar", "num_classes": 16, "samples_per_class": 2, "hidden_dim": 16}),
    "relative_position": lambda: tiny({"name": "relative_position", "hidden_dim": 16}, size=32),
    "jigsaw": lambda: tiny({"name": "jigsaw", "num_permutations": 8, "tile_dim": 16, "hidden_dim": 16}, size=32),
    "simclr": lambda: tiny({"name": "simclr"}),
    "moco": lambda: tiny({"name": "moco", "version": 2, "queue_size": 24}),
}


def spawn(fn: Callable, out: Path, *args: Any) -> list[dict]:
    """Run ``fn(rank, out, *args)`` on 2 gloo ranks; the dicts they saved, in rank order."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank, args=(fn, str(out), args), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _rank(rank: int, fn: Callable, out: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=WORLD)
    try:
        torch.save(fn(rank, Path(out), *args), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
def simclr_step(rank: int, out: Path, spec_json: str, images: torch.Tensor) -> dict:
    """One SimCLR step through the trainer's DDP wrapper on this rank's half of ``images``."""
    from ssl_core.distributed import DistContext
    from ssl_core.registry import build_method

    spec = PretrainSpec.model_validate_json(spec_json)
    torch.manual_seed(0)
    method = build_method(spec).eval()  # BatchNorm from running statistics: the same in both runs
    model = DistContext.current().wrap(method, torch.device("cpu"), sync_bn=False)
    b = images.shape[0] // WORLD
    loss, metrics = model(images[rank * b:(rank + 1) * b], None, torch.Generator().manual_seed(rank))
    loss.backward()
    return {"loss": loss.item(), "grads": {n: p.grad.clone() for n, p in method.named_parameters()}}


def moco_step(rank: int, out: Path, spec_json: str, images: torch.Tensor) -> dict:
    """One MoCo step at world size 2: the keys this rank computed, the queue after, and which ranks'
    samples the key encoder's BatchNorm batch held on this rank."""
    from ssl_core.distributed import DistContext
    from ssl_core.registry import build_method

    spec = PretrainSpec.model_validate_json(spec_json)
    torch.manual_seed(0)
    method = build_method(spec).train()
    model = DistContext.current().wrap(method, torch.device("cpu"), sync_bn=False)
    b = images.shape[0] // WORLD
    local = images[rank * b:(rank + 1) * b]
    keys, key_inputs = [], []
    encode_key = method.encode_key
    method.encode_key = lambda x, g=None: keys.append(encode_key(x, g)) or keys[-1]
    method.backbone_momentum.register_forward_pre_hook(lambda mod, inp: key_inputs.append(inp[0].detach()))
    x_all = method.normalize(images.float() / 255)  # augment is off: the key view of every image
    loss, _ = model(local, None, torch.Generator().manual_seed(rank))
    loss.backward()
    owner = [[int(torch.isclose(x_all, row).flatten(1).all(1).nonzero()) // b for row in key_inputs[0]]]
    return {"keys": keys[0], "queue": method.queue.clone(), "ptr": int(method.queue_ptr), "key_batch_owners": owner[0]}


def every_method(rank: int, out: Path, names: list[str]) -> dict:
    from ssl_core.train import pretrain

    results = {}
    for name in names:
        r = pretrain(EVERY_METHOD[name](), out / name, resume=False)
        results[name] = (r.completed, r.step, r.final_loss)
    return results


def stop_then_resume(rank: int, out: Path, spec_json: str, stop_after: int) -> dict:
    """Rank 1 alone asks to stop after ``stop_after`` steps; both must stop there with one checkpoint.
    Then: a copy for a world-size-1 resume, the resume at world size 2, and a straight run to compare."""
    from ssl_core.checkpoint import load_checkpoint
    from ssl_core.train import pretrain

    spec = PretrainSpec.model_validate_json(spec_json)
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return rank == 1 and calls["n"] > stop_after

    stopped = pretrain(spec, out / "run", should_stop=should_stop, resume=False)
    if rank == 0:
        shutil.copytree(out / "run", out / "for_world1")
    dist.barrier()
    ck = load_checkpoint(out / "run" / "checkpoints" / "last.safetensors")
    resumed = pretrain(spec, out / "run")
    straight = pretrain(spec, out / "straight", resume=False)
    same = all(torch.equal(a, b) for a, b in zip(load_checkpoint(out / "run" / "checkpoints" / "last.safetensors")["model"].values(),
                                                  load_checkpoint(out / "straight" / "checkpoints" / "last.safetensors")["model"].values()))
    return {"stopped": (stopped.completed, stopped.step), "ck": (ck["step"], ck["world_size"], len(ck["rng_ranks"])),
            "resumed": (resumed.completed, resumed.step), "straight": straight.step, "same_as_straight": same}
