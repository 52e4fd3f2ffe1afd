"""The resumable checkpoint of a pretraining run (``checkpoints/last.safetensors``) and the rule for resuming it.

A checkpoint holds the method's and optimizer's state (MoCo's queue is a buffer of the method), the
position in the run (epoch, batch in the epoch, global step), the epoch's loss so far, the spec, the
run key, and every random state the run draws from: the global torch RNG (CPU and CUDA), the
augmentation generator, Python's and NumPy's.

The file never holds code: it is one safetensors file, the tensors by name and the rest (plain
values, and where each tensor sits in the nested state) as JSON in its metadata
(:mod:`ssl_core.tensor_tree`). Reading it parses a JSON header and copies bytes; nothing is
unpickled, whatever the file holds. One file, written to a temporary name then ``os.replace``d, so
a reader sees the old or the new checkpoint, never half of one or a mismatched pair. A
``checkpoints/last.pt`` of an older version is never read (such a run starts again).

Trust: :func:`resume_checkpoint` opens a checkpoint only if it records the run key the caller
passes (the job's identity: a random string kept beside the job, ``None`` for a local CLI run). A
checkpoint of another run, or one that cannot be read, is moved aside (``last.untrusted-<time>.safetensors``)
with a warning and the run starts fresh. Resuming continues *the same run*: :func:`check_resume_spec`
compares the checkpoint's spec with the current one and refuses any difference but
:data:`RESUME_MAY_CHANGE` and a grown ``epochs``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ssl_core.errors import PermanentError
from ssl_core.runtime import atomic_write
from ssl_core.specs import PretrainSpec, default_optim
from ssl_core.tensor_tree import TreeFormatError, flatten, unflatten

log = logging.getLogger("pretextlab.checkpoint")

CHECKPOINT_VERSION = 2  # 2: safetensors + JSON metadata (1 was a torch.save pickle, never read any more)
CHECKPOINT_FORMAT = "pretextlab-checkpoint"
LAST_CHECKPOINT = Path("checkpoints") / "last.safetensors"  # under a run's out dir
LEGACY_CHECKPOINT = Path("checkpoints") / "last.pt"  # version 1: ignored, never unpickled
RESUME_STATE_KEYS = frozenset({"model", "optimizer", "scaler", "epoch", "step_in_epoch", "step", "epoch_loss_sum",
                               "epoch_steps", "rng"})  # what Trainer.restore reads
_STATE_KEY = "pretextlab_state"  # the metadata entry holding the JSON skeleton
# Spec fields a resume may change: how the run executes or reports, not what it computes. A resumed
# run on another GPU type is legitimate (the numbers then differ in the last bits, as on any other
# device); the kNN monitor runs in eval mode without gradients; eval.after is read when the run succeeds.
# resources: a run may resume on another number of GPUs with the same global batch (elastic resume).
RESUME_MAY_CHANGE = ("device", "precision", "compile", "channels_last", "log_every", "checkpoint_every", "eval",
                     "resources")


class ResumeMismatchError(PermanentError):
    """The out dir holds a checkpoint of a different run (its spec differs beyond RESUME_MAY_CHANGE)."""


class CheckpointFormatError(ValueError):
    """A file that is not a checkpoint this version wrote (truncated, tampered with, another format)."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain values, nested) as one safetensors file, atomically."""
    tensors, skeleton = flatten(state)
    meta = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION), _STATE_KEY: json.dumps(skeleton)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_checkpoint_header(path: Path) -> dict[str, Any]:
    """The checkpoint's plain values (run key, spec, position, ...) without reading its tensors; tensors
    appear as ``{"__tensor__": name}``. CheckpointFormatError when the file is not a checkpoint of this version."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointFormatError(f"{path.name}: not a readable safetensors file ({e})") from None
    return _skeleton(path, meta)


def _skeleton(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != str(CHECKPOINT_VERSION):
        raise CheckpointFormatError(
            f"{path.name}: format {meta.get('format')!r} version {meta.get('version')!r}, expected "
            f"{CHECKPOINT_FORMAT!r} version {CHECKPOINT_VERSION}")
    try:
        skeleton = json.loads(meta.get(_STATE_KEY, ""))
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(f"{path.name}: the state metadata is not JSON ({e})") from None
    if not isinstance(skeleton, dict):
        raise CheckpointFormatError(f"{path.name}: the state metadata is not an object")
    return skeleton


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The whole state :func:`save_checkpoint` wrote, tensors on the CPU (no unpickling, ever)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            skeleton = _skeleton(path, f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return unflatten(skeleton, tensors)
    except (SafetensorError, OSError, TreeFormatError) as e:
        raise CheckpointFormatError(f"{path.name}: cannot read the checkpoint ({e})") from None


def set_aside(path: Path, why: str) -> Path:
    """Move an untrusted checkpoint out of the way (kept for inspection, never read) and say so."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.stem}.untrusted-{stamp}{path.suffix}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.stem}.untrusted-{stamp}-{n}{path.suffix}")
        n += 1
    path.replace(dest)
    log.warning("%s: not resuming from it (%s); moved to %s, the run starts fresh", path, why, dest.name)
    return dest


def resume_checkpoint(out_dir: Path, spec: PretrainSpec, run_key: str | None) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None (start fresh). Only a checkpoint recording ``run_key`` is
    read; another run's, or an unreadable one, is set aside. A different spec raises ResumeMismatchError
    (checked on the header, before any tensor or data is loaded)."""
    if (out_dir / LEGACY_CHECKPOINT).exists():
        log.warning("%s: a checkpoint of an older format, never loaded; the run does not resume from it",
                    out_dir / LEGACY_CHECKPOINT)
    path = out_dir / LAST_CHECKPOINT
    if not path.exists():
        return None
    try:
        header = read_checkpoint_header(path)
    except CheckpointFormatError as e:
        set_aside(path, str(e))
        return None
    if header.get("run_key") != run_key:
        set_aside(path, "it was written by another run (its run key differs)")
        return None
    stored_spec = header.get("spec")
    if not isinstance(stored_spec, str):
        set_aside(path, "it records no spec")
        return None
    check_resume_spec(stored_spec, spec)
    try:
        state = load_checkpoint(path)
    except CheckpointFormatError as e:
        set_aside(path, str(e))
        return None
    missing = sorted(RESUME_STATE_KEYS - state.keys())
    if missing:
        set_aside(path, f"it lacks {', '.join(missing)}")
        return None
    return state


# ---------------------------------------------------------------------------------------------
# Random states
def rng_state(device: torch.device, aug_gen: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from, as tensors and plain values (:mod:`ssl_core.tensor_tree`)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "aug": aug_gen.get_state(),
        "python": (int(version), torch.tensor(internal, dtype=torch.int64), gauss_next),
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }


def restore_rng(state: dict[str, Any], aug_gen: torch.Generator) -> None:
    """Put back what :func:`rng_state` saved (the CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    aug_gen.set_state(state["aug"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss_next))
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
