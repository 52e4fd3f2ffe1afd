"""What a suite request expands to: variants (a grid of dotted paths crossed, an explicit list, or a
preset) x seeds, each child a validated pretraining spec with its evaluations, plus baseline and
supervised-reference evaluations. Pure functions (no SQL); every refusal is a 422 naming the field
and, for a child's own validation error, the variant it came from.
"""

from __future__ import annotations

import itertools
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from api.errors import ApiError, validation_details
from api.schemas import SafeText, Tag
from api.sweep_space import SearchIn, check_search, fail
from ssl_core.specs import (METHOD_NAMES, EvaluateSpec, FinetuneProtocol, PretrainSpec, followup_eval_data, method_label,
                            parse_job_spec, spec_error_path)
from ssl_core.specs.base import MAX_SEED
from ssl_core.specs.overrides import child_spec
from ssl_core.specs.presets import PresetError, build_preset

MAX_GRID_VALUES = 100
MAX_VARIANTS = 1000
MAX_SEEDS = 20
VariantLabel = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=SafeText)]
BASELINES = ("random_init", "raw_pixels")
SUPERVISED = "supervised"


class VariantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: VariantLabel
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted spec path -> value")
    notes: list[Annotated[str, StringConstraints(max_length=500)]] = Field(default_factory=list, max_length=20)


class SuiteCreate(BaseModel):
    """POST /v1/suites: exactly one of ``grid``, ``variants``, ``preset``, ``search``."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(max_length=200, pattern=SafeText)] | None = None
    base: dict[str, Any] = Field(default_factory=dict, description="the pretraining spec every child starts from")
    grid: dict[str, list[Any]] | None = Field(None, description="dotted spec path -> values, crossed")
    variants: list[VariantIn] | None = Field(None, max_length=MAX_GRID_VALUES)
    preset: str | None = Field(None, description="moco_vs_simclr | pretext_tasks")
    scale: Literal["cpu", "gpu"] = "cpu"
    dataset: str | None = Field(None, description="preset only: the dataset (cpu: fashion_mnist, cifar10, cifar100)")
    path: str | None = Field(None, max_length=4096, description="preset, gpu scale: the image folder to train on")
    search: SearchIn | None = None
    seeds: int | list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        1, description="a count (seeds 0..n-1) or the seeds themselves")
    evaluations: list[dict[str, Any]] | None = Field(
        None, description="protocols run after every child (default: the base's eval.after, else kNN)")
    baselines: list[Literal["random_init", "raw_pixels"]] | None = Field(
        None, description="evaluate these baselines on the same protocols (presets: both)")
    supervised: bool | dict[str, Any] = Field(
        False, description="a supervised reference: the backbone trained from random init on the labels "
                           "(fine-tune protocol; a dict sets its fields)")
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    priority: int = Field(0, ge=-1000, le=1000)

    @model_validator(mode="after")
    def _one_source(self) -> "SuiteCreate":
        given = [k for k in ("grid", "variants", "preset", "search") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, variants, preset, search (got {given or 'none'})")
        return self


def _located(err: dict[str, Any], overrides: dict[str, Any], where: str) -> tuple[str, str]:
    """(location, message) of one child validation error: under the override that caused it when
    one did (``grid.method.temperature``), else under the request's ``base``; the caller names the
    variant beside it."""
    parts = spec_error_path(err["loc"].split("."))
    # the method union puts its tag in the location ('method.simclr.temperature'): drop it
    if len(parts) > 1 and parts[0] == "method" and parts[1] in METHOD_NAMES:
        parts = [parts[0], *parts[2:]]
    loc = ".".join(parts)
    unknown = err.get("type") == "extra_forbidden"
    for path in overrides:
        if loc == path or loc.startswith(path + ".") or (unknown and path.startswith(loc + ".")):
            return f"{where}.{path}", ("not a field of the pretraining spec" if unknown else err["msg"])
    # not an override's own field: the base spec's (a check that ties fields together, say)
    return f"base.{loc}" if loc else "base", err["msg"]


def validate_child(spec: dict[str, Any], overrides: dict[str, Any], label: str, where: str) -> PretrainSpec:
    """The child's PretrainSpec, or a 422 naming the field and the variant."""
    try:
        parsed = parse_job_spec(spec)
    except ValidationError as exc:
        details = []
        for d in validation_details(exc.errors()):
            loc, msg = _located(d, overrides, where)
            details.append({"loc": loc, "msg": msg, "type": d.get("type"), "variant": label})
        shown = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
        raise ApiError(422, "invalid_suite", f"variant {label!r}: {shown}", details) from None
    if not isinstance(parsed, PretrainSpec):
        raise fail(f"{where}.kind", "suite children are pretraining jobs", variant=label)
    return parsed


