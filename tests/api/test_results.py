"""GET /v1/results: succeeded evaluations joined to their pretraining, best first."""

from __future__ import annotations

from api.db.jobs import transition
from api_helpers import PRETRAIN, submit

EVAL = {"kind": "evaluate", "data": {"dataset": "synthetic"}}


def _finish(db, job_id, **values):
    with db() as s:
        assert transition(s, job_id, "queued", "running")
        assert transition(s, job_id, "running", "succeeded", **values)
        s.commit()


def test_leaderboard(client, db):
    simclr = submit(client, {**PRETRAIN, "epochs": 3})["id"]
    rot = submit(client, {**PRETRAIN, "method": {"name": "rotation"}, "epochs": 2})["id"]
    e1 = submit(client, {**EVAL, "source_job_id": simclr})["id"]
    e2 = submit(client, {**EVAL, "source_job_id": rot})["id"]
    e3 = submit(client, {**EVAL, "source_job_id": rot, "protocol": {"protocol": "linear", "epochs": 1}})["id"]
    base = submit(client, {**EVAL, "baseline": "random_init"})["id"]
    pending = submit(client, {**EVAL, "source_job_id": simclr})["id"]  # not finished: not listed
    _finish(db, e1, top1=0.61, top5=0.95, result={"top1": 0.61, "top5": 0.95})
    _finish(db, e2, top1=0.72, top5=0.97, result={"top1": 0.72})
    _finish(db, e3, top1=0.80, result={"top1": 0.80})
    _finish(db, base, top1=0.30, result={"top1": 0.30, "method": "random_init", "backbone": "resnet18"})
    knn = client.get("/v1/results", params={"dataset": "synthetic", "protocol": "knn"}).json()["items"]
    assert [r["evaluation_job_id"] for r in knn] == [e2, e1, base]
    assert knn[0] == {**knn[0], "pretrain_job_id": rot, "method": "rotation", "backbone": "convnet", "epochs": 2,
                      "top1": 0.72, "top5": 0.97, "protocol": "knn", "dataset": "synthetic"}
    assert knn[1]["method"] == "simclr" and knn[1]["epochs"] == 3
    assert knn[2]["pretrain_job_id"] is None and knn[2]["method"] == "baseline:random_init"
    everything = client.get("/v1/results").json()["items"]
    assert [r["evaluation_job_id"] for r in everything] == [e3, e2, e1, base] and pending not in everything
    assert client.get("/v1/results", params={"dataset": "cifar10"}).json()["items"] == []
