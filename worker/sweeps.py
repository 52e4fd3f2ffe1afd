"""The sweep driver: runs Optuna's ask-and-tell for every open search, one pass per reconciler tick.

Each trial is an ordinary pretraining job of the suite (``variant`` "trial N", ``trial`` N). A pass:

1. for each running trial, reports the objective's new points (``monitor/knn_top1`` once per
   monitor epoch, a loss per logged step) as intermediate values, and asks the pruner; a pruned
   trial's job is cancelled the usual way (the worker checkpoints, then ``cancelled``) and the trial
   is told PRUNED at once;
2. tells finished trials: the objective's last value (``eval/top1``: the top-1 of the first
   evaluation after the trial, once it has finished), or FAIL for a failed or cancelled job;
3. asks new trials while fewer than ``parallelism`` run and fewer than ``trials`` were asked (none
   after a cancel), each a job created in one transaction;
4. records the best trial (number, value, params, job, spec) on the suite, and ends the search when
   every trial is told and no child is active.

The study lives in the service's database (``api.db.sweeps.open_storage``), so a restarted
process carries on where the last pass stopped. Optuna is imported only when a search is open.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.db.clock import as_utc, utcnow
from api.db.jobs import create_job, request_cancel
from api.db.models import ACTIVE_STATUSES, Job
from api.db.suites import children, claim_drive, get_suite, metric_points, open_searches, save_search_state
from api.db.sweeps import open_storage
from api.settings import Settings
from ssl_core.specs.overrides import child_spec

log = logging.getLogger("pretextlab.sweeps")
ACTOR = "sweep"
# A trial asked but without a job this long after (the process died between the two): failed.
ORPHAN_TRIAL_S = 120.0
# One driver per search at a time: a pass claims the suite for this long (a pass takes well under it).
DRIVE_HOLD_S = 60.0
_STORAGES: dict[str, Any] = {}


def _storage(url: str) -> Any:
    if url not in _STORAGES:
        import optuna

        # each pass reloads the study: Optuna's INFO line for that would repeat every reconcile period
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _STORAGES[url] = open_storage(url)
    return _STORAGES[url]


def drive_sweeps(sessions: sessionmaker[Session], settings: Settings) -> list[int]:
    """One pass over every open search; returns the ids of the trial jobs it created (to dispatch)."""
    with sessions() as s:
        open_ids = [x.id for x in open_searches(s)]
    created: list[int] = []
    for suite_id in open_ids:
        with sessions() as s, s.begin():
            mine = claim_drive(s, suite_id, DRIVE_HOLD_S)
        if not mine:  # another reconciler (serve and a beat, say) is driving it this moment
            continue
        try:
            created += _drive_one(sessions, settings, suite_id)
        except Exception:
            log.exception("suite %s: sweep pass failed (tried again next pass)", suite_id)
    return created


def _sampler(search: dict[str, Any], asked: int) -> Any:
    import optuna

    # A sampler's random state lives in this process only and each pass builds a new one: seeding it
    # with the number of trials asked so far keeps a search reproducible without repeating draws.
    seed = (search.get("seed", 0) * 1_000_003 + asked) % 2**32
    if search["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(search: dict[str, Any]) -> Any:
    import optuna

    p = search["pruner"]
    if p["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p["n_startup_trials"], n_warmup_steps=p["n_warmup_steps"])
    if p["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def _drive_one(sessions: sessionmaker[Session], settings: Settings, suite_id: int) -> list[int]:
    import optuna

    with sessions() as s:
        suite = get_suite(s, suite_id)
        plan, study_name, cancelled = suite.plan, suite.study_name, bool(suite.cancel_requested)
        jobs = children(s, suite_id)
        s.expunge_all()
    search = plan["search"]
    study = optuna.create_study(study_name=study_name, storage=_storage(settings.database_url),
                                direction=search["direction"], pruner=_pruner(search), load_if_exists=True)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    study.sampler = _sampler(search, len(trials))
    by_trial = {j.trial: j for j in jobs if j.kind == "pretrain" and j.trial is not None}
    evals = {j.parent_job_id: j for j in sorted(jobs, key=lambda j: -j.id) if j.kind == "evaluate"}
    for number, t in trials.items():
        if t.state == optuna.trial.TrialState.RUNNING:
            _advance(sessions, study, t, by_trial.get(number), evals, search)
    running = sum(1 for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING)
    created: list[int] = []
    while not cancelled and len(trials) + len(created) < search["trials"] and running < search["parallelism"]:
        job_id = _ask(sessions, settings, study, plan, suite_id)
        if job_id is not None:
            created.append(job_id)
            running += 1
    _conclude(sessions, study, suite_id, search, cancelled)
    return created


def _advance(sessions: sessionmaker[Session], study: Any, t: Any, job: Job | None, evals: dict[int | None, Job],
             search: dict[str, Any]) -> None:
    """Report, prune or tell one running trial."""
    import optuna

    if job is None:  # asked, but its job was never created (the process died in between)
        if (utcnow() - as_utc(t.datetime_start)) > timedelta(seconds=ORPHAN_TRIAL_S):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        return
    objective = search["objective"]
    fresh: list[tuple[int, float]] = []
    if objective != "eval/top1" and job.status in ("running", "cancelling", "succeeded"):
        # every point reaches the study, also those logged between two passes or after the last one:
        # the pruner compares a running trial with the finished trials' values at the same step
        trial = optuna.trial.Trial(study, t._trial_id)  # noqa: SLF001 - FrozenTrial's id is how a Trial is reopened
        with sessions() as s:
            points = metric_points(s, job.id, objective)
        fresh = [(step, v) for step, v in points if step not in t.intermediate_values]
        for step, value in fresh:
            trial.report(value, step)
    if job.status in ACTIVE_STATUSES:
        if fresh and job.status == "running" and trial.should_prune():
            with sessions() as s, s.begin():
                request_cancel(s, job.id, actor=ACTOR,
                               reason=f"pruned by the sweep's {search['pruner']['name']} pruner at step {fresh[-1][0]}")
            study.tell(t.number, state=optuna.trial.TrialState.PRUNED)
            log.info("sweep %s: trial %s (job %s) pruned at step %s", study.study_name, t.number, job.id, fresh[-1][0])
        return
    value = _objective_value(sessions, job, evals, objective)
    if value == "wait":
        return
    if value is None:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(t.number, float(value))


def _objective_value(sessions: sessionmaker[Session], job: Job, evals: dict[int | None, Job],
                     objective: str) -> float | str | None:
    """The finished trial's value; 'wait' while its evaluation runs; None when it has none."""
    if job.status != "succeeded":
        return None
    if objective == "eval/top1":
        ev = evals.get(job.id)
        if ev is None or ev.status in ACTIVE_STATUSES:
            return "wait"
        return ev.top1 if ev.status == "succeeded" else None
    with sessions() as s:
        points = metric_points(s, job.id, objective)
    if points:
        return points[-1][1]
    final = ((job.result or {}).get("metrics") or {}).get(objective)
    return float(final) if final is not None else None


