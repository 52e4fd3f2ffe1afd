"""SQLAlchemy 2.0 typed models. SQL is the source of truth for every job.

Alembic migrations in ``migrations/`` are the only way this schema reaches a database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from api.db.clock import utcnow

STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running", "cancelling")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
OWNED_STATUSES = ("running", "cancelling")  # a worker holds the job's lease
KINDS = ("pretrain", "evaluate")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


# BigInteger ids on PostgreSQL, INTEGER (rowid alias, autoincrement) on SQLite.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # denormalised from the spec for filters and the leaderboard
    method: Mapped[str | None] = mapped_column(String(64))
    dataset: Mapped[str | None] = mapped_column(String(64))
    protocol: Mapped[str | None] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(16), default="gpu")
    source_job_id: Mapped[int | None] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="SET NULL"))
    parent_job_id: Mapped[int | None] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="SET NULL"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # execution
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)  # from Settings.max_attempts, set by create_job
    owner: Mapped[str | None] = mapped_column(String(200))  # the worker holding the lease
    # who submitted it (a token's name); follow-ups it will queue on success (counted in the quotas)
    created_by: Mapped[str | None] = mapped_column(String(100))
    followups: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    artifact_dir: Mapped[str | None] = mapped_column(String(1000))
    # placement: the GPUs (or CPU slots) a job needs, and where its current/last attempt runs
    gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    worker: Mapped[str | None] = mapped_column(String(200))
    devices: Mapped[list[Any] | None] = mapped_column(JSON)
    waiting_reason: Mapped[str | None] = mapped_column(Text)
    # random, set at creation: recorded in the job's checkpoints, so a new job never resumes from an
    # old job's files after a database reset
    run_key: Mapped[str | None] = mapped_column(String(64))
    # evaluation results, for the leaderboard
    top1: Mapped[float | None] = mapped_column(Float)
    top5: Mapped[float | None] = mapped_column(Float)
    # membership of a suite (no foreign key: SQLite cannot add one to an existing table; deleting a
    # suite deletes or detaches its children in api.db.suites), the variant it runs, its sweep trial
    suite_id: Mapped[int | None] = mapped_column(IdType)
    variant: Mapped[str | None] = mapped_column(String(200))
    trial: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_jobs_created", "created_at", "id"),  # listing, newest first, cursor on (created_at, id)
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_claim", "status", "queue", "priority", "id"),  # the local worker's claim query
        Index("ix_jobs_lease", "status", "lease_expires_at"),  # the reconciler
        Index("ix_jobs_results", "kind", "status", "dataset", "protocol"),  # the leaderboard
        Index("ix_jobs_source", "source_job_id"),
        Index("ix_jobs_created_by_status", "created_by", "status"),  # per-owner quota and lists
        Index("ix_jobs_suite", "suite_id", "variant"),  # a suite's children, its table
    )


class Suite(Base):
    """A named group of pretraining jobs (a grid, explicit variants, a preset or an Optuna search)
    with the evaluations after each. Its status is derived from its children (``api.db.suites``);
    the rows here hold what was asked (``request``), what it expanded to (``plan``), the search and
    its best trial so far."""

    __tablename__ = "suites"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # grid | variants | preset | search
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    search: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    study_name: Mapped[str | None] = mapped_column(String(200))
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # a search: every trial asked and told (no more jobs will be created)
    search_done: Mapped[bool] = mapped_column(Boolean, default=False)
    driven_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # the sweep driver's claim
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_suites_created", "created_at", "id"),)


class Metric(Base):
    """One value per (job, name, step): a resumed run overwrites, never duplicates."""

    __tablename__ = "metrics"

    job_id: Mapped[int] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    epoch: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MetricBlock(Base):
    """Summary of one metric over a block of steps (64 at level 0, 1,024 at level 1): count,
    first/last step, the min and max with their steps, and two filler steps. Kept in step with ``metrics`` by ``api.db.metric_blocks``, it
    lets a downsampled read keep every spike and dip without scanning millions of points."""

    __tablename__ = "metric_blocks"

    job_id: Mapped[int] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # 0: 64 steps, 1: 1,024 steps
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # first step // block size
    n: Mapped[int] = mapped_column(Integer)
    first_step: Mapped[int] = mapped_column(BigInteger)
    last_step: Mapped[int] = mapped_column(BigInteger)
    min_step: Mapped[int] = mapped_column(BigInteger)
    min_value: Mapped[float] = mapped_column(Float)
    max_step: Mapped[int] = mapped_column(BigInteger)
    max_value: Mapped[float] = mapped_column(Float)
    # the first step at or after a quarter and three quarters of the block: fillers for a chart
    # bucket whose first/last/min/max coincide (a monotone stretch)
    q1_step: Mapped[int] = mapped_column(BigInteger)
    q3_step: Mapped[int] = mapped_column(BigInteger)


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))  # relative to the job's artifact folder
    kind: Mapped[str] = mapped_column(String(32))  # checkpoint | backbone | result | log
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)


class JobEvent(Base):
    """Every status change, with who made it and why."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobRun(Base):
    """One row per execution start (claim): 'run twice' is countable from SQL alone."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(32))  # succeeded | failed | cancelled | released | lost

    __table_args__ = (UniqueConstraint("job_id", "attempt", name="uq_job_runs_attempt"),)


class Worker(Base):
    """A worker process and the GPUs (or CPU slots) it owns; alive while it heartbeats."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    device_kind: Mapped[str] = mapped_column(String(8))  # cuda | cpu
    gpus: Mapped[list[Any]] = mapped_column(JSON)  # device ids (cuda) or slot numbers (cpu)
    queues: Mapped[list[Any]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A named bearer token: only its SHA-256 is stored (``pretextlab token create`` shows it once)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobTombstone(Base):
    """A deleted job whose folder may still exist (the API that deleted it may not write there):
    the retention sweep removes the folder, then this row. Only folders named here or belonging to
    expired jobs are ever removed -- never a folder merely because no row names it."""

    __tablename__ = "job_tombstones"

    job_id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=False)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
