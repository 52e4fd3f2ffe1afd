"""The resumable checkpoint of a pretraining run (``checkpoints/last.pt``) and the rule for resuming it.

A checkpoint holds the method's and optimizer's state, the position in the run (epoch, batch in
the epoch, global step), the epoch's loss so far, the spec, and every random state the run draws
from: the global torch RNG (CPU and CUDA), the augmentation generator, Python's and NumPy's. It is
written atomically and read with ``weights_only=True`` (tensors and plain containers, no code).

Resuming continues *the same run*: :func:`check_resume_spec` compares the checkpoint's spec with
the current one and refuses any difference but :data:`RESUME_MAY_CHANGE` and a grown ``epochs``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from ssl_core.errors import PermanentError
from ssl_core.runtime import atomic_write
from ssl_core.specs import PretrainSpec, default_optim

CHECKPOINT_VERSION = 1
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"  # under a run's out dir
# Spec fields a resume may change: how the run executes or reports, not what it computes. A resumed
# run on another GPU type is legitimate (the numbers then differ in the last bits, as on any other
# device); the kNN monitor runs in eval mode without gradients; eval.after is read when the run succeeds.
# resources: a run may resume on another number of GPUs with the same global batch (elastic resume).
RESUME_MAY_CHANGE = ("device", "precision", "compile", "channels_last", "log_every", "checkpoint_every", "eval",
                     "resources")


class ResumeMismatchError(PermanentError):
    """The out dir holds a checkpoint of a different run (its spec differs beyond RESUME_MAY_CHANGE)."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Checkpoints are read with ``weights_only=True``: tensors and plain containers, no code."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# Random states
def rng_state(device: torch.device, aug_gen: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from, in a form ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "aug": aug_gen.get_state(), "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }


def restore_rng(state: dict[str, Any], aug_gen: torch.Generator) -> None:
    """Put back what :func:`rng_state` saved (the CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    aug_gen.set_state(state["aug"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------------------------------------
# Resume: the same run only
def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (lists of equal length element-wise)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(a.keys() | b.keys()):
            path = f"{prefix}.{k}" if prefix else str(k)
            out += [path] if (k in a) != (k in b) else _diff_paths(a[k], b[k], path)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _diff_paths(x, y, f"{prefix}.{i}")]
    return [] if a == b else [prefix or "spec"]


def check_resume_spec(stored_json: str, spec: PretrainSpec) -> None:
    """Raise :class:`ResumeMismatchError` unless ``spec`` continues the checkpoint's run: equal but for
    :data:`RESUME_MAY_CHANGE` and a grown ``epochs`` (``optim`` fields at the method's recipe value in
    both specs may follow the epochs)."""
    try:  # re-validated by this code, so a field added to the specs since (with its default) is no difference
        old = json.loads(PretrainSpec.model_validate_json(stored_json).model_dump_json())
    except ValidationError:
        old = json.loads(stored_json)
    new = json.loads(spec.model_dump_json())
    problems: list[str] = []
    old_epochs = old.get("epochs")
    if isinstance(old_epochs, int) and spec.epochs < old_epochs:
        problems.append(f"epochs ({old_epochs} -> {spec.epochs}: a resumed run may add epochs, not remove them)")
    for key in (*RESUME_MAY_CHANGE, "epochs"):
        old.pop(key, None)
        new.pop(key, None)
    if isinstance(old_epochs, int) and isinstance(old.get("optim"), dict) and isinstance(new.get("optim"), dict):
        # an optim field at the method's recipe value in both specs follows the epochs (SimCLR's warmup of
        # epochs/10, MoCo v1's milestones), even when another field (say optim.lr) was overridden
        recipe = lambda epochs: json.loads(default_optim(spec.method, spec.batch_size, epochs).model_dump_json())  # noqa: E731
        old_recipe, new_recipe = recipe(old_epochs), recipe(spec.epochs)
        for k in list(old["optim"]):
            if old["optim"][k] == old_recipe.get(k) and new["optim"].get(k, ...) == new_recipe.get(k):
                del old["optim"][k], new["optim"][k]
    problems += _diff_paths(old, new)
    if problems:
        raise ResumeMismatchError(
            "the checkpoint in this out dir belongs to a different run; resuming may only grow epochs or change "
            f"{', '.join(RESUME_MAY_CHANGE)}. Differing: {', '.join(problems)}. "
            "Use a new out dir for a new run (or the checkpoint's spec to continue it)")