def _suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for path, dist in space.items():
        kind, values = next(iter(dist.items()))
        if kind == "choice":
            params[path] = trial.suggest_categorical(path, values)
        elif kind in ("int", "log_int"):
            params[path] = trial.suggest_int(path, values[0], values[1], log=kind == "log_int")
        else:
            params[path] = trial.suggest_float(path, values[0], values[1], log=kind == "log_uniform")
    return params


def _ask(sessions: sessionmaker[Session], settings: Settings, study: Any, plan: dict[str, Any],
         suite_id: int) -> int | None:
    """A new trial and its job; a trial whose job cannot be created is told FAIL."""
    import optuna

    trial = study.ask()
    try:
        params = _suggest(trial, plan["search"]["space"])
        spec = child_spec(plan["base"], params, plan["seeds"][0], plan["evaluations"])
        with sessions() as s, s.begin():
            suite = get_suite(s, suite_id)
            job = create_job(s, spec, name=f"{suite.name or f'suite {suite_id}'} / trial {trial.number}",
                             tags=list(suite.request.get("tags") or []), priority=int(suite.request.get("priority") or 0),
                             idempotency_key=f"pretextlab:suite:{suite_id}:trial:{trial.number}",
                             max_attempts=settings.max_attempts, actor=ACTOR, created_by=suite.created_by,
                             suite_id=suite_id, variant=f"trial {trial.number}", trial=trial.number)
            job_id = job.id
    except Exception:
        log.exception("sweep %s: trial %s could not be created; told FAIL", study.study_name, trial.number)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    log.info("sweep %s: trial %s is job %s: %s", study.study_name, trial.number, job_id, params)
    return job_id


def _conclude(sessions: sessionmaker[Session], study: Any, suite_id: int, search: dict[str, Any],
              cancelled: bool) -> None:
    """Record the best trial so far; end the search once every trial is told and nothing runs."""
    import optuna

    frozen = study.get_trials(deepcopy=False)
    complete = [t for t in frozen if t.state == optuna.trial.TrialState.COMPLETE]
    best = None
    with sessions() as s, s.begin():
        jobs = children(s, suite_id)
        if complete:
            bt = study.best_trial
            job = next((j for j in jobs if j.kind == "pretrain" and j.trial == bt.number), None)
            best = {"trial": bt.number, "value": bt.value, "params": bt.params, "objective": search["objective"],
                    "direction": search["direction"], "job_id": job.id if job else None,
                    "spec": job.spec if job else None}
        told_all = all(t.state != optuna.trial.TrialState.RUNNING for t in frozen)
        asked_all = cancelled or len(frozen) >= search["trials"]
        idle = not any(j.status in ACTIVE_STATUSES for j in jobs)
        save_search_state(s, suite_id, best=best, done=told_all and asked_all and idle)
