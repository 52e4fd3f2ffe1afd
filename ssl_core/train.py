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
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ssl_core.errors import NonFiniteLossError, PermanentError
from ssl_core.evaluate import backbone_metadata, dataset_stats, extract_features, knn_accuracy
from ssl_core.optim import LRSchedule, build_optimizer
from ssl_core.reporting import NullSink, Sink
from ssl_core.runtime import atomic_write, autocast, resolve_device, resolve_precision, seed_everything
from ssl_core.specs import PretrainSpec, method_label

CHECKPOINT_VERSION = 1


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

    # -- setup: seed, device, precision ----------------------------------------------------------
    seed_everything(spec.seed)
    device = resolve_device(spec.device)
    amp_dtype, use_scaler = resolve_precision(spec.precision, device)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format

    # -- data: the whole split in memory as uint8, on the device ---------------------------------
    d = spec.data
    size, channels = d.resolved_image_size, d.resolved_channels
    ds = load_dataset(d.dataset, d.resolved_split, path=d.path, image_size=size, channels=channels,
                      subset=d.subset, seed=spec.seed)
    mean, std = dataset_stats(d.dataset, channels)

    # -- model, data preparation, optimizer ------------------------------------------------------
    method = build_method(spec).to(device).to(memory_format=memory_format)
    prep_gen = torch.Generator(device=device).manual_seed(spec.seed)  # fresh on resume: same result
    images, targets = method.prepare_data(ds.images.to(device), prep_gen)
    # an epoch may visit the prepared set several times (Exemplar-CNN: K samples per surrogate class);
    # the repeats are indices into the same tensors, never copies of the images
    n_prepared, repeats = int(images.shape[0]), int(getattr(method, "epoch_repeats", 1))
    n, batch = n_prepared * repeats, spec.batch_size
    if n < batch:
        raise PermanentError(
            f"data: {n} training samples per epoch are fewer than one batch (batch_size {batch}); "
            f"raise data.subset or lower batch_size"
            + (" (Exemplar-CNN: method.num_classes seeds x method.samples_per_class)"
               if spec.method.name == "exemplar" else ""))
    steps_per_epoch = n // batch  # drop_last: contrastive losses want full batches
    total_steps = steps_per_epoch * spec.epochs
    optimizer = build_optimizer(method, spec.optim)
    schedule = LRSchedule(spec.optim, steps_per_epoch, spec.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    aug_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    if spec.compile:
        method.backbone.compile()  # in place: state_dict keys stay the same

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

    # -- resume ----------------------------------------------------------------------------------
    epoch, step_in_epoch, step = 0, 0, 0
    epoch_loss_sum, epoch_steps = 0.0, 0
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
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
    while epoch < spec.epochs:
        # sample j of the epoch is prepared item j mod n_prepared (the identity when repeats == 1)
        perm = epoch_permutation(spec.seed, epoch, n).remainder_(n_prepared).to(device)
        for i in range(step_in_epoch, steps_per_epoch):
            if stop():
                if acc_steps:
                    last_values = read_metrics(lr)
                path = checkpoint(epoch, i)
                sink.flush()
                return TrainResult(False, epoch, step, last_loss, None, path, last_values)
            idx = perm[i * batch:(i + 1) * batch]
            x = images[idx]
            y = targets[idx] if targets is not None else None
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
