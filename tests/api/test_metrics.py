"""Metrics: batched upserts (one value per job, name, step) and bounded, downsampled reads."""

from __future__ import annotations

import math

from sqlalchemy import func, select

from api.db.metrics import write_metrics
from api.db.models import Metric
from api_helpers import submit


def _load(db, job_id, name, steps, value=lambda s: float(s)):
    with db() as s:
        write_metrics(s, job_id, [{"name": name, "step": st, "value": value(st), "epoch": st // 100}
                                       for st in steps])
        s.commit()


def test_names_and_full_series_when_small(client, db):
    job = submit(client)["id"]
    _load(db, job, "train/loss", range(0, 50, 5))
    _load(db, job, "train/lr", range(3))
    assert client.get(f"/v1/jobs/{job}/metrics").json() == {"job_id": job, "names": ["train/loss", "train/lr"]}
    body = client.get(f"/v1/jobs/{job}/metrics", params={"name": "train/loss"}).json()
    assert [p["step"] for p in body["points"]] == list(range(0, 50, 5)) and body["downsampled"] is False
    assert body["points"][3] == {"step": 15, "value": 15.0, "epoch": 0}
    rng = client.get(f"/v1/jobs/{job}/metrics", params={"name": "train/loss", "start_step": 12, "end_step": 30})
    assert [p["step"] for p in rng.json()["points"]] == [15, 20, 25, 30]
    assert client.get(f"/v1/jobs/{job}/metrics", params={"name": "nope"}).json()["points"] == []


def test_downsampling_keeps_first_and_last_and_bounds_count(client, db):
    job = submit(client)["id"]
    steps = list(range(3, 20_000, 3)) + [20_011]  # uneven end
    _load(db, job, "train/loss", steps, value=lambda s: math.sin(s / 500))
    for max_points in (2, 3, 7, 100, 1000):
        body = client.get(f"/v1/jobs/{job}/metrics", params={"name": "train/loss", "max_points": max_points}).json()
        got = [p["step"] for p in body["points"]]
        assert body["downsampled"] is True
        assert 2 <= len(got) <= max_points, (max_points, len(got))
        assert got[0] == 3 and got[-1] == 20_011
        assert got == sorted(set(got))
        assert all(math.isclose(p["value"], math.sin(p["step"] / 500)) for p in body["points"])
        if max_points >= 100:  # buckets are spread over the whole range, not bunched at the start
            assert len(got) >= max_points * 0.9
    # a window keeps its own first and last
    body = client.get(f"/v1/jobs/{job}/metrics",
                      params={"name": "train/loss", "start_step": 1000, "end_step": 9000, "max_points": 50}).json()
    got = [p["step"] for p in body["points"]]
    assert got[0] == 1002 and got[-1] == 9000 and len(got) <= 50
    # max_points is capped at 10000 and at least 2
    body = client.get(f"/v1/jobs/{job}/metrics", params={"name": "train/loss", "max_points": 10**9}).json()
    assert body["max_points"] == 10_000 and len(body["points"]) <= 10_000
    assert client.get(f"/v1/jobs/{job}/metrics", params={"name": "train/loss", "max_points": 1}).status_code == 422
    r = client.get(f"/v1/jobs/{job}/metrics", params={"name": "train/loss", "start_step": 9, "end_step": 1})
    assert r.status_code == 422 and "start_step" in r.json()["error"]["message"]


def test_upsert_never_duplicates_and_drops_nan(client, db):
    job = submit(client)["id"]
    _load(db, job, "train/loss", range(10), value=lambda s: 1.0)
    _load(db, job, "train/loss", range(5, 15), value=lambda s: 2.0)  # a resumed run logs steps 5-9 again
    with db() as s:
        write_metrics(s, job, [{"name": "train/loss", "step": 20, "value": 3.0},
                                    {"name": "train/loss", "step": 20, "value": 4.0},  # same batch: last wins
                                    {"name": "train/loss", "step": 21, "value": float("nan")},
                                    {"name": "train/loss", "step": 22, "value": float("inf")}])
        s.commit()
        assert s.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job)) == 17
    pts = client.get(f"/v1/jobs/{job}/metrics", params={"name": "train/loss"}).json()["points"]
    assert [p["step"] for p in pts] == list(range(15)) + [20, 22]
    assert [p["value"] for p in pts[:5]] == [1.0] * 5 and [p["value"] for p in pts[5:15]] == [2.0] * 10
    assert pts[-2]["value"] == 4.0 and pts[-1]["value"] is None  # JSON has no infinity
