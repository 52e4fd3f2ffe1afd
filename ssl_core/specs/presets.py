"""Suite presets: the design's comparisons as one request (torch-free; the API expands them).

``moco_vs_simclr`` builds the design's four rows -- MoCo v1, SimCLR and MoCo v2 at batch 256 and
SimCLR at a large batch -- with the papers' recipes from :mod:`ssl_core.specs.recipes` (optimizer,
learning-rate scaling, schedule, augmentation, temperature, queue, momentum) and the same epochs,
backbone and evaluation for every row. ``pretext_tasks`` builds rotation, exemplar, relative
position and jigsaw with their papers' defaults. Baselines (random init, raw pixels) are evaluated
on the same protocols.

Nothing is changed silently: every deviation a scale forces is written in the row's ``notes``.

* ``gpu``: one 8-GPU host, ResNet-50 at 224 px on an image folder (ImageNet), 200 epochs, the
  papers' batches (SimCLR's 8192 spread over the 8 GPUs). On paper until such a host runs it.
* ``cpu``: Fashion-MNIST (or CIFAR) on 2 cores, one seed in about 20-25 minutes: a 12,800-image
  subset, the 4-block convnet (width 32) at the native size, 10 epochs, SimCLR's large batch
  scaled to 1024. MoCo's queue is cut to what the subset can fill (a queue of more keys than
  the training set minus one batch would hold the current images' own keys as negatives).
"""

from __future__ import annotations

from typing import Any, Literal

PRESETS = ("moco_vs_simclr", "pretext_tasks")
Scale = Literal["cpu", "gpu"]
CPU_DATASETS = ("fashion_mnist", "cifar10", "cifar100")

# cpu scale (see the module docstring and docs/methods.md)
CPU_SUBSET = 12_800
CPU_EPOCHS = 10
CPU_WIDTH = 32
CPU_LARGE_BATCH = 1024
# gpu scale: the papers' own settings
GPU_EPOCHS = 200
GPU_IMAGE_SIZE = 224
GPU_HOST_GPUS = 8
GPU_LARGE_BATCH = 8192
PAPER_QUEUE = 65_536
BASE_BATCH = 256


