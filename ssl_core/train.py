"""The pretraining loop.

    pretrain(spec, out_dir, sink, should_stop, resume, run_key) -> PretrainResult

:func:`pretrain` reads top to bottom: check a checkpoint belongs to this run, set up (a
:class:`Trainer`), restore, then epochs of steps until the end or a stop request, then export.
The Trainer holds the parts: one epoch, one step, the end of an epoch (epoch loss, kNN monitor,
checkpoint), the metric reads, the checkpoint and the export.

Files written under ``out_dir``: ``checkpoints/last.safetensors`` (every ``checkpoint_every`` epochs,
on a stop request and at the end; written atomically, never unpickled; only resumed by the run whose
``run_key`` it records; see :mod:`ssl_core.checkpoint`),
``backbone.safetensors`` (the backbone alone, with its metadata; at the end; see
:mod:`ssl_core.backbone_file`). Steps are global optimizer steps and continue on resume.

Determinism: the data order is stateless (:mod:`ssl_core.batches`); the augmentation generator,
the global torch RNG (CPU and CUDA), Python's and NumPy's RNGs are saved in the checkpoint. A run
stopped at any step boundary and resumed produces the same weights as an uninterrupted one (on
CPU in fp32).

Resuming continues *the same run*: a spec that differs from the checkpoint's beyond
:data:`~ssl_core.checkpoint.RESUME_MAY_CHANGE` (``device``, ``precision``, ``compile``,
``channels_last``, ``log_every``, ``checkpoint_every``, ``eval``) raises
:class:`~ssl_core.checkpoint.ResumeMismatchError` naming the fields. ``epochs`` may grow (never
shrink): the learning-rate schedule is then re-planned over the new total from the current step (so
the result differs from a run planned that long from the start), and an ``optim`` left to the
method's recipe follows the new epochs (e.g. SimCLR's warmup of epochs/10, MoCo v1's milestones at
60%/80%).

Metrics are summed on the device and read back (one host sync) every ``log_every`` steps and at
the end of an epoch, so a step never waits for the GPU.

Under torch.distributed (a rank started by torchrun or :mod:`ssl_core.launch`; see
:mod:`ssl_core.distributed`) the same loop runs on every rank: ``batch_size`` is the global batch,
each rank takes its share of every batch of the shared epoch order, the method runs in
DistributedDataParallel, the stop request is agreed between steps, metrics are averaged over ranks,
and rank 0 alone reports, writes the checkpoint (with every rank's random states and the world
size) and exports the backbone (its metadata records ``world_size``). A checkpoint written at world
size N resumes at any M that divides the global batch (the ranks beyond rank 0 then start fresh
augmentation streams when M differs from N). World size 1 is exactly the one-process run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ssl_core import registry
from ssl_core.backbone_file import backbone_metadata, export_backbone
from ssl_core.batches import data_source
from ssl_core.checkpoint import LAST_CHECKPOINT, restore_rng, resume_checkpoint, rng_state, save_checkpoint
from ssl_core.data import load_dataset
from ssl_core.distributed import DistContext
from ssl_core.errors import NonFiniteLossError, SpecError
from ssl_core.evaluate import knn_accuracy
from ssl_core.features import extract_features
from ssl_core.normalization import dataset_stats
from ssl_core.optim import LRSchedule, build_optimizer
from ssl_core.reporting import NullSink, Sink
from ssl_core.runtime import autocast, resolve_device, resolve_precision, seed_everything
from ssl_core.specs import PretrainSpec, method_label


@dataclass
class PretrainResult:
    completed: bool                  # False: stopped by should_stop, after writing a checkpoint
    epoch: int                       # epochs fully completed
    step: int                        # global optimizer steps done
    final_loss: float | None
    backbone_path: Path | None       # out_dir/backbone.safetensors (only when completed)
    checkpoint_path: Path | None
    metrics: dict[str, float] = field(default_factory=dict)  # the last values read (train/, epoch/, monitor/)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record a job stores: file names relative to the out dir, finite metrics only."""
        return {
            "completed": self.completed, "epoch": self.epoch, "step": self.step, "final_loss": self.final_loss,
            "backbone": self.backbone_path.name if self.backbone_path is not None else None,
            "metrics": {k: v for k, v in self.metrics.items() if _is_finite_number(v)},
        }


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


