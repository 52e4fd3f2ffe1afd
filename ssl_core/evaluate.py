"""Evaluation protocols for a frozen or fine-tuned backbone: weighted kNN, linear probe, fine-tuning.

    evaluate(spec, out_dir, sink, should_stop, weights_path) -> EvalResult

Needs only backbones and data (never the pretraining code), so a ``backbone.safetensors`` file
is all an evaluation job reads. Accuracies are fractions in [0, 1].

* kNN (Wu et al., CVPR 2018, "InstDisc"): L2-normalised features, cosine similarity to a bank of
  labelled training features, the top k neighbours vote with weight exp(s / t); k = 200,
  t = 0.1 as in the MoCo / lightly monitors.
* Linear probe: a linear classifier on frozen features, SGD momentum 0.9, cosine schedule
  (lightly / solo-learn recipes). Features are standardised with the training set's mean and std
  first: an affine map, so the probe stays linear, but one lr then suits every backbone
  (the role BatchNorm-without-affine plays before the probe in MAE's protocol).
* Fine-tune: the whole backbone plus a linear head, crop + flip augmentation.
* Layers (``spec.layers``): one probe per requested layer (or one on their concatenation), all layers'
  features from the same single pass over each split (:class:`~ssl_core.features.LayerTap`); the
  result keeps every probe's numbers (``layers``) and reports ``pool`` -- or else the last layer
  listed -- as its top-level top-1/top-5, so a default evaluation reads as before.

:func:`evaluate` reads top to bottom: what is evaluated (:func:`load_subject`: a backbone file or a
baseline), the labelled splits, the protocol (:func:`run_protocol`), the result. Progress
(``sink.progress``) counts the whole protocol as one run of steps: feature-extraction batches, then
probe / fine-tuning optimizer steps, then scoring; a stop request is honoured between any two of
them (:class:`StopRequested` unwinds the protocol; the job returns ``completed=False`` and writes
nothing).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.augment import build_pipeline, normalize
from ssl_core.data import load_dataset
from ssl_core.errors import DatasetError, SpecError
from ssl_core.features import OnStep, StopRequested, extract_features, num_batches, to_input
from ssl_core.reporting import NullSink, Sink
from ssl_core.runtime import atomic_write_text, autocast, resolve_device, resolve_precision, seed_everything
from ssl_core.specs import EvaluateSpec, HorizontalFlipOp, RandomCropOp
from ssl_core.specs.model import POOLED
from ssl_core.subject import Subject, load_subject

# bound the (test rows x bank) similarity matrix of one kNN chunk to ~64 MiB of fp32
_KNN_CHUNK_ELEMENTS = 1 << 24


@dataclass
class EvalResult:
    """One evaluation; :meth:`to_dict` is ``result.json`` and the job's stored result."""

    completed: bool                  # False: stopped by should_stop, nothing written
    protocol: str                    # knn | linear | finetune
    dataset: str
    top1: float | None               # None unless completed
    top5: float | None
    num_train: int                   # labelled rows used (kNN bank / probe or fine-tuning training set)
    num_test: int
    feature_dim: int
    method: str | None               # what produced the backbone, or the baseline's name
    backbone: dict[str, Any] | None  # the backbone spec (None for raw pixels)
    epochs: int | None               # pretraining epochs of the backbone (0 for a baseline)
    baseline: str | None
    wall_s: float
    layer: str = POOLED              # the probe whose numbers are top1 / top5 / feature_dim
    layers: dict[str, dict[str, Any]] | None = None  # every probe: {top1, top5, feature_dim}

    @property
    def metrics(self) -> dict[str, float]:
        """The metric rows an evaluation reports (empty when stopped); per probe when there are several."""
        if not self.completed:
            return {}
        out = {"eval/top1": self.top1, "eval/top5": self.top5}
        if self.layers and len(self.layers) > 1:
            for name, r in self.layers.items():
                out.update({f"eval/{name}/top1": r["top1"], f"eval/{name}/top5": r["top5"]})
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scores:
    """What a protocol measured on the test split."""

    top1: float
    top5: float
    train_loss: float | None = None  # the linear probe's last-epoch mean cross-entropy
    feature_dim: int = 0             # the width of the features scored (set by run_protocol)


