"""The pretraining loop, as one function you can read top to bottom (nanoGPT style).

    pretrain(spec, out_dir, sink, should_stop, resume) -> TrainResult

Files written under ``out_dir``: ``checkpoints/last.pt`` (every ``checkpoint_every`` epochs, on a
stop request and at the end; written atomically), ``backbone.safetensors`` (the backbone alone,
with its metadata; at the end). Steps are global optimizer steps and continue on resume.

Determinism: the data order of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, so it needs no saved state (a method with ``epoch_repeats = K``, Exemplar-CNN, has
epochs of K x its prepared set: the permutation is over N*K, taken mod N); the augmentation
generator, the global torch RNG (CPU and CUDA), Python's and NumPy's RNGs are saved in the checkpoint. A run stopped at any step
boundary and resumed produces the same weights as an uninterrupted one (on CPU in fp32).

Resuming continues *the same run*: the checkpoint's spec is compared with the current one and any
difference raises :class:`ResumeMismatchError` naming the fields (dotted paths), except
:data:`RESUME_MAY_CHANGE` -- fields that change how the run is executed or reported, not what it
computes: ``device``, ``precision``, ``compile``, ``channels_last`` (a resumed run on another GPU type is
legitimate; the numbers then differ in the last bits, as on any other device), ``log_every``,
``checkpoint_every`` and ``eval`` (the kNN monitor runs in eval mode without gradients; ``eval.after`` is
read when the run succeeds). ``epochs`` may grow (never shrink): the learning-rate schedule is then
re-planned over the new total from the current step (so the result differs from a run planned that
long from the start), and an ``optim`` left to the method's recipe follows the new epochs (e.g. SimCLR's
warmup of epochs/10, MoCo v1's milestones at 60%/80%).

Data sources (both yield uint8 (B, C, H, W) batches on the device in the same epoch order):
:class:`TensorBatches` -- the whole (prepared) split as one tensor on the device, indexed per batch;
STL-10's memory-mapped unlabeled split takes this path too (on CPU it stays a memmap view sliced per
batch, the page cache holding it; on a GPU its 2.7 GB are copied to the device once).
:class:`StreamingBatches` -- an image folder whose decoded tensor exceeds PRETEXTLAB_MAX_IN_MEMORY_BYTES
(``ssl_core.data.streaming_samples``; set it to 0 to force streaming): DataLoader workers
(PRETEXTLAB_LOADER_WORKERS, default one per core but one; persistent) decode each batch into pinned
memory, copied with ``non_blocking=True``; an epoch-seeded batch sampler gives the same order as the
in-memory path, and a mid-epoch resume starts at batch k without decoding the first k. A method whose
``prepare_data`` builds its own training set from the whole split (Exemplar-CNN's seed selection) needs
the in-memory path and refuses streaming.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ssl_core.errors import NonFiniteLossError, PermanentError
from ssl_core.evaluate import backbone_metadata, dataset_stats, extract_features, knn_accuracy
from ssl_core.optim import LRSchedule, build_optimizer
from ssl_core.reporting import NullSink, Sink
from ssl_core.runtime import atomic_write, autocast, resolve_device, resolve_precision, seed_everything
from ssl_core.specs import PretrainSpec, method_label

CHECKPOINT_VERSION = 1
# spec fields a resume may change: they alter how the run executes or reports, not its math (see above)
RESUME_MAY_CHANGE = ("device", "precision", "compile", "channels_last", "log_every", "checkpoint_every", "eval")


class ResumeMismatchError(PermanentError):
    """The out dir holds a checkpoint of a different run (its spec differs beyond RESUME_MAY_CHANGE)."""


@dataclass
class TrainResult:
    completed: bool                  # False: stopped by should_stop, after writing a checkpoint
    epoch: int                       # epochs fully completed
    step: int                        # global optimizer steps done
    final_loss: float | None
    backbone_path: Path | None       # out_dir/backbone.safetensors (only when completed)
    checkpoint_path: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: stateless, so a resumed run reproduces it exactly."""
    g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


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
    from pydantic import ValidationError

    from ssl_core.specs import default_optim

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


