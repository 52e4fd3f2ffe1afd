"""Suites and sweeps end to end on the embedded server (`pretextlab serve` on SQLite): a 2-variant x
2-seed suite to its table, the leaderboard grouped by variant and by method, cancelling a suite,
and a 4-trial Optuna sweep with a median pruner to its best trial."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import select

from api.db.models import Job
from api.db.sweeps import open_storage
from tests.support.net import wait_for
from tests.support.specs import tiny_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
EVAL_DATA = {"dataset": "synthetic", "image_size": 16, "train_subset": 64, "test_subset": 32}


def base_spec(epochs: int = 1, **over):
    spec = tiny_pretrain(epochs=epochs, **over)
    spec["eval"] = {"data": EVAL_DATA}
    return spec


def wait_suite(c, suite_id: int, statuses: set[str], timeout: float = 200) -> dict:
    def done():
        with c.client() as http:
            s = http.get(f"/v1/suites/{suite_id}").json()
        return s if s["status"] in statuses else None

    return wait_for(done, timeout, f"suite {suite_id} to be {sorted(statuses)}", interval=0.5, on_timeout=c.logs)


def test_suite_table_group_by_and_cancel(make_cluster, sqlite_url):
    c = make_cluster(sqlite_url, None)
    c.serve()
    with c.client() as http:
        body = {"name": "lr", "base": base_spec(), "grid": {"optim.lr": [0.05, 0.1]}, "seeds": [0, 1],
                "evaluations": [{"protocol": "knn", "k": 10}]}
        r = http.post("/v1/suites", json=body, headers={"Idempotency-Key": "suite-e2e-1"})
        assert r.status_code == 201, r.text
        suite = r.json()
        assert suite["total_jobs"] == 8 and suite["counts"] == {"queued": 4}
        # the same key and body: the same suite, no new jobs
        again = http.post("/v1/suites", json=body, headers={"Idempotency-Key": "suite-e2e-1"})
        assert again.status_code == 200 and again.json()["id"] == suite["id"]
    done = wait_suite(c, suite["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["counts"] == {"succeeded": 8}  # 4 pretrainings + their 4 evaluations
    with c.client() as http:
        table = http.get(f"/v1/suites/{suite['id']}/table").json()
        md = http.get(f"/v1/suites/{suite['id']}/table", params={"format": "markdown"}).text
        csv = http.get(f"/v1/suites/{suite['id']}/table", params={"format": "csv"}).text
    assert [row["variant"] for row in table["rows"]] == ["optim.lr=0.05", "optim.lr=0.1"]
    for row in table["rows"]:
        knn = row["results"]["knn"]
        assert knn["count"] == 2 and 0 <= knn["mean"] <= 1 and knn["std"] is not None
        assert row["method"] == "rotation" and row["batch_size"] == 8 and row["epochs"] == 1
        assert row["pretrain"] == {"total": 2, "succeeded": 2}
    assert "| optim.lr=0.05 | rotation | 1 | 8 |" in md and "(n=2)" in md
    assert csv.splitlines()[0].startswith("variant,method,epochs,batch_size,overrides,knn_mean,knn_std,knn_count")

    with c.client() as http:  # the leaderboard: new columns, grouped by variant and by method
        rows = http.get("/v1/results", params={"suite_id": suite["id"]}).json()["items"]
        by_variant = http.get("/v1/results", params={"group_by": "variant"}).json()["groups"]
        by_method = http.get("/v1/results", params={"group_by": "method"}).json()["groups"]
    assert len(rows) == 4 and {r["seed"] for r in rows} == {0, 1} and {r["batch_size"] for r in rows} == {8}
    assert {r["variant"] for r in rows} == {"optim.lr=0.05", "optim.lr=0.1"}
    assert sorted(g["variant"] for g in by_variant) == ["optim.lr=0.05", "optim.lr=0.1"]
    assert all(g["count"] == 2 and g["top1_std"] is not None for g in by_variant)
    assert [(g["method"], g["count"]) for g in by_method] == [("rotation", 4)]
    table_means = sorted(row["results"]["knn"]["mean"] for row in table["rows"])
    assert sorted(g["top1_mean"] for g in by_variant) == pytest.approx(table_means)

    # cancel: the running child checkpoints and stops, the queued ones are cancelled at once
    with c.client() as http:
        r = http.post("/v1/suites", json={"base": base_spec(epochs=200), "grid": {"optim.lr": [0.05, 0.1]}})
        assert r.status_code == 201, r.text
        long_id = r.json()["id"]
        wait_for(lambda: http.get(f"/v1/suites/{long_id}").json()["status"] == "running", 60, "a running child",
                 on_timeout=c.logs)
        assert http.post(f"/v1/suites/{long_id}/cancel").status_code == 200
        assert http.delete(f"/v1/suites/{long_id}").status_code in (204, 409)  # 409 while one still stops
    done = wait_suite(c, long_id, {"cancelled"}, timeout=60)
    assert done["counts"] == {"cancelled": 2} and done["cancel_requested"] is True
    with c.client() as http:
        assert http.delete(f"/v1/suites/{long_id}").status_code in (204, 404)
        assert http.get(f"/v1/suites/{long_id}").status_code == 404
    with c.sessions() as s:
        assert s.scalars(select(Job.id).where(Job.suite_id == long_id)).all() == []


def test_sweep_with_pruner_finds_a_best_trial(make_cluster, sqlite_url):
    # slowed steps: each trial runs across several of the driver's 1 s passes, so it sees them running
    c = make_cluster(sqlite_url, None, test_step_delay="0.1")
    c.serve()
    base = base_spec(epochs=5)
    base["eval"]["monitor"] = {"every_epochs": 1, "train_subset": 32, "test_subset": 16, "k": 5}
    search = {"space": {"optim.lr": {"log_uniform": [0.001, 0.5]}, "optim.momentum": {"choice": [0.0, 0.9]}},
              "trials": 4, "objective": "monitor/knn_top1", "sampler": "tpe",
              "pruner": {"name": "median", "n_startup_trials": 1}, "parallelism": 2, "seed": 3}
    with c.client() as http:
        r = http.post("/v1/suites", json={"name": "sweep", "base": base, "search": search})
        assert r.status_code == 201, r.text
        sweep = r.json()
    assert sweep["search"]["direction"] == "maximize" and sweep["total_jobs"] == 4 * 2  # each trial + its kNN
    done = wait_suite(c, sweep["id"], {"succeeded", "failed", "cancelled"}, timeout=250)
    assert done["status"] == "succeeded", done
    trials = [j for j in done["jobs"] if j["kind"] == "pretrain"]
    assert sorted(j["variant"] for j in trials) == [f"trial {n}" for n in range(4)]
    best = done["best"]
    assert best is not None and best["objective"] == "monitor/knn_top1" and 0 <= best["value"] <= 1
    assert set(best["params"]) == {"optim.lr", "optim.momentum"}
    assert best["spec"]["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])
    assert any(j["id"] == best["job_id"] and j["status"] == "succeeded" for j in trials)
    # pruned trials end cancelled (cooperatively); the others succeeded
    assert {j["status"] for j in trials} <= {"succeeded", "cancelled"}
    with c.client() as http:
        table = http.get(f"/v1/suites/{sweep['id']}/table").json()
    assert len(table["rows"]) == 4 and sum(1 for row in table["rows"] if row.get("best")) == 1
    # the study is in the service's database: every trial told, the monitor's values reported to the pruner
    storage = open_storage(sqlite_url)
    study = optuna.load_study(study_name=f"pretextlab-suite-{sweep['id']}", storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    assert len(states) == 4 and set(states.values()) <= {"COMPLETE", "PRUNED"}
    assert sum(1 for t in study.trials if t.intermediate_values) >= 2
    for t in study.trials:
        job = next(j for j in trials if j["variant"] == f"trial {t.number}")
        assert job["status"] == ("cancelled" if t.state.name == "PRUNED" else "succeeded")
    storage.engine.dispose()