class RunningTotals:
    """Loss and metric sums kept on the device between reads.

    ``loss``, ``metrics``, ``steps`` and ``images`` restart at every :meth:`read`; the epoch's loss
    restarts at :meth:`end_epoch` (``epoch_loss_before`` is the part summed before a resume).
    ``first_bad_step`` is the first step whose loss was not finite, or -1.
    """

    def __init__(self, device: torch.device, epoch_loss_before: float = 0.0, epoch_steps: int = 0,
                 ctx: DistContext | None = None):
        self.device, self.ctx = device, ctx or DistContext()  # reads are averaged over the ranks
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.epoch_loss, self.epoch_loss_before, self.epoch_steps = self._zero(), epoch_loss_before, epoch_steps
        self._restart(time.time())

    def _zero(self) -> Tensor:
        return torch.zeros((), device=self.device)

    def _restart(self, now: float) -> None:
        self.loss, self.metrics, self.steps, self.images, self.read_at = self._zero(), {}, 0, 0, now

    def add(self, step: int, loss: Tensor, metrics: dict[str, Tensor], images: int) -> None:
        """One step's loss and metrics, added on the device (no host sync)."""
        loss = loss.detach().float()
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss), step, self.first_bad_step)
        self.loss += loss
        self.epoch_loss += loss
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, self._zero()) + v.detach().float()
        self.steps += 1
        self.epoch_steps += 1
        self.images += images

    def check_finite(self) -> None:
        bad = int(self.first_bad_step.item())
        if self.ctx.distributed:  # every rank raises together, naming the first bad step of any rank
            bad = self.ctx.min_int(bad if bad >= 0 else _NO_STEP)
            bad = -1 if bad == _NO_STEP else bad
        if bad >= 0:
            raise NonFiniteLossError(f"non-finite loss at step {bad}")

    def read(self) -> tuple[dict[str, float], float]:
        """The mean ``train/`` loss and metrics since the last read, and images per second; restarts them."""
        self.check_finite()
        names = ["train/loss"] + [f"train/{k}" for k in self.metrics]
        values = self.ctx.mean(torch.stack([self.loss, *self.metrics.values()]).div(self.steps).tolist())
        now = time.time()
        images_per_sec = self.images / max(now - self.read_at, 1e-9)
        self._restart(now)
        return dict(zip(names, values)), images_per_sec

    def epoch_loss_sum(self) -> float:
        return self.epoch_loss_before + self.ctx.mean([float(self.epoch_loss.item())])[0]

    def end_epoch(self) -> float:
        """The epoch's mean loss; the epoch sums restart."""
        mean = self.epoch_loss_sum() / max(1, self.epoch_steps)
        self.epoch_loss, self.epoch_loss_before, self.epoch_steps = self._zero(), 0.0, 0
        return mean


_NO_STEP = 2**62  # "no bad step" in the min over ranks


