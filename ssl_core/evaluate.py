"""Evaluation protocols for a frozen or fine-tuned backbone: weighted kNN, linear probe, fine-tuning.

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

Progress (``sink.progress``) counts the whole protocol as one run of steps: feature-extraction
batches, then probe / fine-tuning optimizer steps, then scoring; a stop request is honoured
between any two of them (the job returns ``completed=False`` and writes nothing).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.reporting import NullSink, Sink
from ssl_core.runtime import atomic_write_text, autocast, resolve_device, resolve_precision, seed_everything
from ssl_core.specs import DATASETS, BackboneSpec, EvaluateSpec

# bound the (test rows x bank) similarity matrix of one kNN chunk to ~64 MiB of fp32
_KNN_CHUNK_ELEMENTS = 1 << 24

# a callback after each unit of work: (epoch, images in it) -> None
OnStep = Callable[[int, int], None]


class StopRequested(Exception):
    """Raised between feature-extraction batches when ``should_stop`` fires; the protocol unwinds."""


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
# Features
def to_input(images_uint8: Tensor, mean, std) -> Tensor:
    """uint8 (B, C, H, W) -> normalised float, the way every method feeds its backbone."""
    from ssl_core.augment import normalize, to_float

    return normalize(to_float(images_uint8), mean, std)


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / max(1, batch_size))


@torch.no_grad()
def extract_features(backbone: nn.Module, images_uint8: Tensor, mean, std, batch_size: int = 512,
                     device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None, *,
                     should_stop: Callable[[], bool] | None = None, on_batch: OnStep | None = None,
                     epoch: int = 0) -> Tensor:
    """Backbone features (N, D) in fp32 on ``device`` (eval mode, no grad, autocast if amp_dtype).

    ``should_stop`` is asked before every batch (raises :class:`StopRequested`); ``on_batch(epoch,
    images)`` is called after each one (ceil(N / batch_size) calls).
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    feats = []
    try:
        for start in range(0, images_uint8.shape[0], batch_size):
            if should_stop is not None and should_stop():
                raise StopRequested
            x = to_input(images_uint8[start:start + batch_size].to(device, non_blocking=True), mean, std)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                feats.append(backbone(x).float())
            if on_batch is not None:
                on_batch(epoch, x.shape[0])
    finally:
        backbone.train(was_training)
    return torch.cat(feats)


def raw_pixel_features(images_uint8: Tensor, mean, std, device=None) -> Tensor:
    """The raw-pixels baseline: flattened normalised pixels (N, C*H*W)."""
    x = images_uint8.to(device) if device is not None else images_uint8
    return to_input(x, mean, std).flatten(1)


