"""The sweep driver on both stores (Optuna's RDBStorage in the service's own SQLite or PostgreSQL
database): trials become jobs up to ``parallelism``, monitor values reach the pruner, a pruned
trial's job is cancelled, finished trials are told, the best trial lands on the suite, and a
second driver never drives the same search at once."""

from __future__ import annotations

import optuna
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.db import jobs as job_store
from api.db.metrics import write_metrics
from api.db.models import Job, Suite
from api.db.suites import claim_drive
from api.db.sweeps import delete_study, open_storage
from api.main import create_app
from api.settings import Settings
from tests.support.specs import tiny_pretrain
from worker.sweeps import drive_sweeps

OBJECTIVE = "monitor/knn_top1"


def _submit_search(store) -> int:
    base = tiny_pretrain(epochs=2)
    base["eval"] = {"monitor": {"every_epochs": 1, "train_subset": 32, "test_subset": 16}}
    settings = Settings(database_url=store.url, artifact_root=store.settings.artifact_root, auth="off",
                        broker_url=None, api_tokens=None)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/suites", json={"base": base, "search": {
            "space": {"optim.lr": {"log_uniform": [0.001, 1.0]}}, "trials": 3, "objective": OBJECTIVE,
            "pruner": {"name": "median", "n_startup_trials": 1}, "parallelism": 2}})
        assert r.status_code == 201, r.text
        return r.json()["id"]


def _trials(store, suite_id) -> list[Job]:
    with store.sessions() as s:
        return list(s.scalars(select(Job).where(Job.suite_id == suite_id, Job.kind == "pretrain").order_by(Job.id)))


def _move(store, job_id, to, **values):
    with store.sessions() as s, s.begin():
        current = s.get(Job, job_id).status
        assert job_store.transition(s, job_id, current, to, actor="test", **values)


def _report(store, job_id, values):
    with store.sessions() as s, s.begin():
        write_metrics(s, job_id, [{"name": OBJECTIVE, "step": 4 * (i + 1), "value": v} for i, v in enumerate(values)])


def test_driver_asks_reports_prunes_tells_and_records_the_best(store):
    suite_id = _submit_search(store)
    assert drive_sweeps(store.sessions, store.settings) and len(_trials(store, suite_id)) == 2  # parallelism 2
    first, second = _trials(store, suite_id)
    assert (first.variant, first.trial, second.trial) == ("trial 0", 0, 1)
    _move(store, first.id, "running")
    _report(store, first.id, [0.6, 0.9])
    _move(store, first.id, "succeeded")
    _move(store, second.id, "running")
    drive_sweeps(store.sessions, store.settings)  # trial 0 told 0.9; trial 2 asked (one running, one slot)
    trials = _trials(store, suite_id)
    assert len(trials) == 3
    with store.sessions() as s:
        suite = s.get(Suite, suite_id)
        assert suite.best["trial"] == 0 and suite.best["value"] == 0.9 and suite.best["job_id"] == first.id
        assert suite.best["spec"]["optim"]["lr"] == suite.best["params"]["optim.lr"] and not suite.search_done
    _report(store, second.id, [0.1])  # far below trial 0 at the same step: the median pruner stops it
    drive_sweeps(store.sessions, store.settings)
    with store.sessions() as s:
        assert s.get(Job, second.id).status == "cancelling"  # cooperatively: it checkpoints, then stops
    _move(store, second.id, "cancelled")
    third = trials[2]
    _move(store, third.id, "running")
    _move(store, third.id, "failed", error="boom")
    drive_sweeps(store.sessions, store.settings)
    assert len(_trials(store, suite_id)) == 3  # the budget is 3 trials, pruned and failed ones included
    with store.sessions() as s:
        suite = s.get(Suite, suite_id)
        assert suite.search_done and suite.best["trial"] == 0
    storage = open_storage(store.url)
    study = optuna.load_study(study_name=f"pretextlab-suite-{suite_id}", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert study.trials[0].intermediate_values == {4: 0.6, 8: 0.9} and study.trials[1].intermediate_values == {4: 0.1}
    storage.engine.dispose()
    assert delete_study(store.url, f"pretextlab-suite-{suite_id}")  # what DELETE /v1/suites/{id} calls
    assert not delete_study(store.url, f"pretextlab-suite-{suite_id}")


def test_one_driver_at_a_time(store):
    suite_id = _submit_search(store)
    with store.sessions() as s, s.begin():
        assert claim_drive(s, suite_id, 60)
    assert drive_sweeps(store.sessions, store.settings) == []  # claimed elsewhere: left alone
    assert _trials(store, suite_id) == []