# ---------------------------------------------------------------------------------------------
# Data sources: uint8 (B, C, H, W) batches on the device, an epoch in epoch_permutation order
class EpochBatchSampler(torch.utils.data.Sampler):
    """Index lists of one epoch's batches (drop_last), from batch ``start`` on: set_epoch() before each
    iter(). Lives in the main process, so persistent DataLoader workers see the new epoch."""

    def __init__(self, seed: int, n: int, batch: int):
        self.seed, self.n, self.batch, self.epoch, self.start = seed, n, batch, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        perm = epoch_permutation(self.seed, self.epoch, self.n)
        for i in range(self.start, self.n // self.batch):
            yield perm[i * self.batch:(i + 1) * self.batch].tolist()

    def __len__(self) -> int:
        return self.n // self.batch - self.start


class TensorBatches:
    """The prepared set held on the device; batch i of an epoch indexes it with the epoch's permutation.

    An epoch may visit the prepared set ``repeats`` times (Exemplar-CNN: K samples per surrogate class);
    the repeats are indices into the same tensors (taken mod N), never copies of the images."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | None, repeats: int, batch: int, seed: int):
        self.images, self.targets, self.batch, self.seed = images, targets, batch, seed
        self.n_prepared = int(images.shape[0])
        self.n = self.n_prepared * repeats  # samples per epoch

    def __len__(self) -> int:  # steps per epoch (drop_last: contrastive losses want full batches)
        return self.n // self.batch

    def epoch(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        perm = epoch_permutation(self.seed, epoch, self.n).remainder_(self.n_prepared).to(self.images.device)
        for i in range(start, len(self)):
            idx = perm[i * self.batch:(i + 1) * self.batch]
            yield self.images[idx], (self.targets[idx] if self.targets is not None else None)

    def close(self) -> None:
        pass


class StreamingBatches:
    """Files decoded by DataLoader workers into pinned uint8 batches, then copied to the device
    (``non_blocking``: the copy overlaps the previous step). Same epoch order as TensorBatches."""

    def __init__(self, samples: list[tuple[str, int]], size: int, channels: int, batch: int, seed: int,
                 device: torch.device, workers: int):
        from ssl_core.data import DecodedImages

        self.n, self.batch, self.device = len(samples), batch, device
        self.sampler = EpochBatchSampler(seed, self.n, batch)
        self.loader = torch.utils.data.DataLoader(
            DecodedImages(samples, size, channels), batch_sampler=self.sampler, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # the loader's base seed is drawn from this generator, not the global RNG (saved in checkpoints)
            generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.n // self.batch

    def epoch(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, None]]:
        self.sampler.set_epoch(epoch, start)
        for x, _ in self.loader:  # labels of a folder are not pretext targets
            yield x.to(self.device, non_blocking=True), None

    def close(self) -> None:
        it = getattr(self.loader, "_iterator", None)  # the persistent workers' iterator
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


def data_source(spec: PretrainSpec, method: torch.nn.Module, device: torch.device) -> TensorBatches | StreamingBatches:
    """In memory when the split fits (after the method's prepare_data), else streamed from disk."""
    from ssl_core.data import load_dataset, loader_workers, streaming_samples
    from ssl_core.methods.base import SSLMethod

    d = spec.data
    size, channels = d.resolved_image_size, d.resolved_channels
    samples = streaming_samples(d.dataset, d.resolved_split, path=d.path, image_size=size, channels=channels,
                                subset=d.subset, seed=spec.seed)
    if samples is None:
        ds = load_dataset(d.dataset, d.resolved_split, path=d.path, image_size=size, channels=channels,
                          subset=d.subset, seed=spec.seed)
        prep_gen = torch.Generator(device=device).manual_seed(spec.seed)  # fresh on resume: same result
        images, targets = method.prepare_data(ds.images.to(device), prep_gen)
        return TensorBatches(images, targets, int(getattr(method, "epoch_repeats", 1)), spec.batch_size, spec.seed)
    if type(method).prepare_data is not SSLMethod.prepare_data:
        raise PermanentError(
            f"data: {d.path} is too big to hold in memory at {size} px (PRETEXTLAB_MAX_IN_MEMORY_BYTES), and "
            f"method {spec.method.name} builds its training set from the whole split in memory (prepare_data), "
            "so it cannot stream it; lower data.image_size or raise PRETEXTLAB_MAX_IN_MEMORY_BYTES")
    return StreamingBatches(samples, size, channels, spec.batch_size, spec.seed, device, loader_workers())


# ---------------------------------------------------------------------------------------------
# Checkpoints
def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _set_numpy_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Checkpoints are read with ``weights_only=True``: tensors and plain containers, no code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def export_backbone(path: Path, backbone: torch.nn.Module, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    # channels_last weights are not contiguous in the default layout; safetensors stores that layout
    state = {k: v.detach().to("cpu").contiguous() for k, v in backbone.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def pretrain(spec: PretrainSpec, out_dir: Path, sink: Sink | None = None,
             should_stop: Callable[[], bool] | None = None, resume: bool = True) -> TrainResult:
    from ssl_core.data import load_dataset
    from ssl_core.registry import build_method

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    sink = sink or NullSink()
    stop = should_stop or sink.should_stop

    # -- resume: only the same run (checked before any data is loaded) ---------------------------
    ck = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ck is not None:
        check_resume_spec(ck["spec"], spec)

    # -- setup: seed, device, precision ----------------------------------------------------------
    seed_everything(spec.seed)
    device = resolve_device(spec.device)
    amp_dtype, use_scaler = resolve_precision(spec.precision, device)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format

    # -- model and data: uint8 batches on the device, from memory or streamed from disk ----------
    d = spec.data
    size, channels = d.resolved_image_size, d.resolved_channels
    mean, std = dataset_stats(d.dataset, channels)
    method = build_method(spec).to(device).to(memory_format=memory_format)
    source = data_source(spec, method, device)
    n, batch = source.n, spec.batch_size
    if n < batch:
        raise PermanentError(
            f"data: {n} training samples per epoch are fewer than one batch (batch_size {batch}); "
            f"raise data.subset or lower batch_size"
            + (" (Exemplar-CNN: method.num_classes seeds x method.samples_per_class)"
               if spec.method.name == "exemplar" else ""))
    steps_per_epoch = len(source)
    total_steps = steps_per_epoch * spec.epochs

    # -- optimizer, schedule, augmentation generator ---------------------------------------------
    optimizer = build_optimizer(method, spec.optim)
    schedule = LRSchedule(spec.optim, steps_per_epoch, spec.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    aug_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    if spec.compile:
        method.backbone.compile()  # in place: state_dict keys stay the same
        method.pipeline.compile()  # the augmentation's pointwise ops (docs/performance.md)

    monitor = spec.eval.monitor
    knn_data = None
    if monitor.every_epochs > 0:
        ed = spec.eval.data
        name = ed.dataset if ed is not None else d.dataset
        info_splits = (ed.resolved_train_split, ed.resolved_test_split) if ed is not None else (
            d.info.train_split, d.info.test_split)
        kw = dict(path=ed.path if ed is not None else d.path, image_size=size, channels=channels, seed=spec.seed)
        bank = load_dataset(name, info_splits[0], subset=monitor.train_subset, **kw)
        query = load_dataset(name, info_splits[1], subset=monitor.test_subset, **kw)
        knn_data = (bank.images, bank.labels.to(device), query.images, query.labels.to(device),
                    int(bank.num_classes or int(bank.labels.max()) + 1))

    # -- restore the checkpoint's state ----------------------------------------------------------
    epoch, step_in_epoch, step = 0, 0, 0
    epoch_loss_sum, epoch_steps = 0.0, 0
    if ck is not None:
        method.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        epoch, step_in_epoch, step = ck["epoch"], ck["step_in_epoch"], ck["step"]
        epoch_loss_sum, epoch_steps = ck["epoch_loss_sum"], ck["epoch_steps"]
        rng = ck["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        aug_gen.set_state(rng["aug"])
        random.setstate(rng["python"])
        _set_numpy_state(rng["numpy"])
        del ck

    def checkpoint(at_epoch: int, at_step_in_epoch: int) -> Path:
        check_finite()  # never persist a diverged model
        state = {
            "version": CHECKPOINT_VERSION, "spec": spec.model_dump_json(),
            "model": method.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": at_epoch, "step_in_epoch": at_step_in_epoch, "step": step, "sched_step": step,
            "epoch_loss_sum": epoch_loss_sum + float(epoch_loss_acc.item()), "epoch_steps": epoch_steps,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                "aug": aug_gen.get_state(), "python": random.getstate(), "numpy": _numpy_state(),
            },
        }
        path = save_checkpoint(ckpt_path, state)
        sink.artifact("last.pt", path, "checkpoint")
        return path

    # device-side accumulators: read (one host sync) every log_every steps only
    zero = lambda: torch.zeros((), device=device)  # noqa: E731
    loss_acc, epoch_loss_acc = zero(), zero()
    metric_acc: dict[str, torch.Tensor] = {}
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    acc_steps, last_values, last_loss = 0, {}, None
    t_read, images_since_read = time.time(), 0

    def check_finite() -> None:
        bad = int(first_bad_step.item())
        if bad >= 0:
            raise NonFiniteLossError(f"non-finite loss at step {bad}")

    def read_metrics(lr: float) -> dict[str, float]:
        nonlocal loss_acc, metric_acc, acc_steps, t_read, images_since_read, last_loss
        check_finite()
        names = ["train/loss"] + [f"train/{k}" for k in metric_acc]
        vals = torch.stack([loss_acc] + list(metric_acc.values())).div(acc_steps).tolist()
        now = time.time()
        ips = images_since_read / max(now - t_read, 1e-9)
        values = dict(zip(names, vals)) | {"train/lr": lr, "train/images_per_sec": ips}
        sink.metrics(step, values, epoch=epoch)
        eta = (total_steps - step) * batch / ips if ips > 0 else None
        sink.progress(epoch=epoch, step=step, total_steps=total_steps, images_per_sec=ips, eta_s=eta)
        last_loss = values["train/loss"]
        loss_acc, metric_acc, acc_steps = zero(), {}, 0
        t_read, images_since_read = now, 0
        return values

    # -- the loop --------------------------------------------------------------------------------
    method.train()
    lr = schedule.lr(step)
    try:
        while epoch < spec.epochs:
            batches = source.epoch(epoch, step_in_epoch)  # resumes at batch step_in_epoch of the epoch
            for i in range(step_in_epoch, steps_per_epoch):
                if stop():
                    if acc_steps:
                        last_values = read_metrics(lr)
                    path = checkpoint(epoch, i)
                    sink.flush()
                    return TrainResult(False, epoch, step, last_loss, None, path, last_values)
                x, y = next(batches)
                lr = schedule.apply(optimizer, step)
                with autocast(device, amp_dtype):
                    loss, step_metrics = method.training_step(x, y, aug_gen)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

                loss = loss.detach().float()
                first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
                loss_acc += loss
                epoch_loss_acc += loss
                for k, v in step_metrics.items():
                    metric_acc[k] = metric_acc.get(k, zero()) + v.detach().float()
                step += 1
                epoch_steps += 1
                acc_steps += 1
                images_since_read += batch
                if step % spec.log_every == 0:
                    last_values = read_metrics(lr)

            # end of epoch: epoch metrics, monitor, checkpoint
            if acc_steps:
                last_values = read_metrics(lr)
            epoch_loss = (epoch_loss_sum + float(epoch_loss_acc.item())) / max(1, epoch_steps)
            epoch += 1
            step_in_epoch, epoch_loss_sum, epoch_steps = 0, 0.0, 0
            epoch_loss_acc = zero()
            epoch_values = {"epoch/loss": epoch_loss}
            if knn_data is not None and (epoch % monitor.every_epochs == 0 or epoch == spec.epochs):
                bank_x, bank_y, query_x, query_y, classes = knn_data
                f_bank = extract_features(method.backbone, bank_x, mean, std, 512, device, amp_dtype)
                f_query = extract_features(method.backbone, query_x, mean, std, 512, device, amp_dtype)
                epoch_values["monitor/knn_top1"] = knn_accuracy(
                    f_bank, bank_y, f_query, query_y, monitor.k, monitor.temperature, classes)
                method.train()
            sink.metrics(step, epoch_values, epoch=epoch)
            last_values = {**last_values, **epoch_values}
            if epoch % spec.checkpoint_every == 0 or epoch == spec.epochs:
                checkpoint(epoch, 0)
            sink.flush()
    finally:
        source.close()  # the streaming path's persistent DataLoader workers

    # -- export the backbone alone ----------------------------------------------------------------
    check_finite()
    meta = backbone_metadata(spec.model_dump_json(), spec.backbone, method.backbone.feature_dim, channels, size,
                             mean, std, method_label(spec), spec.epochs, d.dataset)
    backbone_path = export_backbone(out_dir / "backbone.safetensors", method.backbone, meta)
    sink.artifact("backbone.safetensors", backbone_path, "backbone")
    sink.flush()
    if last_loss is None and last_values.get("epoch/loss") is not None:
        last_loss = last_values["epoch/loss"]
    return TrainResult(True, epoch, step, last_loss, backbone_path, ckpt_path if ckpt_path.exists() else None,
                       last_values)