class PresetError(ValueError):
    """A preset request that cannot be built; ``field`` names the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def fitting_queue(train_images: int, batch_size: int, wanted: int = PAPER_QUEUE) -> int:
    """The largest queue <= ``wanted`` that is a multiple of the batch and holds at most the
    training set minus one batch (so no image's own earlier key is among its negatives)."""
    room = (train_images - batch_size) // batch_size * batch_size
    return max(batch_size, min(wanted, room))


def _base(scale: Scale, dataset: str | None, path: str | None) -> tuple[dict[str, Any], list[str], int | None]:
    """(base spec, notes every row shares, training images or None when unknown)."""
    if scale == "cpu":
        dataset = dataset or "fashion_mnist"
        if dataset not in CPU_DATASETS:
            raise PresetError("dataset", f"the cpu scale runs on one of {list(CPU_DATASETS)}, not {dataset!r}")
        if path is not None:
            raise PresetError("path", "the cpu scale uses a built-in dataset, not a folder")
        base = {"backbone": {"name": "convnet", "width": CPU_WIDTH}, "data": {"dataset": dataset, "subset": CPU_SUBSET},
                "epochs": CPU_EPOCHS, "device": "cpu", "log_every": 20}
        notes = [f"cpu scale: convnet width {CPU_WIDTH} (paper ResNet-50), native image size (paper 224 px), "
                 f"{CPU_SUBSET} training images (paper 1.28M), {CPU_EPOCHS} epochs (paper {GPU_EPOCHS})"]
        return base, notes, CPU_SUBSET
    if dataset not in (None, "image_folder"):
        raise PresetError("dataset", "the gpu scale trains on an image folder (ImageNet's train folder)")
    if not path:
        raise PresetError("path", "the gpu scale needs the image folder to train on (ImageNet's train folder)")
    base = {"backbone": {"name": "resnet50"},
            "data": {"dataset": "image_folder", "path": path, "image_size": GPU_IMAGE_SIZE},
            "epochs": GPU_EPOCHS, "device": "cuda", "precision": "bf16", "resources": {"gpus": GPU_HOST_GPUS},
            "log_every": 50}
    return base, [], None


def _queue(train: int | None, batch: int) -> tuple[dict[str, Any], list[str]]:
    if train is None:
        return {"queue_size": PAPER_QUEUE}, [f"queue {PAPER_QUEUE} needs at least {PAPER_QUEUE + BASE_BATCH} "
                                             "training images (ImageNet: 1.28M)"]
    k = fitting_queue(train, batch)
    if k == PAPER_QUEUE:
        return {"queue_size": k}, []
    return {"queue_size": k}, [f"queue {k} (paper {PAPER_QUEUE}): the training set has {train} images"]


def moco_vs_simclr(scale: Scale, dataset: str | None = None, path: str | None = None) -> dict[str, Any]:
    """The design's table: MoCo v1 / SimCLR / MoCo v2 at batch 256, SimCLR at a large batch."""
    base, shared, train = _base(scale, dataset, path)
    large = GPU_LARGE_BATCH if scale == "gpu" else CPU_LARGE_BATCH
    q, q_notes = _queue(train, BASE_BATCH)
    v1 = {"name": "moco", "version": 1, **q}
    v2 = {"name": "moco", "version": 2, **q}
    steps = ("lr steps x0.1 at 60% and 80% of the epochs (paper: epochs 120 and 160 of 200)")
    large_note = ([] if scale == "gpu" else
                  [f"batch {large} (paper {GPU_LARGE_BATCH}): the cpu scale's large batch, 4x the base batch"])
    variants = [
        {"label": "moco_v1 bs256", "overrides": {"method": v1, "batch_size": BASE_BATCH},
         "notes": [*shared, *q_notes, *([steps] if scale == "cpu" else [])]},
        {"label": "simclr bs256", "overrides": {"method": {"name": "simclr"}, "batch_size": BASE_BATCH},
         "notes": [*shared]},
        {"label": "moco_v2 bs256", "overrides": {"method": v2, "batch_size": BASE_BATCH},
         "notes": [*shared, *q_notes]},
        {"label": f"simclr bs{large}", "overrides": {"method": {"name": "simclr"}, "batch_size": large},
         "notes": [*shared, *large_note]},
    ]
    return {"base": base, "variants": variants, "evaluations": _evaluations(scale),
            "baselines": ["random_init", "raw_pixels"]}


def pretext_tasks(scale: Scale, dataset: str | None = None, path: str | None = None) -> dict[str, Any]:
    """Rotation, Exemplar-CNN, relative position and jigsaw, each with its paper's recipe."""
    base, shared, train = _base(scale, dataset, path)
    exemplar: dict[str, Any] = {"name": "exemplar"}
    ex_notes = list(shared)
    epochs_ex = base["epochs"]
    if scale == "cpu":
        # an Exemplar-CNN epoch is N x K samples (8000 x 100 in the paper): at the cpu budget one
        # epoch of 2000 x 64 = 128,000 samples is the image budget the other rows get
        exemplar.update(num_classes=2000, samples_per_class=64)
        epochs_ex = 1
        ex_notes.append("N 2000 surrogate classes (paper 8000), K 64 (paper 100), 1 epoch of N x K = 128,000 "
                        f"samples: the images the other rows see in {CPU_EPOCHS} epochs")
    variants = [
        {"label": "rotation", "overrides": {"method": {"name": "rotation"}, "batch_size": 128},
         "notes": [*shared]},
        {"label": "exemplar", "overrides": {"method": exemplar, "batch_size": BASE_BATCH, "epochs": epochs_ex},
         "notes": ex_notes},
        {"label": "relative_position", "overrides": {"method": {"name": "relative_position"},
                                                     "batch_size": BASE_BATCH}, "notes": [*shared]},
        {"label": "jigsaw", "overrides": {"method": {"name": "jigsaw"}, "batch_size": BASE_BATCH},
         "notes": [*shared]},
    ]
    return {"base": base, "variants": variants, "evaluations": _evaluations(scale),
            "baselines": ["random_init", "raw_pixels"]}


def _evaluations(scale: Scale) -> list[dict[str, Any]]:
    """kNN (k 200, t 0.1) and a linear probe on frozen features, the same for every row."""
    return [{"protocol": "knn", "k": 200, "temperature": 0.1}, {"protocol": "linear", "epochs": 100}]


def eval_data(scale: Scale) -> dict[str, Any] | None:
    """The labelled data of the evaluations: the cpu scale's kNN bank and probe use 10,000
    training images and the whole test split; the gpu scale the dataset's own splits."""
    return {"train_subset": 10_000} if scale == "cpu" else None


def build_preset(name: str, scale: Scale = "cpu", dataset: str | None = None, path: str | None = None) -> dict[str, Any]:
    """A preset's plan: ``base`` spec, ``variants`` (label, dotted ``overrides``, ``notes``),
    ``evaluations``, ``baselines``; PresetError naming the field otherwise."""
    if name not in PRESETS:
        raise PresetError("preset", f"unknown preset {name!r} (one of {list(PRESETS)})")
    if scale not in ("cpu", "gpu"):
        raise PresetError("scale", f"unknown scale {scale!r} (cpu or gpu)")
    plan = (moco_vs_simclr if name == "moco_vs_simclr" else pretext_tasks)(scale, dataset, path)
    data = eval_data(scale)
    if data is not None:
        plan["base"]["eval"] = {"data": {"dataset": plan["base"]["data"]["dataset"], **data}}
    return plan
