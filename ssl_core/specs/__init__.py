"""Declarative specs for pretraining and evaluation jobs.

Pydantic v2 only: this package must stay importable without torch, because the API
validates every request with it. Each spec value has exactly one default, in the module
that declares its field:

* :mod:`~ssl_core.specs.base` -- the strict base model and the input-safety limits;
* :mod:`~ssl_core.specs.data` -- dataset facts (:data:`DATASETS`, where files live) and DataSpec;
* :mod:`~ssl_core.specs.model` -- the backbone;
* :mod:`~ssl_core.specs.augment` -- the augmentation ops;
* :mod:`~ssl_core.specs.method` -- the six methods, their schemas and labels;
* :mod:`~ssl_core.specs.optim` -- the optimizer and schedule;
* :mod:`~ssl_core.specs.evaluation` -- evaluation protocols, their data, the online monitor;
* :mod:`~ssl_core.specs.recipes` -- the papers' method-dependent defaults;
* :mod:`~ssl_core.specs.job` -- PretrainSpec, EvaluateSpec and :func:`parse_job_spec`.
"""

from ssl_core.specs.augment import (
    AugmentOp, ColorJitterOp, DetexturizeOp, EdgeMapOp, GaussianBlurOp, GrayscaleOp, HorizontalFlipOp, HSVPowerOp,
    PCAContrastOp, RandomAffineOp, RandomCropOp, RandomResizedCropOp, RotateOp, SharpenOp, SolarizeOp,
)
from ssl_core.specs.base import (
    MAX_AUGMENT_OPS, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_FOLLOWUPS, MAX_IMAGE_SIZE, MAX_MILESTONES, MAX_PATH_LENGTH,
    MAX_PERMUTATIONS, MAX_QUEUE_ELEMENTS, MAX_QUEUE_SIZE, MAX_SEED, MAX_SUBSET, Strict,
)
from ssl_core.specs.data import (
    DATASET_FOLDERS, DATASETS, DEBIAN_FASHION_MNIST, FASHION_FILES, DatasetInfo, DatasetName, DataSpec,
)
from ssl_core.specs.evaluation import (
    EvalDataSpec, FinetuneProtocol, KnnProtocol, LinearProtocol, MonitorSpec, PretrainEvalSpec, ProtocolSpec,
)
from ssl_core.specs.job import (
    JOB_SPEC_ADAPTER, Device, EvaluateSpec, JobSpec, Precision, PretrainSpec, followup_eval_data, parse_job_spec,
    spec_error_path,
)
from ssl_core.specs.method import (
    METHOD_NAMES, ExemplarSpec, JigsawSpec, MethodSpec, MoCoSpec, RelativePositionSpec, RotationSpec, SimCLRSpec,
    method_label, method_schemas,
)
from ssl_core.specs.model import BackboneSpec
from ssl_core.specs.optim import OptimSpec
from ssl_core.specs.recipes import default_augment, default_optim

__all__ = [
    "DATASETS", "DATASET_FOLDERS", "DEBIAN_FASHION_MNIST", "FASHION_FILES", "JOB_SPEC_ADAPTER", "MAX_AUGMENT_OPS",
    "MAX_BATCH_SIZE", "MAX_EPOCHS", "MAX_FOLLOWUPS", "MAX_IMAGE_SIZE", "MAX_MILESTONES", "MAX_PATH_LENGTH",
    "MAX_PERMUTATIONS", "MAX_QUEUE_ELEMENTS", "MAX_QUEUE_SIZE", "MAX_SEED", "MAX_SUBSET",
    "METHOD_NAMES", "AugmentOp", "BackboneSpec", "ColorJitterOp", "DataSpec", "DatasetInfo", "DatasetName",
    "DetexturizeOp", "Device", "EdgeMapOp", "EvalDataSpec", "EvaluateSpec", "ExemplarSpec", "FinetuneProtocol",
    "GaussianBlurOp", "GrayscaleOp", "HSVPowerOp", "HorizontalFlipOp", "JigsawSpec", "JobSpec", "KnnProtocol",
    "LinearProtocol", "MethodSpec", "MoCoSpec", "MonitorSpec", "OptimSpec", "PCAContrastOp", "Precision",
    "PretrainEvalSpec", "PretrainSpec", "ProtocolSpec", "RandomAffineOp", "RandomCropOp", "RandomResizedCropOp",
    "RelativePositionSpec", "RotateOp", "RotationSpec", "SharpenOp", "SimCLRSpec", "SolarizeOp", "Strict",
    "default_augment", "default_optim", "followup_eval_data", "method_label", "method_schemas", "parse_job_spec", "spec_error_path",
]