class ProgressMeter:
    """Turns units of work into ``sink.progress`` calls over a known total (no host syncs).

    ``step(epoch, images)`` after each feature batch or optimizer step; images/sec and the ETA are
    averages since the start (feature batches and probe steps cost differently, so the ETA is rough).
    """

    def __init__(self, sink: Sink, total_steps: int):
        self.sink, self.total, self.done, self.images = sink, max(1, int(total_steps)), 0, 0
        self.t0 = time.time()

    def step(self, epoch: int, images: int = 0) -> None:
        self.done += 1
        self.images += int(images)
        elapsed = max(time.time() - self.t0, 1e-9)
        eta = (self.total - self.done) * elapsed / self.done
        self.sink.progress(epoch=int(epoch), step=self.done, total_steps=self.total,
                           images_per_sec=self.images / elapsed, eta_s=max(0.0, eta))


# ---------------------------------------------------------------------------
# kNN
@torch.no_grad()
def knn_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor, k: int = 200,
                temperature: float = 0.1, num_classes: int | None = None) -> Tensor:
    """Weighted kNN class scores (InstDisc).

    train_features (N, D), train_labels (N,) int, test_features (M, D) -> scores (M, C), where
    scores[i, c] = sum over the k most cosine-similar bank rows j of class c of exp(s_ij / t).
    k is clipped to the bank size; test rows are processed in chunks to bound memory.
    """
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device).long()
    c = int(num_classes) if num_classes is not None else int(labels.max().item()) + 1
    k = max(1, min(int(k), bank.shape[0]))
    chunk = max(1, _KNN_CHUNK_ELEMENTS // max(1, bank.shape[0]))
    out = []
    for start in range(0, test_features.shape[0], chunk):
        q = F.normalize(test_features[start:start + chunk].to(bank.device).float(), dim=1)
        sim = q @ bank.T                                   # (m, N) cosine similarities
        sim_w, idx = sim.topk(k, dim=1)                    # (m, k)
        votes = torch.zeros(q.shape[0], c, device=bank.device, dtype=torch.float32)
        votes.scatter_add_(1, labels[idx], (sim_w / temperature).exp())  # (m, C)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, c, device=bank.device)


def topk_accuracy(scores: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest scores (k clipped to the class count)."""
    if scores.shape[0] == 0:
        return 0.0
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels.to(scores.device).view(-1, 1)).any(dim=1).float().mean().item())


def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 k: int = 200, temperature: float = 0.1, num_classes: int | None = None) -> float:
    """Top-1 accuracy of :func:`knn_predict`."""
    return topk_accuracy(knn_predict(train_features, train_labels, test_features, k, temperature, num_classes),
                         test_labels, 1)


def knn_top5(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
             k: int = 200, temperature: float = 0.1, num_classes: int | None = None) -> float:
    return topk_accuracy(knn_predict(train_features, train_labels, test_features, k, temperature, num_classes),
                         test_labels, 5)


# ---------------------------------------------------------------------------
# Linear probe and fine-tuning
def _crop_flip(image_size: int):
    """The evaluation's training augmentation: a padded random crop and a horizontal flip."""
    return build_pipeline([RandomCropOp(padding=max(1, image_size // 8)), HorizontalFlipOp()], image_size)


def _cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


def _crop_flip_views(pipeline, images: Tensor, generator: torch.Generator, batch_size: int,
                     device: torch.device) -> Tensor:
    """One crop + flip view of every image, back to uint8 so the backbone's input path is unchanged."""
    views = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size].to(device)
        views.append(pipeline(x, generator=generator).mul_(255).round_().to(torch.uint8))
    return torch.cat(views)


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *,
                 epochs: int = 100, lr: float = 0.1, batch_size: int = 256, weight_decay: float = 0.0,
                 num_classes: int | None = None, seed: int = 0, augment: bool = False,
                 backbone: nn.Module | None = None, train_images: Tensor | None = None, mean=None, std=None,
                 feature_batch_size: int = 512, amp_dtype: torch.dtype | None = None,
                 should_stop: Callable[[], bool] | None = None, on_step: OnStep | None = None) -> Scores:
    """Train a linear classifier on frozen features; score it on the test features.

    Features (N, D) are precomputed; with ``augment`` (needs backbone, train_images, mean, std) the
    training features are recomputed each epoch from crop + flip views of the uint8 images.
    ``on_step(epoch, images)`` follows every optimizer step and every re-extraction batch
    (:func:`linear_probe_steps` of them in all); ``should_stop`` is asked before every epoch and
    every re-extraction batch (raises :class:`StopRequested`).
    """
    if augment and (backbone is None or train_images is None or mean is None or std is None):
        raise SpecError("protocol.augment: the augmented linear probe needs a backbone (not raw pixels)")
    device = train_feats.device
    c = int(num_classes) if num_classes is not None else int(max(train_labels.max(), test_labels.max()).item()) + 1
    mu = train_feats.mean(0, keepdim=True)
    sigma = train_feats.std(0, keepdim=True).clamp_min(1e-6)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(train_feats.shape[1], c).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    y = train_labels.to(device).long()
    n = train_feats.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total, step, loss_sum = epochs * steps_per_epoch, 0, torch.zeros((), device=device)
    pipeline = _crop_flip(train_images.shape[-1]) if augment else None
    aug_gen = torch.Generator(device=device).manual_seed(seed) if augment else None
    for epoch in range(epochs):
        if should_stop is not None and should_stop():
            raise StopRequested
        feats = train_feats
        if augment:
            views = _crop_flip_views(pipeline, train_images, aug_gen, feature_batch_size, device)
            feats = extract_features(backbone, views, mean, std, feature_batch_size, device, amp_dtype,
                                     should_stop=should_stop, on_batch=on_step, epoch=epoch)
        feats = (feats - mu) / sigma
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum.zero_()
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            for g in opt.param_groups:
                g["lr"] = _cosine_lr(lr, step, total)
            loss = F.cross_entropy(head(feats[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            step += 1
            if on_step is not None:
                on_step(epoch, idx.shape[0])
    with torch.no_grad():
        scores = head((test_feats - mu) / sigma)
    return Scores(topk_accuracy(scores, test_labels, 1), topk_accuracy(scores, test_labels, 5),
                  float(loss_sum.item() / steps_per_epoch))


def linear_probe_steps(n: int, epochs: int, batch_size: int, augment: bool = False,
                       feature_batch_size: int = 512) -> int:
    """How many ``on_step`` calls :func:`linear_probe` makes for n training rows."""
    per_epoch = num_batches(n, batch_size) + (num_batches(n, feature_batch_size) if augment else 0)
    return epochs * per_epoch


def finetune_steps(n: int, epochs: int, batch_size: int) -> int:
    """Optimizer steps of :func:`finetune` (drop_last, at least one step per epoch)."""
    return epochs * (max(1, n // batch_size) if n >= batch_size else 1)


def finetune(backbone: nn.Module, train_images: Tensor, train_labels: Tensor, test_images: Tensor,
             test_labels: Tensor, *, mean, std, num_classes: int, epochs: int = 30, lr: float = 0.01,
             batch_size: int = 256, weight_decay: float = 5e-4, augment: bool = True, seed: int = 0,
             device: torch.device | None = None, amp_dtype: torch.dtype | None = None, use_scaler: bool = False,
             eval_batch_size: int = 512, should_stop: Callable[[], bool] | None = None,
             on_step: OnStep | None = None) -> Scores:
    """Fine-tune backbone + a linear head end to end (SGD momentum 0.9, cosine, crop + flip).

    ``on_step(epoch, images)`` follows every optimizer step (:func:`finetune_steps` in all);
    ``should_stop`` is asked before every epoch (raises :class:`StopRequested`).
    """
    n = train_images.shape[0]
    if n < 2:
        raise SpecError(f"data.train_subset: fine-tuning needs at least 2 training images, got {n}")
    device = device or next(backbone.parameters()).device
    torch.manual_seed(seed)
    head = nn.Linear(backbone.feature_dim, num_classes)
    model = nn.Sequential(backbone, head).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    pipeline = _crop_flip(train_images.shape[-1]) if augment else None
    gen = torch.Generator(device="cpu").manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed)
    images, y = train_images.to(device), train_labels.to(device).long()
    steps_per_epoch = finetune_steps(n, 1, batch_size)
    total, step = epochs * steps_per_epoch, 0
    model.train()
    for epoch in range(epochs):
        if should_stop is not None and should_stop():
            raise StopRequested
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = images[idx]
            x = pipeline(x, generator=aug_gen) if pipeline is not None else x.float().div(255)
            x = normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = _cosine_lr(lr, step, total)
            with autocast(device, amp_dtype):
                loss = F.cross_entropy(model(x).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            if on_step is not None:
                on_step(epoch, idx.shape[0])
    scores = _classify(model, test_images, mean, std, eval_batch_size, device, amp_dtype)
    return Scores(topk_accuracy(scores, test_labels, 1), topk_accuracy(scores, test_labels, 5))


@torch.no_grad()
def _classify(model: nn.Module, images_uint8: Tensor, mean, std, batch_size: int, device: torch.device,
              amp_dtype: torch.dtype | None) -> Tensor:
    """Class scores (N, C) of a backbone + head in eval mode."""
    model.eval()
    scores = []
    for s in range(0, images_uint8.shape[0], batch_size):
        x = to_input(images_uint8[s:s + batch_size].to(device), mean, std)
        with autocast(device, amp_dtype):
            scores.append(model(x.contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(scores)


# ---------------------------------------------------------------------------
# One evaluation job
@dataclass
class LabelledSplits:
    train_images: Tensor             # uint8 (N, C, H, W) on the CPU
    train_labels: Tensor             # on the device
    test_images: Tensor
    test_labels: Tensor
    num_classes: int


def load_labelled(spec: EvaluateSpec, subject: Subject, device: torch.device) -> LabelledSplits:
    """The train and test splits, read at the subject's channels and size."""
    d = spec.data
    kw = dict(path=d.path, image_size=subject.image_size, channels=subject.channels, seed=spec.seed)
    train = load_dataset(d.dataset, d.resolved_train_split, subset=d.train_subset, **kw)
    test = load_dataset(d.dataset, d.resolved_test_split, subset=d.test_subset, **kw)
    if train.labels is None or test.labels is None:
        raise DatasetError(f"data.dataset: {d.dataset} ({d.path or 'built in'}) has no labels to evaluate against")
    num_classes = int(train.num_classes or int(max(train.labels.max(), test.labels.max())) + 1)
    return LabelledSplits(train.images, train.labels.to(device), test.images, test.labels.to(device), num_classes)


def protocol_work(spec: EvaluateSpec, n_train: int, n_test: int, augment: bool, probes: int = 1) -> int:
    """Units of work :func:`run_protocol` reports: feature batches (one pass for every probe), then
    probe / fine-tuning steps (per probe)."""
    proto, fb = spec.protocol, spec.batch_size
    if proto.protocol == "finetune":
        return finetune_steps(n_train, proto.epochs, proto.batch_size)
    work = num_batches(n_train, fb) + num_batches(n_test, fb)
    if proto.protocol == "linear":
        work += probes * linear_probe_steps(n_train, proto.epochs, proto.batch_size, augment, fb)
    return work


def run_protocol(spec: EvaluateSpec, subject: Subject, data: LabelledSplits, device: torch.device,
                 amp_dtype: torch.dtype | None, use_scaler: bool, should_stop: Callable[[], bool],
                 meter: ProgressMeter) -> dict[str, Scores]:
    """The spec's protocol on the subject, {probe: scores}; raises :class:`StopRequested` when
    ``should_stop`` fires. Every probe's features come from the same pass over each split."""
    proto, fb = spec.protocol, spec.batch_size
    if proto.protocol == "finetune":
        if subject.backbone is None:
            raise SpecError("protocol: raw pixels have nothing to fine-tune")
        scores = finetune(subject.backbone, data.train_images, data.train_labels, data.test_images, data.test_labels,
                          mean=subject.mean, std=subject.std, num_classes=data.num_classes, epochs=proto.epochs,
                          lr=proto.lr, batch_size=proto.batch_size, weight_decay=proto.weight_decay,
                          augment=proto.augment, seed=spec.seed, device=device, amp_dtype=amp_dtype,
                          use_scaler=use_scaler, eval_batch_size=fb, should_stop=should_stop, on_step=meter.step)
        scores.feature_dim = int(subject.backbone.feature_dim)
        return {POOLED: scores}
    f_train = subject.features(data.train_images, fb, device, amp_dtype, should_stop, meter.step)
    f_test = subject.features(data.test_images, fb, device, amp_dtype, should_stop, meter.step)
    out: dict[str, Scores] = {}
    for probe in subject.probes:
        # free each probe's features once scored: the next probe needs only its own
        tr, te = f_train.pop(probe), f_test.pop(probe)
        if proto.protocol == "knn":
            scores = knn_predict(tr, data.train_labels, te, proto.k, proto.temperature, data.num_classes)
            out[probe] = Scores(topk_accuracy(scores, data.test_labels, 1), topk_accuracy(scores, data.test_labels, 5))
        else:
            out[probe] = linear_probe(
                tr, data.train_labels, te, data.test_labels, epochs=proto.epochs, lr=proto.lr,
                batch_size=proto.batch_size, weight_decay=proto.weight_decay, num_classes=data.num_classes,
                seed=spec.seed, augment=proto.augment and subject.backbone is not None,
                backbone=subject.probe_input(probe), train_images=data.train_images, mean=subject.mean,
                std=subject.std, feature_batch_size=fb, amp_dtype=amp_dtype, should_stop=should_stop,
                on_step=meter.step)
        out[probe].feature_dim = int(tr.shape[1])
    return out


def primary_probe(probes: list[str]) -> str:
    """The probe whose numbers an evaluation reports at the top level (and the leaderboard sorts by):
    the final pooled features when probed, else the last layer listed."""
    return POOLED if POOLED in probes else probes[-1]


def evaluate(spec: EvaluateSpec, out_dir: Path, sink: Sink | None = None,
             should_stop: Callable[[], bool] | None = None, weights_path: Path | None = None) -> EvalResult:
    """Run one evaluation job and write ``out_dir/result.json`` (atomically).

    ``weights_path`` overrides ``spec.weights`` (the worker resolves ``source_job_id`` to a file).
    If ``should_stop`` fires mid-protocol the result has ``completed=False`` and nothing is written.
    """
    sink = sink or NullSink()
    should_stop = should_stop or sink.should_stop
    t0 = time.time()
    seed_everything(spec.seed)
    device = resolve_device(spec.device)
    amp_dtype, use_scaler = resolve_precision(spec.precision, device)

    subject = load_subject(spec, weights_path, device)
    data = load_labelled(spec, subject, device)
    n_train, n_test = int(data.train_images.shape[0]), int(data.test_images.shape[0])
    augment = spec.protocol.protocol == "linear" and spec.protocol.augment and subject.backbone is not None
    probes = subject.probes
    meter = ProgressMeter(sink, protocol_work(spec, n_train, n_test, augment, len(probes)) + 1)  # + 1: scoring
    try:
        per_probe: dict[str, Scores] | None = run_protocol(spec, subject, data, device, amp_dtype, use_scaler,
                                                           should_stop, meter)
        meter.step(max(0, getattr(spec.protocol, "epochs", 1) - 1))
    except StopRequested:
        per_probe = None

    primary = primary_probe(probes)
    scores = per_probe[primary] if per_probe else None
    result = EvalResult(
        completed=scores is not None, protocol=spec.protocol.protocol, dataset=spec.data.dataset,
        top1=scores.top1 if scores else None, top5=scores.top5 if scores else None,
        num_train=n_train, num_test=n_test, feature_dim=scores.feature_dim if scores else 0, method=subject.method,
        backbone=subject.backbone_spec, epochs=subject.epochs, baseline=spec.baseline,
        wall_s=round(time.time() - t0, 3), layer=primary,
        layers={p: {"top1": v.top1, "top5": v.top5, "feature_dim": v.feature_dim} for p, v in per_probe.items()}
        if per_probe else None)
    if result.completed:
        path = atomic_write_text(Path(out_dir) / "result.json", json.dumps(result.to_dict(), indent=2))
        sink.metrics(0, result.metrics)
        sink.artifact("result", path, "result")
        sink.flush()
    return result
