"""Evaluating intermediate layers end to end: `pretextlab serve` runs a pretraining whose ``eval.after``
asks for per-layer probes; the follow-up evaluation reports every layer and the leaderboard lists a row
per layer."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from api.db.models import Job
from tests.support.net import wait_for
from tests.support.specs import tiny_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
EVAL_DATA = {"dataset": "synthetic", "train_subset": 32, "test_subset": 16}


def test_eval_after_layers_through_the_embedded_server(make_cluster, sqlite_url):
    c = make_cluster(sqlite_url, None)
    c.serve()
    spec = tiny_pretrain(epochs=1, eval={"after": [{"protocol": "knn", "k": 5}], "data": EVAL_DATA,
                                         "layers": ["block2", "pool"]})
    jid = c.submit(spec)
    c.wait_status(jid, "succeeded")
    with c.sessions() as s:
        child = s.scalar(select(Job.id).where(Job.parent_job_id == jid))
    done = c.wait_status(child, "succeeded")
    assert done["spec"]["layers"] == ["block2", "pool"]
    result = done["result"]
    assert result["layer"] == "pool" and list(result["layers"]) == ["block2", "pool"]
    assert result["layers"]["block2"]["feature_dim"] == 8 * 8 * 8  # 8 channels at 8 px: every cell kept
    assert result["top1"] == result["layers"]["pool"]["top1"]
    with c.client() as http:
        rows = wait_for(lambda: http.get("/v1/results").json()["items"], 30, "the leaderboard rows")
        assert sorted(r["layer"] for r in rows if r["evaluation_job_id"] == child) == ["block2", "pool"]
        names = http.get(f"/v1/jobs/{child}/metrics").json()["names"]
        assert {"eval/top1", "eval/block2/top1", "eval/pool/top1"} <= set(names)
