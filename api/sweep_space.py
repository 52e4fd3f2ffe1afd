"""A sweep's search request: the space (dotted spec paths -> distributions), trials, objective,
direction, sampler, pruner, parallelism -- and its validation (422 naming the field). Torch- and
Optuna-free: the worker's driver (``worker.sweeps``) turns the checked dict into Optuna objects.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from ssl_core.specs import PretrainSpec

MAX_TRIALS = 500
MAX_PARALLELISM = 64
DISTRIBUTIONS = ("uniform", "log_uniform", "int", "log_int", "choice")
PRETEXT_METHODS = ("rotation", "exemplar", "relative_position", "jigsaw")
# What a pretraining job reports that a search may optimise: the metric names of ssl_core.train,
# and ``eval/top1``, the top-1 of the first evaluation after the trial.
OBJECTIVES = ("monitor/knn_top1", "epoch/loss", "train/loss", "train/pretext_acc", "eval/top1")


class PrunerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0, le=MAX_TRIALS, description="median: trials completed before pruning")
    n_warmup_steps: int = Field(0, ge=0, description="median: steps of a trial before it may be pruned")


class SearchIn(BaseModel):
    """``{"space": {"optim.lr": {"log_uniform": [0.01, 3]}, "method.temperature": {"choice": [0.1, 0.5]}},
    "trials": 20, "objective": "monitor/knn_top1", "direction": "maximize", "sampler": "tpe",
    "pruner": "median", "parallelism": 2}``"""

    model_config = ConfigDict(extra="forbid")
    space: dict[str, dict[str, Any]]
    trials: int = Field(ge=1, le=MAX_TRIALS)
    objective: str = "monitor/knn_top1"
    direction: Literal["maximize", "minimize"] | None = Field(None, description="None: minimize losses, else maximize")
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] | PrunerIn = "median"
    parallelism: int = Field(1, ge=1, le=MAX_PARALLELISM, description="trials running at once")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the sampler's seed")


def fail(loc: str, msg: str, **extra: Any) -> ApiError:
    """422 ``invalid_suite`` naming the request field (suites and sweeps alike)."""
    return ApiError(422, "invalid_suite", f"{loc}: {msg}", [{"loc": loc, "msg": msg, **extra}])


def _check_distribution(path: str, dist: dict[str, Any]) -> tuple[str, Any]:
    loc = f"search.space.{path}"
    if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise fail(loc, f"one of {list(DISTRIBUTIONS)} with its values, e.g. {{\"log_uniform\": [0.01, 3]}}")
    kind, values = next(iter(dist.items()))
    loc = f"{loc}.{kind}"
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise fail(loc, "a non-empty list of values")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise fail(loc, "choices are numbers, strings, booleans or null")
        return kind, values
    if not (isinstance(values, list) and len(values) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise fail(loc, "[low, high]")
    low, high = values
    if kind in ("int", "log_int") and not all(isinstance(v, int) for v in values):
        raise fail(loc, "integer bounds")
    if low >= high:
        raise fail(loc, f"inverted or empty bounds: low {low} >= high {high}")
    if kind.startswith("log") and low <= 0:
        raise fail(loc, f"a log scale needs low > 0 (got {low})")
    return kind, [low, high]


def _check_objective(search: SearchIn, spec: PretrainSpec) -> str:
    obj = search.objective
    if obj not in OBJECTIVES:
        raise fail("search.objective", f"{obj!r} is not a metric the jobs report (one of {list(OBJECTIVES)})")
    if obj == "monitor/knn_top1" and not spec.eval.monitor.every_epochs:
        raise fail("search.objective", "monitor/knn_top1 is only reported with base.eval.monitor.every_epochs > 0")
    if obj == "train/pretext_acc" and spec.method.name not in PRETEXT_METHODS:
        raise fail("search.objective", f"train/pretext_acc is reported by {list(PRETEXT_METHODS)}, "
                                       f"not {spec.method.name}")
    if obj == "eval/top1" and not spec.eval.after:
        raise fail("search.objective", "eval/top1 needs an evaluation after each trial (evaluations)")
    return search.direction or ("minimize" if obj.endswith("loss") else "maximize")


Validate = Callable[[dict[str, Any], dict[str, Any], str], PretrainSpec]


def check_search(search: SearchIn, base: dict[str, Any], spec: PretrainSpec, validate: Validate) -> dict[str, Any]:
    """The search as stored (``plan['search']``), or a 422. Each path is tried at both ends of its
    range (every choice), so a trial's spec is valid wherever the sampler lands -- unknown paths
    and values the spec refuses are caught here, under ``search.space.<path>``."""
    if not search.space:
        raise fail("search.space", "empty: give at least one dotted spec path")
    space = {}
    for path, dist in search.space.items():
        if path == "seed":
            raise fail("search.space.seed", "the seed is not a hyperparameter")
        kind, values = _check_distribution(path, dist)
        for v in values:
            validate(base, {path: v}, "search.space")
        space[path] = {kind: values}
    direction = _check_objective(search, spec)
    pruner = search.pruner if isinstance(search.pruner, PrunerIn) else PrunerIn(name=search.pruner)
    return {"space": space, "trials": search.trials, "objective": search.objective, "direction": direction,
            "sampler": search.sampler, "pruner": pruner.model_dump(), "parallelism": search.parallelism,
            "seed": search.seed}
