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
    nope = client.get(f"/v1/jobs/{job}/metrics", params={"name": "nope"})
    assert nope.status_code == 404, nope.text
    err = nope.json()["error"]
    assert "'nope'" in err["message"] and "train/loss, train/lr" in err["message"]
    assert err["details"][0]["names"] == ["train/loss", "train/lr"] and err["details"][0]["loc"] == "query.name"
    # a known metric with no point in the window is an empty series, not a 404
    assert client.get(f"/v1/jobs/{job}/metrics",
                      params={"name": "train/lr", "start_step": 100}).json()["points"] == []


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
        if max_points >= 100:  # max_points // 4 buckets spread over the whole range, 2 to 4 points each
            assert len(got) >= 2 * (max_points // 4)
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


def _series(client, job, **params):
    body = client.get(f"/v1/jobs/{job}/metrics", params={"name": "train/loss", **params}).json()
    return {p["step"]: p["value"] for p in body["points"]}


def test_every_downsampled_answer_keeps_a_spike_and_a_dip(client, db):
    """M4: a bucket's min and max survive, whatever max_points and window (here 100,000 points)."""
    job = submit(client)["id"]
    spike, dip = 61_234, 17_001

    def value(s):
        return 100.0 if s == spike else -50.0 if s == dip else 1.0 + 3.0 * ((s * 7919) % 1000) / 1000

    _load(db, job, "train/loss", range(100_000), value=value)
    for max_points in (4, 5, 50, 1000, 10_000):
        for window in ({}, {"start_step": 10_000, "end_step": 70_000}, {"start_step": 16_990, "end_step": 61_300},
                       {"start_step": 17_001, "end_step": 61_234}):
            got = _series(client, job, max_points=max_points, **window)
            assert len(got) <= max_points
            assert got.get(spike) == 100.0 and got.get(dip) == -50.0, (max_points, window)
            assert all(v <= 4.0 for s, v in got.items() if s not in (spike, dip))
            lo, hi = window.get("start_step", 0), window.get("end_step", 99_999)
            assert min(got) == lo and max(got) == hi
    # an overwrite (a resumed run) that removes the spike removes it from the answer too
    _load(db, job, "train/loss", [spike], value=lambda s: 2.0)
    assert 100.0 not in _series(client, job, max_points=1000).values()


def test_max_points_is_exact(client, db):
    """max_points // 4 buckets, 4 points each (fillers where first/last/min/max coincide): exactly
    max_points // 4 * 4, on a monotone series too."""
    job = submit(client)["id"]
    _load(db, job, "train/loss", range(200_000), value=lambda s: 4.0 / (1 + s / 1000))
    for max_points in (1000, 9_999, 10_000):
        got = _series(client, job, max_points=max_points)
        assert len(got) == 4 * (max_points // 4), (max_points, len(got))
    got = _series(client, job, max_points=10_000, start_step=1_001, end_step=30_000)  # the raw path
    assert len(got) == 10_000


def test_the_migration_summarises_points_stored_before_it(sqlite_url):
    """Points written before metric_blocks existed: the upgrade summarises them, spikes included."""
    from sqlalchemy import text

    from api.db.metrics import query_metrics
    from api.db.session import make_engine, session_factory, upgrade

    upgrade(sqlite_url, "0001_initial")
    engine = make_engine(sqlite_url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO jobs (id, kind, status, tags, priority, spec, queue, attempt, max_attempts, "
                       "cancel_requested, created_at, updated_at) VALUES (1, 'pretrain', 'succeeded', '[]', 0, "
                       "'{}', 'gpu', 1, 3, 0, '2026-01-01', '2026-01-01')"))
        c.execute(text("WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < 49999) "
                       "INSERT INTO metrics (job_id, name, step, value, epoch, created_at) SELECT 1, 'train/loss', "
                       "x, CASE x WHEN 31337 THEN 100.0 ELSE 1.0 END, NULL, '2026-01-01' FROM s"))
    upgrade(sqlite_url)
    with session_factory(engine)() as s:
        series = query_metrics(s, 1, "train/loss", max_points=100)
    engine.dispose()
    assert series.downsampled and (31337, 100.0, None) in series.points


def test_a_short_flat_range_still_gives_exactly_max_points(client, db):
    """Fewer than 64 points per bucket (no summary level fits: reduced from the points): on a flat
    series first, last, min and max coincide in every bucket, and fillers from each bucket's
    middle make up exactly 4 points; a dip in it survives."""
    job = submit(client)["id"]
    _load(db, job, "train/loss", range(2_000), value=lambda s: -5.0 if s == 1_234 else 1.0)
    got = _series(client, job, max_points=1000)
    assert len(got) == 1000 and got[1_234] == -5.0 and min(got) == 0 and max(got) == 1_999
    got = _series(client, job, max_points=400, start_step=7, end_step=1_600)
    assert len(got) == 400 and got[1_234] == -5.0 and min(got) == 7 and max(got) == 1_600