class KnnMonitor:
    """``eval.monitor``: the weighted-kNN top-1 of the backbone on held-out TRAINING images.

    Bank and queries are disjoint parts of the labelled training split (never the test split), so
    a run's recipe can be selected on the monitor without tuning on the test set it is reported on.
    """

    def __init__(self, spec: PretrainSpec, device: torch.device, amp_dtype: torch.dtype | None,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        m, d, ed = spec.eval.monitor, spec.data, spec.eval.data
        if ed is not None:  # another labelled dataset than the pretraining one
            name, path, split = ed.dataset, ed.path, ed.resolved_train_split
        else:
            name, path, split = d.dataset, d.path, d.info.train_split
        kw = dict(path=path, image_size=d.resolved_image_size, channels=d.resolved_channels, seed=spec.seed)
        labelled = load_dataset(name, split, subset=m.train_subset + m.test_subset, **kw)
        bank, query = holdout_split(labelled.labels, m.train_subset, m.test_subset, spec.seed)
        self.bank_x, self.bank_y = labelled.images[bank], labelled.labels[bank].to(device)
        self.query_x, self.query_y = labelled.images[query], labelled.labels[query].to(device)
        self.num_classes = int(labelled.num_classes or int(labelled.labels.max()) + 1)
        self.every, self.k, self.temperature = m.every_epochs, m.k, m.temperature
        self.device, self.amp_dtype, self.mean, self.std = device, amp_dtype, mean, std

    def due(self, epoch: int, last_epoch: int) -> bool:
        return epoch % self.every == 0 or epoch == last_epoch

    def top1(self, backbone: torch.nn.Module) -> float:
        f_bank = extract_features(backbone, self.bank_x, self.mean, self.std, 512, self.device, self.amp_dtype)
        f_query = extract_features(backbone, self.query_x, self.mean, self.std, 512, self.device, self.amp_dtype)
        return knn_accuracy(f_bank, self.bank_y, f_query, self.query_y, self.k, self.temperature, self.num_classes)


def holdout_split(labels: torch.Tensor, bank_size: int, query_size: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (bank, query) indices into ``labels``: a seeded shuffle, queries first. A split with
    fewer images than asked is shared in the asked proportion (at least one of each)."""
    n = int(labels.shape[0])
    if n < 2:
        raise ValueError(f"eval.monitor: the labelled training split has {n} image(s); the monitor needs 2")
    if n < bank_size + query_size:
        query_size = min(n - 1, max(1, round(n * query_size / (bank_size + query_size))))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    query = order[:query_size].sort().values
    bank = order[query_size:query_size + bank_size].sort().values
    return bank, query


class Trainer:
    """One pretraining run: its parts (built in ``__init__``) and where it stands (epoch, step)."""

    def __init__(self, spec: PretrainSpec, out_dir: Path, sink: Sink, run_key: str | None = None):
        self.spec, self.out_dir, self.sink, self.run_key = spec, out_dir, sink, run_key
        self.checkpoint_path = out_dir / LAST_CHECKPOINT
        self.dist = DistContext.current()
        self.dist.local_batch(spec.batch_size)  # refuses a global batch the ranks cannot share
        seed_everything(spec.seed)
        self.device = resolve_device(spec.device)
        if self.dist.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # the rank's own GPU
        self.amp_dtype, use_scaler = resolve_precision(spec.precision, self.device)
        memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format

        # model and data: uint8 batches on the device, from memory or streamed from disk
        self.mean, self.std = dataset_stats(spec.data.dataset, spec.data.resolved_channels)
        self.method = registry.build_method(spec).to(self.device).to(memory_format=memory_format)
        self.source = data_source(spec, self.method, self.device, self.dist.rank, self.dist.world)
        if self.source.n < spec.batch_size:
            raise SpecError(
                f"data: {self.source.n} training samples per epoch are fewer than one batch (batch_size "
                f"{spec.batch_size}); raise data.subset or lower batch_size"
                + (" (Exemplar-CNN: method.num_classes seeds x method.samples_per_class)"
                   if spec.method.name == "exemplar" else ""))
        # settings the method fits to the data (MoCo's queue), before DDP records the module's buffers;
        # recorded with every metrics read
        self.fitted = self.method.fit_to_data(self.source.n)
        if self.fitted:
            self.sink.metrics(0, self.fitted, epoch=0)
        sync_bn = getattr(spec.method, "sync_bn", None)
        self.model = self.dist.wrap(self.method, self.device, self.device.type == "cuda" if sync_bn is None else sync_bn)
        # one step: the method itself at world size 1; through DDP (averaged gradients) on several ranks
        self.step_fn = self.method.training_step if self.model is self.method else self.model
        if self.dist.rank:  # the same initial weights everywhere, then rank-own random streams (dropout)
            torch.manual_seed(self.rank_seed(0))
        self.steps_per_epoch = len(self.source)
        self.total_steps = self.steps_per_epoch * spec.epochs

        self.optimizer = build_optimizer(self.method, spec.optim)
        self.schedule = LRSchedule(spec.optim, self.steps_per_epoch, spec.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(
            spec.seed + 1 if not self.dist.rank else self.rank_seed(0))  # views differ across ranks
        if spec.compile:
            self.method.backbone.compile()  # in place: state_dict keys stay the same
            self.method.pipeline.compile()  # the augmentation's pointwise ops (docs/performance.md)
        self.monitor = (KnnMonitor(spec, self.device, self.amp_dtype, self.mean, self.std)
                        if spec.eval.monitor.every_epochs > 0 and self.dist.is_main else None)

        self.epoch = self.step_in_epoch = self.step = 0
        self.lr = self.schedule.lr(0)
        self.totals = RunningTotals(self.device, ctx=self.dist)
        self.last_values: dict[str, float] = dict(self.fitted)  # the latest metrics read, the epoch's merged in
        self.last_loss: float | None = None

    def restore(self, ck: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizer, position in the run, the epoch's loss, RNGs."""
        self.method.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step_in_epoch, self.step = ck["epoch"], ck["step_in_epoch"], ck["step"]
        self.restore_rank_rng(ck)
        self.lr = self.schedule.lr(self.step)
        self.totals = RunningTotals(self.device, ck["epoch_loss_sum"], ck["epoch_steps"], ctx=self.dist)

    def rank_seed(self, step: int) -> int:
        """The seed of a rank's random streams, distinct per rank (and per step, for an elastic resume)."""
        return (self.spec.seed * 1_000_003 + self.dist.rank * 7919 + step) % 2**62

    def restore_rank_rng(self, ck: dict[str, Any]) -> None:
        """Rank 0's random states, or this rank's when the checkpoint has them (same world size); a rank
        the checkpoint did not have starts fresh streams seeded by (seed, rank, step)."""
        others = ck.get("rng_ranks") or []
        if self.dist.rank == 0:
            restore_rng(ck["rng"], self.aug_gen)
        elif ck.get("world_size", 1) == self.dist.world and self.dist.rank <= len(others):
            restore_rng(others[self.dist.rank - 1], self.aug_gen)
        else:
            torch.manual_seed(self.rank_seed(self.step))
            self.aug_gen.manual_seed(self.rank_seed(self.step))

    # -- the loop's parts --------------------------------------------------------------------------
    def train_one_epoch(self, should_stop: Callable[[], bool]) -> bool:
        """The current epoch's remaining steps; False as soon as ``should_stop`` asks (before a step)."""
        batches = self.source.epoch(self.epoch, self.step_in_epoch)  # resumes at batch step_in_epoch
        for i in range(self.step_in_epoch, self.steps_per_epoch):
            self.step_in_epoch = i
            if self.dist.any(should_stop()):  # every rank stops at the same step
                return False
            x, y = next(batches)
            self.train_step(x, y)
        return True

    def train_step(self, x: Tensor, y: Tensor | None) -> None:
        self.lr = self.schedule.apply(self.optimizer, self.step)
        with autocast(self.device, self.amp_dtype):
            loss, step_metrics = self.step_fn(x, y, self.aug_gen)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.totals.add(self.step, loss, step_metrics, self.spec.batch_size)
        self.step += 1
        if self.step % self.spec.log_every == 0:
            self.report_train_metrics()

    def report_train_metrics(self) -> None:
        """Read the sums since the last read (one host sync); report them and the progress."""
        values, images_per_sec = self.totals.read()
        values |= {"train/lr": self.lr, "train/images_per_sec": images_per_sec}
        self.sink.metrics(self.step, values, epoch=self.epoch)
        eta = ((self.total_steps - self.step) * self.spec.batch_size / images_per_sec
               if images_per_sec > 0 else None)
        self.sink.progress(epoch=self.epoch, step=self.step, total_steps=self.total_steps,
                           images_per_sec=images_per_sec, eta_s=eta)
        self.last_loss = values["train/loss"]
        self.last_values = {**self.fitted, **values}

    def end_epoch(self) -> None:
        """Epoch metrics (loss, the kNN monitor when due), a checkpoint when due."""
        if self.totals.steps:
            self.report_train_metrics()
        epoch_values = {"epoch/loss": self.totals.end_epoch()}
        self.epoch += 1
        self.step_in_epoch = 0
        if self.monitor is not None and self.monitor.due(self.epoch, self.spec.epochs):
            epoch_values["monitor/knn_top1"] = self.monitor.top1(self.method.backbone)
            self.method.train()
        self.sink.metrics(self.step, epoch_values, epoch=self.epoch)
        self.last_values = {**self.last_values, **epoch_values}
        if self.epoch % self.spec.checkpoint_every == 0 or self.epoch == self.spec.epochs:
            self.save_checkpoint()
        self.sink.flush()

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/last.safetensors`` at the current position (never for a diverged model);
        every rank calls it, rank 0 writes it (with every rank's random states)."""
        self.totals.check_finite()
        rngs = self.dist.gather_objects(rng_state(self.device, self.aug_gen))
        state = {
            "run_key": self.run_key, "torch_version": str(torch.__version__), "spec": self.spec.model_dump_json(),
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step, "sched_step": self.step,
            "epoch_loss_sum": self.totals.epoch_loss_sum(), "epoch_steps": self.totals.epoch_steps,
            "rng": rngs[0], "world_size": self.dist.world,
        }
        if self.dist.distributed:
            state["rng_ranks"] = rngs[1:]
        if not self.dist.is_main:
            return self.checkpoint_path
        path = save_checkpoint(self.checkpoint_path, state)
        self.sink.artifact(path.name, path, "checkpoint")
        return path

    def stop(self) -> PretrainResult:
        """A stop request between steps: report what was summed, checkpoint here, return incomplete."""
        if self.totals.steps:
            self.report_train_metrics()
        path = self.save_checkpoint()
        self.sink.flush()
        return PretrainResult(False, self.epoch, self.step, self.last_loss, None, path, self.last_values)

    def export(self) -> PretrainResult:
        """The finished run: the backbone alone, with the metadata evaluation rebuilds it from."""
        self.totals.check_finite()
        spec, d = self.spec, self.spec.data
        meta = backbone_metadata(spec.model_dump_json(), spec.backbone, self.method.backbone.feature_dim,
                                 d.resolved_channels, d.resolved_image_size, self.mean, self.std,
                                 method_label(spec), spec.epochs, d.dataset)
        meta["world_size"] = str(self.dist.world)
        backbone_path = self.out_dir / "backbone.safetensors"
        if self.dist.is_main:
            export_backbone(backbone_path, self.method.backbone, meta)
            self.sink.artifact("backbone.safetensors", backbone_path, "backbone")
            self.sink.flush()
        self.dist.barrier()  # no rank returns before the backbone exists
        final_loss = self.last_loss if self.last_loss is not None else self.last_values.get("epoch/loss")
        checkpoint = self.checkpoint_path if self.checkpoint_path.exists() else None
        return PretrainResult(True, self.epoch, self.step, final_loss, backbone_path, checkpoint, self.last_values)


def pretrain(spec: PretrainSpec, out_dir: Path, sink: Sink | None = None,
             should_stop: Callable[[], bool] | None = None, resume: bool = True,
             run_key: str | None = None) -> PretrainResult:
    """Run (or continue, with ``resume``) the pretraining ``spec`` describes, writing into ``out_dir``.
    ``run_key``: the job's identity, recorded in the checkpoint; only a checkpoint recording the same
    key is resumed (another is set aside and the run starts fresh)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sink = sink or NullSink()
    should_stop = should_stop or sink.should_stop
    ctx = DistContext.current()
    if not ctx.is_main:  # rank 0 alone reports
        sink = NullSink()

    # Only this run's checkpoint, its spec checked before any data is loaded. Rank 0 decides first (it
    # may set an untrusted file aside), then the other ranks read what it left.
    ck = resume_checkpoint(out_dir, spec, run_key) if resume and ctx.is_main else None
    ctx.barrier()
    if resume and not ctx.is_main:
        ck = resume_checkpoint(out_dir, spec, run_key)
    ctx.same_on_all(None if ck is None else ck["step"],
                    f"checkpoint: every rank must resume from the same {LAST_CHECKPOINT} (put the out dir on "
                    "storage all ranks share)")
    trainer = Trainer(spec, out_dir, sink, run_key)
    if ck is not None:
        trainer.restore(ck)
        del ck
    try:
        while trainer.epoch < spec.epochs:
            if not trainer.train_one_epoch(should_stop):
                return trainer.stop()
            trainer.end_epoch()
    finally:
        trainer.source.close()  # the streaming path's persistent DataLoader workers
    return trainer.export()
