"""Queued jobs whose broker message looks lost, as an idle worker sees them (``worker.idle_poll``).

A worker with a free slot that consumes queue Q would have received the message of any claimable
job in Q; if such a job has been queued for a while with no message sent recently, the message was
lost (Redis restarted empty, FLUSHALL) and sending it again is the fix. ``dispatched_at`` (set by
every send) keeps several idle workers from re-sending one job more than once per grace period.
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from api.db.jobs import source_settled
from api.db.models import Job


def lost_messages(session: Session, queues: Sequence[str], sent_before: datetime, limit: int) -> list[int]:
    """Claimable queued jobs of ``queues`` whose message was sent before ``sent_before`` (or
    never), best first (the claim order)."""
    return list(session.scalars(
        select(Job.id)
        .where(Job.status == "queued", Job.queue.in_(list(queues)), source_settled(),
               or_(Job.dispatched_at.is_(None), Job.dispatched_at < sent_before))
        .order_by(Job.priority.desc(), Job.id.asc()).limit(limit)))


def forget_dispatch(session: Session, job_id: int) -> None:
    """A queued job's message was consumed without running it: clear ``dispatched_at`` so it counts
    as never sent (idle polls and the reconciler send it first)."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(dispatched_at=None)
                    .execution_options(synchronize_session=False))