def _crop_flip(image_size: int):
    from ssl_core.augment import build_pipeline
    from ssl_core.specs import HorizontalFlipOp, RandomCropOp

    return build_pipeline([RandomCropOp(padding=max(1, image_size // 8)), HorizontalFlipOp()], image_size)


# ---------------------------------------------------------------------------
# Linear probe and fine-tuning
def _cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *,
                 epochs: int = 100, lr: float = 0.1, batch_size: int = 256, weight_decay: float = 0.0,
                 num_classes: int | None = None, seed: int = 0, augment: bool = False,
                 backbone: nn.Module | None = None, train_images: Tensor | None = None, mean=None, std=None,
                 feature_batch_size: int = 512, amp_dtype: torch.dtype | None = None,
                 should_stop: Callable[[], bool] | None = None, on_step: OnStep | None = None) -> dict[str, Any]:
    """Train a linear classifier on frozen features; returns {top1, top5, train_loss, completed}.

    Features (N, D) are precomputed; with ``augment`` (needs backbone, train_images, mean, std) the
    training features are recomputed each epoch from crop + flip views of the uint8 images.
    ``on_step(epoch, images)`` follows every optimizer step and every re-extraction batch:
    :func:`linear_probe_steps` of them in all.
    """
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
            return {"completed": False}
        feats = train_feats
        if augment:
            assert backbone is not None and train_images is not None
            views = []
            for s in range(0, n, feature_batch_size):
                x = train_images[s:s + feature_batch_size].to(device)
                views.append(pipeline(x, generator=aug_gen).mul_(255).round_().to(torch.uint8))
            try:
                feats = extract_features(backbone, torch.cat(views), mean, std, feature_batch_size, device,
                                         amp_dtype, should_stop=should_stop, on_batch=on_step, epoch=epoch)
            except StopRequested:
                return {"completed": False}
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
    return {"completed": True, "top1": topk_accuracy(scores, test_labels, 1),
            "top5": topk_accuracy(scores, test_labels, 5), "train_loss": float(loss_sum.item() / steps_per_epoch)}


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
             on_step: OnStep | None = None) -> dict[str, Any]:
    """Fine-tune backbone + a linear head end to end (SGD momentum 0.9, cosine, crop + flip).

    ``on_step(epoch, images)`` follows every optimizer step (:func:`finetune_steps` in all).
    """
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
    n = images.shape[0]
    if n < 2:
        raise ValueError("finetune needs at least 2 training images")
    steps_per_epoch = finetune_steps(n, 1, batch_size)
    total, step = epochs * steps_per_epoch, 0
    model.train()
    for epoch in range(epochs):
        if should_stop is not None and should_stop():
            return {"completed": False}
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = images[idx]
            x = pipeline(x, generator=aug_gen) if pipeline is not None else x.float().div(255)
            from ssl_core.augment import normalize

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
    model.eval()
    with torch.no_grad():
        scores = []
        for s in range(0, test_images.shape[0], eval_batch_size):
            x = to_input(test_images[s:s + eval_batch_size].to(device), mean, std)
            with autocast(device, amp_dtype):
                scores.append(model(x.contiguous(memory_format=torch.channels_last)).float())
        scores = torch.cat(scores)
    return {"completed": True, "top1": topk_accuracy(scores, test_labels, 1),
            "top5": topk_accuracy(scores, test_labels, 5)}


# ---------------------------------------------------------------------------
# Backbone files
def load_backbone(weights_path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a backbone from a ``backbone.safetensors`` file (never unpickles).

    Returns the module (eval mode) and the parsed metadata: spec (dict), backbone (dict),
    feature_dim, in_channels, image_size, mean, std, method, epochs, dataset.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ssl_core.backbones import build_backbone
    from ssl_core.errors import PermanentError

    path = Path(weights_path)
    if not path.is_file():
        raise PermanentError(f"weights: no backbone file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
        state = load_file(str(path), device=str(device))
    except Exception as e:  # a truncated or foreign file
        raise PermanentError(f"weights: {path} is not a readable safetensors file ({e})") from e
    if "backbone" not in raw:
        raise PermanentError(f"weights: {path} has no pretextlab backbone metadata")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            meta[key] = value
    spec = BackboneSpec.model_validate(meta["backbone"])
    module = build_backbone(spec, int(meta["in_channels"]), int(meta["image_size"]))
    module.load_state_dict(state)
    return module.to(device).eval(), meta


def backbone_metadata(spec_json: str, backbone: BackboneSpec, feature_dim: int, in_channels: int, image_size: int,
                      mean, std, method: str, epochs: int, dataset: str) -> dict[str, str]:
    """String-valued safetensors metadata (JSON-encoded values) that :func:`load_backbone` parses."""
    return {
        "format": "pretextlab-backbone/1", "spec": spec_json, "backbone": backbone.model_dump_json(),
        "feature_dim": str(int(feature_dim)), "in_channels": str(int(in_channels)), "image_size": str(int(image_size)),
        "mean": json.dumps([float(m) for m in mean]), "std": json.dumps([float(s) for s in std]),
        "method": json.dumps(method), "epochs": str(int(epochs)), "dataset": json.dumps(dataset),
    }


def dataset_stats(dataset: str, channels: int) -> tuple[list[float], list[float]]:
    """The dataset's mean/std, repeated to ``channels`` (a gray set read as 3 channels)."""
    info = DATASETS[dataset]
    reps = channels // len(info.mean) if channels % len(info.mean) == 0 else 1
    return list(info.mean) * reps, list(info.std) * reps


# ---------------------------------------------------------------------------
def evaluate(spec: EvaluateSpec, out_dir: Path, sink: Sink | None = None,
             should_stop: Callable[[], bool] | None = None, weights_path: Path | None = None) -> dict[str, Any]:
    """Run one evaluation job and write ``out_dir/result.json`` (atomically).

    ``weights_path`` overrides ``spec.weights`` (the worker resolves ``source_job_id`` to a file).
    Returns the result dict (protocol, dataset, top1, top5, num_train, num_test, feature_dim, method,
    backbone, epochs, baseline, completed); if ``should_stop`` fires mid-protocol it returns
    ``completed=False`` and writes nothing.
    """
    from ssl_core.backbones import build_backbone
    from ssl_core.data import load_dataset

    sink = sink or NullSink()
    stop = should_stop or sink.should_stop
    out_dir = Path(out_dir)
    t0 = time.time()
    seed_everything(spec.seed)
    device = resolve_device(spec.device)
    amp_dtype, use_scaler = resolve_precision(spec.precision, device)
    d = spec.data
    info = DATASETS[d.dataset]
    proto = spec.protocol

    weights = Path(weights_path) if weights_path is not None else (Path(spec.weights) if spec.weights else None)
    meta: dict[str, Any] = {}
    backbone: nn.Module | None = None
    if spec.baseline is None:
        if weights is None:
            raise ValueError("evaluate: source_job_id must be resolved to weights_path by the caller")
        backbone, meta = load_backbone(weights, device)
        # the backbone's own input size unless the spec asks for another (adaptive pooling allows it)
        channels, image_size = int(meta["in_channels"]), int(d.image_size or meta["image_size"])
        mean, std = meta["mean"], meta["std"]
        method, epochs, bspec = meta.get("method"), meta.get("epochs"), meta["backbone"]
    else:
        channels = info.channels
        image_size = int(d.image_size or info.image_size or 0) or None
        if image_size is None:
            raise ValueError("data.image_size: this dataset needs an image size for a baseline")
        mean, std = dataset_stats(d.dataset, channels)
        method, epochs = spec.baseline, 0
        bspec = spec.backbone.model_dump() if spec.backbone is not None else None
        if spec.baseline == "random_init":
            torch.manual_seed(spec.seed)
            backbone = build_backbone(spec.backbone, channels, image_size).to(device)

    load = dict(path=d.path, image_size=image_size, channels=channels, seed=spec.seed)
    train = load_dataset(d.dataset, d.resolved_train_split, subset=d.train_subset, **load)
    test = load_dataset(d.dataset, d.resolved_test_split, subset=d.test_subset, **load)
    if train.labels is None or test.labels is None:
        raise ValueError(f"data.dataset: {d.dataset} split has no labels to evaluate against")
    num_classes = int(train.num_classes or int(max(train.labels.max(), test.labels.max())) + 1)
    y_train, y_test = train.labels.to(device), test.labels.to(device)

    # progress over the whole protocol: feature batches (train + test), probe / fine-tune steps, scoring
    n_train, n_test, fb = int(train.images.shape[0]), int(test.images.shape[0]), spec.batch_size
    augment = proto.protocol == "linear" and proto.augment and backbone is not None
    if proto.protocol == "knn":
        work = num_batches(n_train, fb) + num_batches(n_test, fb)
    elif proto.protocol == "linear":
        work = num_batches(n_train, fb) + num_batches(n_test, fb) + linear_probe_steps(
            n_train, proto.epochs, proto.batch_size, augment, fb)
    else:
        work = finetune_steps(n_train, proto.epochs, proto.batch_size)
    meter = ProgressMeter(sink, work + 1)  # + 1: scoring the test set

    def features(images: Tensor) -> Tensor:
        if backbone is not None:
            return extract_features(backbone, images, mean, std, fb, device, amp_dtype, should_stop=stop,
                                    on_batch=meter.step)
        out = []  # raw pixels: cheap, but batched like the backbone path so progress and stop behave alike
        for start in range(0, images.shape[0], fb):
            if stop():
                raise StopRequested
            out.append(raw_pixel_features(images[start:start + fb], mean, std, device))
            meter.step(0, out[-1].shape[0])
        return torch.cat(out)

    feature_dim: int | None = None
    try:
        if proto.protocol == "knn":
            f_train, f_test = features(train.images), features(test.images)
            feature_dim = f_train.shape[1]
            scores = knn_predict(f_train, y_train, f_test, proto.k, proto.temperature, num_classes)
            out = {"completed": True, "top1": topk_accuracy(scores, y_test, 1),
                   "top5": topk_accuracy(scores, y_test, 5)}
        elif proto.protocol == "linear":
            f_train, f_test = features(train.images), features(test.images)
            feature_dim = f_train.shape[1]
            out = linear_probe(
                f_train, y_train, f_test, y_test, epochs=proto.epochs, lr=proto.lr, batch_size=proto.batch_size,
                weight_decay=proto.weight_decay, num_classes=num_classes, seed=spec.seed, augment=augment,
                backbone=backbone, train_images=train.images, mean=mean, std=std, feature_batch_size=fb,
                amp_dtype=amp_dtype, should_stop=stop, on_step=meter.step)
        else:
            assert backbone is not None  # the spec refuses raw_pixels + finetune
            feature_dim = backbone.feature_dim
            out = finetune(backbone, train.images, train.labels, test.images, test.labels, mean=mean, std=std,
                           num_classes=num_classes, epochs=proto.epochs, lr=proto.lr, batch_size=proto.batch_size,
                           weight_decay=proto.weight_decay, augment=proto.augment, seed=spec.seed, device=device,
                           amp_dtype=amp_dtype, use_scaler=use_scaler, eval_batch_size=fb, should_stop=stop,
                           on_step=meter.step)
    except StopRequested:
        out = {"completed": False}
    if out["completed"]:
        meter.step(max(0, getattr(proto, "epochs", 1) - 1))

    result: dict[str, Any] = {
        "protocol": proto.protocol, "dataset": d.dataset, "top1": out.get("top1"), "top5": out.get("top5"),
        "num_train": n_train, "num_test": n_test,
        "feature_dim": int(feature_dim) if feature_dim is not None else None, "method": method, "backbone": bspec,
        "epochs": epochs,
        "baseline": spec.baseline, "completed": bool(out["completed"]), "wall_s": round(time.time() - t0, 3),
    }
    if not result["completed"]:
        return result
    path = atomic_write_text(out_dir / "result.json", json.dumps(result, indent=2))
    sink.metrics(0, {"eval/top1": result["top1"], "eval/top5": result["top5"]})
    sink.artifact("result", path, "result")
    sink.flush()
    return result