def grid_variants(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if not grid:
        raise fail("grid", "empty: give at least one dotted path with a list of values")
    for path, values in grid.items():
        if not values:
            raise fail(f"grid.{path}", "empty list of values")
        if len(values) > MAX_GRID_VALUES:
            raise fail(f"grid.{path}", f"more than {MAX_GRID_VALUES} values")
    paths = list(grid)
    n = 1
    for p in paths:
        n *= len(grid[p])
    if n > MAX_VARIANTS:
        raise fail("grid", f"{n} variants, more than {MAX_VARIANTS}")
    out = []
    for combo in itertools.product(*(grid[p] for p in paths)):
        overrides = dict(zip(paths, combo))
        label = ",".join(f"{p}={_show(v)}" for p, v in overrides.items())[:200]
        out.append({"label": label, "overrides": overrides, "notes": []})
    return out


def _show(value: Any) -> str:
    """A value as a label shows it: a section that only names something by its name ('simclr')."""
    if isinstance(value, dict) and set(value) == {"name"}:
        return str(value["name"])
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def seeds_of(body: SuiteCreate) -> list[int]:
    seeds = list(range(body.seeds)) if isinstance(body.seeds, int) else list(body.seeds)
    if not 1 <= len(seeds) <= MAX_SEEDS:
        raise fail("seeds", f"between 1 and {MAX_SEEDS} seeds")
    if len(set(seeds)) != len(seeds):
        raise fail("seeds", "repeated seed")
    if not all(0 <= s <= MAX_SEED for s in seeds):
        raise fail("seeds", f"seeds are 0..{MAX_SEED}")
    return seeds


def _protocol_labels(protocols: list[dict[str, Any]]) -> list[str]:
    """'knn', 'linear', ...; a protocol used twice gets '#2' etc."""
    labels: list[str] = []
    for p in protocols:
        name = p.get("protocol", "knn")
        n = sum(1 for q in protocols[: len(labels)] if q.get("protocol", "knn") == name)
        labels.append(name if n == 0 else f"{name}#{n + 1}")
    return labels


def expand(body: SuiteCreate) -> dict[str, Any]:
    """The suite's plan: base, variants (label, overrides, notes, method, epochs, batch_size),
    seeds, protocols, and every child to create (``children``: kind, variant, spec)."""
    base, variants, evaluations, baselines = dict(body.base), None, body.evaluations, body.baselines
    if body.preset is not None:
        try:
            preset = build_preset(body.preset, body.scale, body.dataset, body.path)
        except PresetError as exc:
            raise fail(exc.field, str(exc).split(": ", 1)[1]) from None
        base = _merge(preset["base"], base)
        variants = preset["variants"]
        evaluations = evaluations if evaluations is not None else preset["evaluations"]
        baselines = baselines if baselines is not None else preset["baselines"]
    elif body.grid is not None:
        if "seed" in body.grid:
            raise fail("grid.seed", "seeds are given by 'seeds', not by the grid")
        variants = grid_variants(body.grid)
    elif body.variants is not None:
        if not body.variants:
            raise fail("variants", "empty: give at least one variant")
        labels = [v.label for v in body.variants]
        if len(set(labels)) != len(labels):
            raise fail("variants", "variant labels must be unique")
        variants = [v.model_dump() for v in body.variants]
    for field in ("dataset", "path"):
        if body.preset is None and getattr(body, field) is not None:
            raise fail(field, "only a preset takes this field")
    if evaluations is None:
        evaluations = list((base.get("eval") or {}).get("after") or []) or [{"protocol": "knn"}]
    seeds = seeds_of(body) if body.search is None else [int(base.get("seed", 0))]
    first = validate_child(child_spec(base, {}, seeds[0], evaluations), {}, "base", "base") if body.search else None
    plan: dict[str, Any] = {"base": base, "seeds": seeds, "protocols": _protocol_labels(evaluations),
                            "evaluations": evaluations, "variants": [], "children": []}
    if body.search is not None:
        assert first is not None
        plan["evaluations"] = [p.model_dump(mode="json") for p in first.eval.after]
        plan["search"] = check_search(body.search, base, first, lambda spec, ov, where: validate_child(
            child_spec(spec, ov, seeds[0], evaluations), ov, "search", where))
        plan["variants"].append(_row("trials", {}, [], first))
        return plan
    for i, v in enumerate(variants or []):
        where = "grid" if body.grid is not None else f"variants.{i}"
        first = None
        for seed in seeds:
            spec = validate_child(child_spec(base, v["overrides"], seed, evaluations), v["overrides"], v["label"], where)
            first = first or spec
            plan["children"].append({"variant": v["label"], "spec": spec.model_dump(mode="json")})
        plan["variants"].append(_row(v["label"], v["overrides"], v.get("notes") or [], first))
        plan["evaluations"] = [p.model_dump(mode="json") for p in first.eval.after]  # as stored, defaults filled
    # seed-major: every variant's first seed is queued before any second seed, so a suite stopped
    # half-way has whole seeds to compare
    plan["children"].sort(key=lambda c: seeds.index(c["spec"]["seed"]))
    _add_references(plan, body, baselines or [], plan["evaluations"], seeds)
    return plan


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` with ``b`` laid over it, section by section (a request's ``base`` over a preset's)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _row(label: str, overrides: dict[str, Any], notes: list[str], spec: PretrainSpec | None) -> dict[str, Any]:
    assert spec is not None
    return {"label": label, "overrides": overrides, "notes": notes, "method": method_label(spec),
            "epochs": spec.epochs, "batch_size": spec.batch_size, "backbone": spec.backbone.name,
            "dataset": spec.data.dataset}


def _add_references(plan: dict[str, Any], body: SuiteCreate, baselines: list[str],
                    evaluations: list[dict[str, Any]], seeds: list[int]) -> None:
    """Baseline evaluations on the suite's protocols, and the supervised reference, per seed."""
    if not plan["children"]:
        return
    first = PretrainSpec.model_validate(plan["children"][0]["spec"])
    data = followup_eval_data(first).model_dump(mode="json", exclude_none=True)
    common = {"kind": "evaluate", "data": data, "device": first.device, "precision": first.precision}
    refs: list[tuple[str, str, dict[str, Any]]] = []
    for b in dict.fromkeys(baselines):
        for p in evaluations:
            if b == "raw_pixels" and p.get("protocol") == "finetune":
                continue  # raw pixels have nothing to fine-tune
            extra = {"backbone": first.backbone.model_dump(mode="json")} if b == "random_init" else {}
            refs.append((f"baseline:{b}", b, {**extra, "protocol": p}))
    if body.supervised:
        proto = FinetuneProtocol.model_validate(body.supervised if isinstance(body.supervised, dict) else {})
        refs.append((SUPERVISED, "random_init", {"backbone": first.backbone.model_dump(mode="json"),
                                                 "protocol": proto.model_dump(mode="json")}))
    for label, baseline, extra in refs:
        for seed in seeds:
            try:
                spec = EvaluateSpec.model_validate({**common, "baseline": baseline, "seed": seed, **extra})
            except ValidationError as exc:
                where = "supervised" if label == SUPERVISED else "baselines"
                raise fail(where, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]))
            plan["children"].append({"variant": label, "spec": spec.model_dump(mode="json")})
        if not any(r["label"] == label for r in plan["variants"]):
            plan["variants"].append({"label": label, "overrides": {}, "notes": [], "method": label,
                                     "epochs": None, "batch_size": None, "backbone": first.backbone.name,
                                     "dataset": first.data.dataset, "reference": True})


def job_count(plan: dict[str, Any]) -> int:
    """Jobs the suite creates in all: children, their evaluations, and every sweep trial's."""
    if "search" in plan:
        return plan["search"]["trials"] * (1 + len(plan["evaluations"]))
    return sum(1 + (len(plan["evaluations"]) if c["spec"]["kind"] == "pretrain" else 0) for c in plan["children"])
