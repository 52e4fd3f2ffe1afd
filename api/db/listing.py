"""What the API lists: pages of jobs behind an opaque cursor, and the leaderboard of evaluations."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import and_, cast, exists, func, literal, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, aliased

from api.db.clock import as_utc
from api.db.models import Job


# -- pages of jobs ----------------------------------------------------------------------------
# A job id must fit a signed 64-bit BIGINT: anything larger in a cursor is refused, not sent to SQL.
MAX_CURSOR_ID = 2**63 - 1
_SIG_CHARS = 32  # hex characters of the HMAC-SHA256 kept in the cursor (128 bits)


class BadCursor(ValueError):
    """The cursor was not produced by this server."""


def _signature(payload: str, key: bytes) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()[:_SIG_CHARS]


def encode_cursor(job: Job, key: bytes) -> str:
    """``<base64 of [created_at, id]>.<HMAC>``: opaque, and only this server's key makes valid ones."""
    raw = json.dumps([as_utc(job.created_at).isoformat(), job.id]).encode()
    payload = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return f"{payload}.{_signature(payload, key)}"


def decode_cursor(cursor: str, key: bytes) -> tuple[datetime, int]:
    """The (created_at, id) a cursor points after; BadCursor for anything this server did not sign
    (a forged or edited cursor, one signed with another key) or whose id is out of range."""
    payload, _, sig = cursor.partition(".")
    if not hmac.compare_digest(sig.encode(), _signature(payload, key).encode()):
        raise BadCursor("cursor: not a cursor returned by GET /v1/jobs (or the server's cursor key changed)")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        ts, job_id = json.loads(raw)
        when = as_utc(datetime.fromisoformat(ts))
        if not isinstance(job_id, int) or isinstance(job_id, bool) or not 0 < job_id <= MAX_CURSOR_ID:
            raise ValueError
        return when, job_id
    except Exception as exc:  # noqa: BLE001 - any garbage is the same client error
        raise BadCursor("cursor: not a cursor returned by GET /v1/jobs") from exc


def _tag_filter(session: Session, tag: str) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return cast(Job.tags, postgresql.JSONB).contains([tag])
    je = func.json_each(Job.tags).table_valued("value")
    return exists(select(literal(1)).select_from(je).where(je.c.value == tag))


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    kind: str | None = None,
    method: str | None = None,
    dataset: str | None = None,
    tag: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
    cursor_key: bytes,
    created_by: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first; returns (page, next cursor or None). Keyset pagination on (created_at, id);
    cursors are signed with ``cursor_key`` (BadCursor for one that is not). ``created_by``: only that
    owner's jobs (a non-admin token's view)."""
    q = select(Job)
    if created_by is not None:
        q = q.where(Job.created_by == created_by)
    if status:
        q = q.where(Job.status == status)
    if kind:
        q = q.where(Job.kind == kind)
    if method:
        q = q.where(Job.method == method)
    if dataset:
        q = q.where(Job.dataset == dataset)
    if tag:
        q = q.where(_tag_filter(session, tag))
    if cursor:
        ts, last_id = decode_cursor(cursor, cursor_key)
        q = q.where(or_(Job.created_at < ts, and_(Job.created_at == ts, Job.id < last_id)))
    rows = list(session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    return page, (encode_cursor(page[-1], cursor_key) if len(rows) > limit else None)


# -- leaderboard ---------------------------------------------------------------------------------
def leaderboard(
    session: Session, *, dataset: str | None = None, protocol: str | None = None, limit: int = 500,
    created_by: str | None = None, suite_id: int | None = None, layer: str | None = None,
) -> list[dict[str, Any]]:
    """Succeeded evaluations, best top-1 first, each with the pretraining it measured (``created_by``:
    only that owner's evaluations). One row per probed layer (``layer``; a default evaluation has the
    one row ``pool``); ``layer`` keeps only that layer's rows. ``limit`` bounds the rows."""
    src = aliased(Job)
    q = (
        select(Job, src)
        .outerjoin(src, src.id == Job.source_job_id)
        .where(Job.kind == "evaluate", Job.status == "succeeded")
    )
    if dataset:
        q = q.where(Job.dataset == dataset)
    if protocol:
        q = q.where(Job.protocol == protocol)
    if created_by is not None:
        q = q.where(Job.created_by == created_by)
    if suite_id is not None:
        q = q.where(Job.suite_id == suite_id)
    q = q.order_by(Job.top1.desc().nulls_last(), Job.id.desc()).limit(limit)
    out = []
    for ev, pre in session.execute(q).all():
        result = ev.result or {}
        pre_spec = (pre.spec if pre is not None else None) or {}
        row = {
            "evaluation_job_id": ev.id,
            "pretrain_job_id": pre.id if pre is not None else None,
            "method": (pre.method if pre is not None else None) or ev.method or result.get("method"),
            "backbone": (pre_spec.get("backbone") or {}).get("name") or result.get("backbone"),
            "epochs": pre_spec.get("epochs", result.get("epochs")),
            "dataset": ev.dataset,
            "protocol": ev.protocol,
            "finished_at": as_utc(ev.finished_at),
            "batch_size": pre_spec.get("batch_size"),
            "seed": pre_spec.get("seed", (ev.spec or {}).get("seed")),
            "suite_id": ev.suite_id,
            "variant": ev.variant,
        }
        out += [{**row, **scores} for scores in _layer_scores(ev, result) if layer is None or scores["layer"] == layer]
    # the SQL order is by each evaluation's headline number; per-layer rows re-sort by their own
    out.sort(key=lambda r: (r["top1"] is None, -(r["top1"] or 0.0), -r["evaluation_job_id"]))
    return out[:limit]



def group_results(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Leaderboard rows grouped by method (with dataset, protocol, layer, epochs and batch) or by suite
    variant (with protocol and layer): mean, sample standard deviation (None under two) and count of top-1,
    best mean first."""
    # the layer is part of every key: two layers of one evaluation are two measurements, not two seeds
    keys = (("method", "dataset", "protocol", "layer", "epochs", "batch_size") if by == "method"
            else ("suite_id", "variant", "method", "dataset", "protocol", "layer"))
    groups: dict[tuple[Any, ...], list[float]] = {}
    for r in rows:
        if r["top1"] is None or (by == "variant" and r["variant"] is None):
            continue
        groups.setdefault(tuple(r[k] for k in keys), []).append(float(r["top1"]))
    out = []
    for key, values in groups.items():
        out.append({**dict(zip(keys, key)), "top1_mean": statistics.fmean(values),
                    "top1_std": statistics.stdev(values) if len(values) > 1 else None, "count": len(values)})
    return sorted(out, key=lambda g: -g["top1_mean"])


def _layer_scores(ev: Job, result: dict[str, Any]) -> list[dict[str, Any]]:
    """{layer, top1, top5} per probed layer; one row for a result from before per-layer evaluation."""
    layers = result.get("layers")
    if isinstance(layers, dict) and layers:
        return [{"layer": name, "top1": r.get("top1"), "top5": r.get("top5")} for name, r in layers.items()]
    default = "pixels" if result.get("baseline") == "raw_pixels" else "pool"
    return [{"layer": result.get("layer") or default,
             "top1": ev.top1 if ev.top1 is not None else result.get("top1"),
             "top5": ev.top5 if ev.top5 is not None else result.get("top5")}]
