"""Races the store must win: one claim per job, one job per Idempotency-Key."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from api.db.jobs import transition
from api.db.models import Job, JobEvent
from api_helpers import PRETRAIN, submit


def test_only_one_concurrent_claim_wins(client, db):
    job = submit(client)["id"]
    barrier = threading.Barrier(8)

    def claim(i: int) -> bool:
        with db() as s:
            barrier.wait()
            ok = transition(s, job, "queued", "running", actor=f"w{i}", owner=f"w{i}",
                                 attempt=Job.attempt + 1)
            s.commit()
            return ok

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(claim, range(8)))
    assert wins.count(True) == 1
    with db() as s:
        j = s.get(Job, job)
        assert j.status == "running" and j.attempt == 1 and j.owner == f"w{wins.index(True)}"
        assert s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.to_status == "running")) == 1


def test_concurrent_idempotent_submissions_make_one_job(client, db):
    barrier = threading.Barrier(6)

    def post(_: int):
        barrier.wait()
        return client.post("/v1/jobs", json={"spec": PRETRAIN}, headers={"Idempotency-Key": "race"})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1 and codes.count(200) == 5, codes
    assert len({r.json()["id"] for r in answers}) == 1
    with db() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert s.scalar(select(func.count()).select_from(JobEvent)) == 1
