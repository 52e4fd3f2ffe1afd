"""Spec validation: every invalid spec is refused with a message naming the field; nothing starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from ssl_core.specs import (
    DATASETS,
    EvaluateSpec,
    PretrainSpec,
    method_label,
    method_schemas,
    parse_job_spec,
)


def refused(spec: dict, *needles: str) -> str:
    with pytest.raises(ValidationError) as info:
        PretrainSpec.model_validate(spec)
    text = str(info.value)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text}"
    return text


@pytest.mark.parametrize(
    "spec, needles",
    [
        ({"method": {"name": "byol"}}, ("method", "byol")),
        ({"method": {"name": "simclr", "temprature": 0.5}}, ("temprature", "Extra inputs")),
        ({"epochz": 3}, ("epochz",)),
        ({"optim": {"lr": 0}}, ("optim.lr",)),
        ({"optim": {"lr": -0.1}}, ("optim.lr",)),
        ({"batch_size": 1}, ("batch_size",)),
        ({"batch_size": 100_000}, ("batch_size",)),
        ({"epochs": 0}, ("epochs",)),
        ({"epochs": 10**6}, ("epochs",)),
        ({"method": {"name": "moco", "queue_size": 1000}, "batch_size": 256}, ("method.queue_size", "multiple")),
        ({"method": {"name": "moco", "queue_size": 1 << 20, "projection_dim": 4096}, "batch_size": 256},
         ("method.queue_size", "limit")),
        ({"method": {"name": "jigsaw", "tile_size": 12}}, ("method.tile_size", "do not fit")),
        ({"method": {"name": "relative_position", "patch_size": 9, "gap": 3, "jitter": 1}},
         ("method.patch_size", "does not fit")),
        ({"method": {"name": "relative_position", "gap": 2, "jitter": 1}, "backbone": {"name": "convnet"}},
         ("method.gap", "method.jitter", "0 px apart", ">= 2*jitter + 1 = 3")),
        ({"method": {"name": "relative_position", "gap": 0, "jitter": 2}, "backbone": {"name": "convnet"}},
         ("method.gap", "-4 px apart")),
        ({"method": {"name": "relative_position"}, "backbone": {"name": "resnet18"}},
         ("method.patch_size", "too small")),
        ({"method": {"name": "simclr"}, "data": {"dataset": "digits", "image_size": 4}, "backbone": {"name": "resnet18"}},
         ("data.image_size", "too small")),
        ({"data": {"dataset": "fashion_mnist", "split": "unlabeled"}}, ("data.split",)),
        ({"data": {"dataset": "image_folder", "image_size": 32}}, ("data.path",)),
        ({"data": {"dataset": "image_folder", "path": "../../etc", "image_size": 32}}, ("data.path", "..")),
        ({"data": {"dataset": "cifar10", "path": "x"}}, ("data.path",)),
        ({"method": {"name": "exemplar", "num_classes": 500}, "data": {"subset": 100}}, ("method.num_classes",)),
        ({"optim": {"name": "adam", "lr": 0.001, "nesterov": True}}, ("optim.nesterov",)),
        ({"optim": {"schedule": "step"}}, ("optim.milestones",)),
        ({"epochs": 5, "optim": {"warmup_epochs": 6}}, ("optim.warmup_epochs",)),
        ({"augment": [{"op": "random_resized_crop", "scale": [0.9, 0.1]}]}, ("scale",)),
        ({"augment": [{"op": "posterize"}]}, ("op", "posterize")),
    ],
)
def test_invalid_pretrain_specs_name_the_field(spec: dict, needles: tuple[str, ...]) -> None:
    refused({"method": {"name": "simclr"}, **spec}, *needles)


ROTATION = {"method": {"name": "rotation"}}


@pytest.mark.parametrize(
    "spec,needles",
    [
        ({}, ("method", "Field required")),  # no silent ResNet-18 x 100 epochs of SimCLR
        ({"epochs": 3}, ("method", "Field required")),
        ({**ROTATION, "epochs": "3"}, ("epochs", "valid integer")),
        ({**ROTATION, "epochs": True}, ("epochs", "valid integer")),
        ({**ROTATION, "epochs": 3.0}, ("epochs", "valid integer")),
        ({**ROTATION, "batch_size": "64"}, ("batch_size", "valid integer")),
        ({**ROTATION, "data": {"subset": True}}, ("data.subset", "valid integer")),
        ({**ROTATION, "data": {"channels": True}}, ("data.channels", "valid integer")),
        ({"method": {"name": "moco", "version": True}}, ("method.moco.version", "valid integer")),
        ({"method": {"name": "simclr", "temperature": "0.5"}}, ("method.simclr.temperature", "valid number")),
        ({**ROTATION, "compile": "yes"}, ("compile", "valid boolean")),
        ({**ROTATION, "channels_last": 1}, ("channels_last", "valid boolean")),
        ({**ROTATION, "optim": {"lr": float("nan")}}, ("optim.lr", "must be finite")),
        ({**ROTATION, "optim": {"lr": float("inf")}}, ("optim.lr", "must be finite")),
        ({"method": {"name": "simclr", "temperature": float("-inf")}}, ("method.simclr.temperature", "must be finite")),
        ({**ROTATION, "optim": {"betas": [0.9, float("nan")]}}, ("optim.betas.1", "must be finite")),
        ({**ROTATION, "augment": [{"op": "horizontal_flip"}] * 10_001}, ("augment", "at most 64 items")),
        ({**ROTATION, "eval": {"after": [{"protocol": "knn"}] * 17}}, ("eval.after", "at most 16 items")),
        ({**ROTATION, "optim": {"schedule": "step", "milestones": [1.0] * 33}}, ("optim.milestones", "at most 32")),
        ({"method": {"name": "jigsaw", "permutation_seed": 2**40}}, ("method.jigsaw.permutation_seed",)),
        ({**ROTATION, "data": {"dataset": "image_folder", "path": "x" * 5000, "image_size": 32}}, ("data.path",)),
    ],
)
def test_spec_types_and_sizes_are_exact(spec: dict, needles: tuple[str, ...]) -> None:
    text = refused(spec, *needles)
    assert text.count("\n  ") <= 3  # one error, not one per list item
    if "must be finite" in needles:
        assert "less than or equal" not in text  # NaN is not reported as out of range


def test_exact_types_still_accept_what_a_spec_means() -> None:
    spec = PretrainSpec.model_validate({**ROTATION, "optim": {"lr": 1, "betas": [0, 1]}, "compile": False,
                                        "augment": [{"op": "horizontal_flip"}] * 64})
    assert spec.optim.lr == 1.0 and isinstance(spec.optim.lr, float) and spec.optim.betas == (0.0, 1.0)
    assert PretrainSpec.model_validate_json(spec.model_dump_json()) == spec  # a stored spec reads back


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({}, "weights"),  # none of weights / source_job_id / baseline
        ({"weights": "a.safetensors", "source_job_id": 3}, "weights"),
        ({"baseline": "raw_pixels", "protocol": {"protocol": "finetune"}}, "protocol"),
        ({"weights": "a.safetensors", "backbone": {"name": "convnet"}}, "backbone"),
        ({"weights": "../x.safetensors"}, "weights"),
        ({"baseline": "random_init", "data": {"dataset": "stl10", "train_split": "unlabeled"}}, "train_split"),
        ({"baseline": "random_init", "protocol": {"protocol": "knn", "k": 0}}, "k"),
    ],
)
def test_invalid_evaluate_specs_name_the_field(spec: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        EvaluateSpec.model_validate(spec)
    assert needle in str(info.value)


def test_method_recipes_are_resolved_into_the_stored_spec() -> None:
    v1 = PretrainSpec.model_validate({"method": {"name": "moco", "version": 1}, "epochs": 200})
    assert v1.method.temperature == 0.07 and v1.method.mlp_head is False
    assert v1.optim.schedule == "step" and v1.optim.milestones == [120.0, 160.0]
    assert not any(op.op == "gaussian_blur" for op in v1.augment)
    v2 = PretrainSpec.model_validate({"method": {"name": "moco", "version": 2}, "data": {"dataset": "stl10"}})
    assert v2.method.temperature == 0.2 and v2.method.mlp_head is True
    assert v2.optim.schedule == "cosine" and any(op.op == "gaussian_blur" for op in v2.augment)
    simclr = PretrainSpec.model_validate({"method": {"name": "simclr"}, "batch_size": 512})
    # the paper's square-root lr scaling below batch 4096, linear from there (App. B.1)
    assert simclr.optim.name == "lars" and simclr.optim.lr == pytest.approx(0.075 * 512**0.5)
    for batch, lr in ((128, 0.075 * 128**0.5), (4096, 4.8), (8192, 9.6)):
        spec = PretrainSpec.model_validate({"method": {"name": "simclr"}, "batch_size": batch})
        assert spec.optim.lr == pytest.approx(lr)
    crop = simclr.augment[0]
    assert crop.op == "random_resized_crop" and tuple(crop.scale) == (0.08, 1.0)
    # A stored spec round-trips to the same spec: nothing is re-resolved differently.
    again = PretrainSpec.model_validate(json.loads(simclr.model_dump_json()))
    assert again == simclr
    assert method_label(v1) == "moco_v1" and method_label(simclr) == "simclr"


def test_every_method_exports_a_json_schema_with_defaults() -> None:
    schemas = method_schemas()
    assert set(schemas) == {"rotation", "exemplar", "relative_position", "jigsaw", "simclr", "moco"}
    for name, entry in schemas.items():
        assert entry["schema"]["properties"]["name"]["default"] == name
        assert entry["defaults"]["name"] == name
    assert schemas["moco"]["defaults"]["momentum"] == 0.999
    assert schemas["jigsaw"]["defaults"]["num_permutations"] == 100


def test_parse_job_spec_dispatches_on_kind() -> None:
    assert isinstance(parse_job_spec({"method": {"name": "rotation"}}), PretrainSpec)
    assert isinstance(parse_job_spec({"kind": "evaluate", "baseline": "raw_pixels"}), EvaluateSpec)
    assert set(DATASETS) >= {"fashion_mnist", "digits", "cifar10", "cifar100", "stl10", "image_folder", "synthetic"}


def test_specs_import_without_torch() -> None:
    code = "import sys, ssl_core.specs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
