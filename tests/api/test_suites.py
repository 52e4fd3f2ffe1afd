"""POST/GET /v1/suites on both stores: expansion (grid, variants, presets, seeds, baselines), bad
input (422 naming the field and the variant), the job limit, Idempotency-Key, owners, cancel, the
table filling in as children finish, and delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_helpers import PRETRAIN
from sqlalchemy import select

from api.db import jobs as job_store
from api.db.jobs import create_job
from api.db.models import Job
from api.main import create_app
from fastapi.testclient import TestClient

BASE = {**PRETRAIN, "method": {"name": "rotation"}}


def post(client, body, status=201, **headers):
    r = client.post("/v1/suites", json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


def children(db, suite_id):
    with db() as s:
        return list(s.scalars(select(Job).where(Job.suite_id == suite_id).order_by(Job.id)))


def test_grid_crossed_times_seeds_with_baselines(client, db):
    suite = post(client, {"name": "g", "base": BASE, "grid": {"optim.lr": [0.1, 0.2], "batch_size": [8, 16]},
                          "seeds": [3, 4], "baselines": ["random_init", "raw_pixels"],
                          "evaluations": [{"protocol": "knn"}, {"protocol": "linear", "epochs": 2}]})
    labels = [v["label"] for v in suite["variants"]]
    assert labels == ["optim.lr=0.1,batch_size=8", "optim.lr=0.1,batch_size=16", "optim.lr=0.2,batch_size=8",
                      "optim.lr=0.2,batch_size=16", "baseline:random_init", "baseline:raw_pixels"]
    assert suite["protocols"] == ["knn", "linear"] and suite["seeds"] == [3, 4] and suite["status"] == "queued"
    jobs = children(db, suite["id"])
    pre = [j for j in jobs if j.kind == "pretrain"]
    assert len(pre) == 8 and {(j.spec["seed"], j.spec["batch_size"]) for j in pre} == {(s, b) for s in (3, 4)
                                                                                      for b in (8, 16)}
    assert all(len(j.spec["eval"]["after"]) == 2 and j.followups == 2 for j in pre)
    shown = client.get(f"/v1/jobs/{pre[0].id}").json()
    assert (shown["suite_id"], shown["variant"]) == (suite["id"], pre[0].variant)
    refs = [j for j in jobs if j.kind == "evaluate"]  # 2 baselines x 2 protocols x 2 seeds
    assert len(refs) == 8 and {j.variant for j in refs} == {"baseline:random_init", "baseline:raw_pixels"}
    assert suite["total_jobs"] == 8 * 3 + 8


def test_explicit_variants_and_a_preset(client, db):
    suite = post(client, {"base": BASE, "variants": [
        {"label": "small", "overrides": {"batch_size": 8}, "notes": ["a note"]},
        {"label": "large", "overrides": {"batch_size": 32}}]})
    assert [(v["label"], v["batch_size"], v["notes"]) for v in suite["variants"]] == [
        ("small", 8, ["a note"]), ("large", 32, [])]
    preset = post(client, {"preset": "moco_vs_simclr", "scale": "cpu", "seeds": 2})
    rows = {v["label"]: v for v in preset["variants"]}
    assert list(rows)[:4] == ["moco_v1 bs256", "simclr bs256", "moco_v2 bs256", "simclr bs1024"]
    assert {rows[k]["epochs"] for k in list(rows)[:4]} == {10}
    assert any("queue 12544 (paper 65536)" in n for n in rows["moco_v1 bs256"]["notes"])
    pre = [j for j in children(db, preset["id"]) if j.kind == "pretrain"]
    moco_v1 = next(j for j in pre if j.variant == "moco_v1 bs256")
    assert moco_v1.spec["method"]["momentum"] == 0.999 and moco_v1.spec["method"]["temperature"] == 0.07
    assert moco_v1.spec["optim"]["lr"] == pytest.approx(0.03) and moco_v1.spec["optim"]["schedule"] == "step"
    big = next(j for j in pre if j.variant == "simclr bs1024")
    assert big.spec["optim"]["name"] == "lars" and big.spec["optim"]["lr"] == pytest.approx(0.075 * 1024 ** 0.5)
    # first seed of every row before any second seed; the baselines ahead of the pretrainings
    assert [j.spec["seed"] for j in pre] == [0, 0, 0, 0, 1, 1, 1, 1]
    refs = [j for j in children(db, preset["id"]) if j.kind == "evaluate"]
    assert refs and all(r.priority == pre[0].priority + 1 for r in refs)


def test_gpu_and_pretext_presets(client, db):
    gpu = post(client, {"preset": "moco_vs_simclr", "scale": "gpu", "path": "imagenet/train"})
    pre = {j.variant: j.spec for j in children(db, gpu["id"]) if j.kind == "pretrain"}
    assert set(pre) == {"moco_v1 bs256", "simclr bs256", "moco_v2 bs256", "simclr bs8192"}
    assert {(s["epochs"], s["backbone"]["name"], s["data"]["image_size"], s["resources"]["gpus"]) for s in pre.values()} \
        == {(200, "resnet50", 224, 8)}
    assert pre["simclr bs8192"]["optim"]["lr"] == pytest.approx(9.6) and pre["moco_v2 bs256"]["method"]["queue_size"] == 65536
    pretext = post(client, {"preset": "pretext_tasks", "supervised": {"epochs": 3}})
    assert [v["label"] for v in pretext["variants"]] == ["rotation", "exemplar", "relative_position", "jigsaw",
                                                         "baseline:random_init", "baseline:raw_pixels", "supervised"]
    table = client.get(f"/v1/suites/{pretext['id']}/table").json()
    assert table["protocols"] == ["knn", "linear", "finetune"]  # the supervised reference's column
    sup = [j for j in children(db, pretext["id"]) if j.variant == "supervised"]
    assert sup and all(j.spec["baseline"] == "random_init" and j.spec["protocol"]["epochs"] == 3 for j in sup)


@pytest.mark.parametrize("body, loc", [
    ({"preset": "nope"}, "preset"),
    ({"base": BASE, "grid": {}}, "grid"),
    ({"base": BASE, "grid": {"optim.lr": []}}, "grid.optim.lr"),
    ({"base": BASE, "grid": {"method.temperatur": [0.1]}}, "grid.method.temperatur"),
    ({"base": BASE, "grid": {"seed": [1, 2]}}, "grid.seed"),
    ({"base": {**BASE, "epochs": 0}, "grid": {"optim.lr": [0.1]}}, "base.epochs"),
    ({"base": {**BASE, "epochs": 0}, "search": {"space": {"optim.lr": {"uniform": [0.1, 1]}}, "trials": 2,
                                                "objective": "train/loss"}}, "base.epochs"),
    ({"base": BASE, "variants": [{"label": "bad", "overrides": {"batch_size": 1}}]}, "variants.0.batch_size"),
    ({"base": BASE, "variants": [{"label": "x", "overrides": {}}, {"label": "x", "overrides": {}}]}, "variants"),
    ({"base": BASE, "grid": {"epochs": [1]}, "seeds": [1, 1]}, "seeds"),
    ({"base": BASE, "grid": {"epochs": [1]}, "dataset": "cifar10"}, "dataset"),
    ({"preset": "moco_vs_simclr", "scale": "gpu"}, "path"),
    ({"preset": "moco_vs_simclr", "dataset": "stl10"}, "dataset"),
    ({"base": BASE, "search": {"space": {"optim.lr": {"log_uniform": [3, 0.1]}}, "trials": 4,
                               "objective": "train/loss"}}, "search.space.optim.lr.log_uniform"),
    ({"base": BASE, "search": {"space": {"optim.lr": {"log_uniform": [0, 1]}}, "trials": 4,
                               "objective": "train/loss"}}, "search.space.optim.lr.log_uniform"),
    ({"base": BASE, "search": {"space": {"optim.lrr": {"uniform": [0.1, 1]}}, "trials": 4,
                               "objective": "train/loss"}}, "search.space.optim.lrr"),
    ({"base": BASE, "search": {"space": {}, "trials": 4, "objective": "train/loss"}}, "search.space"),
    ({"base": BASE, "search": {"space": {"optim.lr": {"uniform": [0.1, 1]}}, "trials": 4,
                               "objective": "eval/top5"}}, "search.objective"),
    ({"base": BASE, "search": {"space": {"optim.lr": {"uniform": [0.1, 1]}}, "trials": 4}}, "search.objective"),
])
def test_bad_input_names_the_field(client, body, loc):
    r = client.post("/v1/suites", json=body)
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["error"]["details"]]
    assert loc in locs, r.json()
    assert loc in r.json()["error"]["message"]


def test_child_error_names_the_variant(client):
    r = client.post("/v1/suites", json={"base": BASE, "grid": {"optim.lr": [0.1], "optim.warmup_epochs": [0, 5]}})
    assert r.status_code == 422
    err = r.json()["error"]
    assert "optim.lr=0.1,optim.warmup_epochs=5" in err["message"]
    assert err["details"][0]["variant"] == "optim.lr=0.1,optim.warmup_epochs=5"


def test_no_source_or_two_sources_is_422(client):
    for body in ({"base": BASE}, {"base": BASE, "grid": {"epochs": [1]}, "preset": "pretext_tasks"}):
        assert client.post("/v1/suites", json=body).status_code == 422


def test_job_limit(make_settings, database_url, db):
    settings = make_settings(database_url, max_suite_jobs=5)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/suites", json={"base": BASE, "grid": {"epochs": [1, 2, 3]}, "seeds": 2})
        assert r.status_code == 422
        assert "PRETEXTLAB_MAX_SUITE_JOBS" in r.json()["error"]["message"] and "12 jobs" in r.json()["error"]["message"]
        post(client, {"base": BASE, "grid": {"epochs": [1, 2]}, "evaluations": [{"protocol": "knn"}]})


def test_idempotency_key(client, db):
    body = {"base": BASE, "grid": {"epochs": [1, 2]}}
    first = post(client, body, **{"Idempotency-Key": "k1"})
    r = client.post("/v1/suites", json=body, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 200 and r.json()["id"] == first["id"]
    assert len(children(db, first["id"])) == 2
    assert client.post("/v1/suites", json={**body, "seeds": 2}, headers={"Idempotency-Key": "k1"}).status_code == 409
    assert client.post("/v1/suites", json=body, headers={"Idempotency-Key": "pretextlab:x"}).status_code == 422


def _finish(db, job_id, **values):
    with db() as s, s.begin():
        status = s.get(Job, job_id).status
        assert job_store.transition(s, job_id, status, values.pop("status", "succeeded"), actor="test", **values)


def test_table_fills_in_and_cancel_and_delete(client, db):
    suite = post(client, {"base": BASE, "grid": {"optim.lr": [0.1, 0.2]}, "seeds": 2, "baselines": ["raw_pixels"]})
    table = client.get(f"/v1/suites/{suite['id']}/table").json()
    assert [r["variant"] for r in table["rows"]] == ["optim.lr=0.1", "optim.lr=0.2", "baseline:raw_pixels"]
    assert all(r["results"]["knn"] == {"mean": None, "std": None, "count": 0, "values": []} for r in table["rows"])
    jobs = children(db, suite["id"])
    first = [j for j in jobs if j.variant == "optim.lr=0.1"]
    for j, top1 in zip(first, (0.5, 0.7)):  # the pretraining succeeded and its evaluation too
        _finish(db, j.id)
        with db() as s, s.begin():
            ev = create_job(s, {"kind": "evaluate", "source_job_id": j.id, "protocol": j.spec["eval"]["after"][0]},
                            max_attempts=3, suite_id=suite["id"], variant=j.variant)
            ev_id = ev.id
        _finish(db, ev_id, top1=top1)
    table = client.get(f"/v1/suites/{suite['id']}/table").json()
    knn = table["rows"][0]["results"]["knn"]
    assert knn["count"] == 2 and knn["mean"] == pytest.approx(0.6) and knn["std"] == pytest.approx(0.1414, abs=1e-3)
    assert table["rows"][1]["results"]["knn"]["count"] == 0 and table["status"] == "running"
    md = client.get(f"/v1/suites/{suite['id']}/table", params={"format": "markdown"}).text
    assert "| optim.lr=0.1 | rotation | 1 | 16 | 60.0 ± 14.1 (n=2) |" in md

    assert client.delete(f"/v1/suites/{suite['id']}").status_code == 409  # children still queued
    r = client.post(f"/v1/suites/{suite['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["cancel_requested"]
    statuses = {j.id: j.status for j in children(db, suite["id"])}
    assert sorted(set(statuses.values())) == ["cancelled", "succeeded"]
    listed = client.get("/v1/suites").json()["items"]
    assert [s["id"] for s in listed] == [suite["id"]] and listed[0]["status"] == "cancelled"
    assert client.post(f"/v1/suites/{suite['id']}/cancel").status_code == 409  # already cancelled
    assert client.delete(f"/v1/suites/{suite['id']}").status_code == 204
    assert children(db, suite["id"]) == [] and client.get(f"/v1/suites/{suite['id']}").status_code == 404


def test_owners_see_their_own_suites(make_settings, database_url, settings):
    from api.db.session import make_engine, session_factory
    from api.db.tokens import create_token

    secured = make_settings(database_url, auth="on", api_tokens="a" * 40)
    engine = make_engine(database_url)
    with session_factory(engine)() as s, s.begin():
        alice = create_token(s, "alice", admin=False)
        bob = create_token(s, "bob", admin=False)
    engine.dispose()
    with TestClient(create_app(secured)) as client:
        mine = client.post("/v1/suites", json={"base": BASE, "grid": {"epochs": [1]}},
                           headers={"Authorization": f"Bearer {alice}"})
        assert mine.status_code == 201, mine.text
        sid = mine.json()["id"]
        as_bob = {"Authorization": f"Bearer {bob}"}
        assert client.get(f"/v1/suites/{sid}", headers=as_bob).status_code == 404
        assert client.post(f"/v1/suites/{sid}/cancel", headers=as_bob).status_code == 404
        assert client.get("/v1/suites", headers=as_bob).json()["items"] == []


@pytest.mark.parametrize("name", ["simclr_temperature.json", "simclr_sweep.json"])
def test_example_suite_files_are_accepted(client, name):
    path = Path(__file__).resolve().parents[2] / "examples" / "suites" / name
    suite = post(client, json.loads(path.read_text()))
    assert suite["status"] == "queued" and suite["total_jobs"] > 0
