"""Downsampled metric reads that keep every spike and dip (M4: first, last, min, max per bucket).

A chart of a million points drawn from one point per bucket hides a loss spike that lasted ten
steps. M4 keeps, per bucket, the first and last point and the points holding the minimum and the
maximum, so the drawn envelope is the true one. Finding a bucket's min and max by scanning its
points would read every stored point (0.7 s for 1M points on PostgreSQL here), so each metric keeps
a summary per block of :data:`BLOCK` steps in ``metric_blocks`` (count, first/last step, the min and
max with their steps), refreshed for the blocks a write touches (:func:`refresh_blocks`). A read then

* cuts the range into exactly ``max_points // 4`` buckets of whole blocks (block ``k`` of ``N``
  goes to bucket ``k * buckets // N``: no bucket is lost to rounding),
* picks each bucket's four steps from the block summaries with window functions in SQL (plus two
  filler steps of its middle block, used where the four coincide),
* fetches those points plus the partial blocks at both ends of the range, and reduces each bucket
  to its M4 points in Python (at most 4 * buckets <= max_points rows).

A range shorter than ``buckets`` whole blocks is small enough (< buckets * BLOCK points) to reduce
from the raw points directly.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

BLOCK = 64  # steps per summary row: 1M points -> 15,625 rows; also in migration 0003's backfill

Point = tuple[int, float, "int | None"]  # (step, value, epoch)

# Parameters are CAST: PostgreSQL must deduce one type for each, in the select list and the WHERE.
_REFRESH_SQL = text(
    f"""
    INSERT INTO metric_blocks (job_id, name, block, n, first_step, last_step, min_step, min_value,
                               max_step, max_value, q1_step, q3_step)
    SELECT CAST(:job AS BIGINT), CAST(:name AS VARCHAR(100)), CAST(:block AS BIGINT), COUNT(*), MIN(step), MAX(step),
        (SELECT m.step FROM metrics m WHERE m.job_id = CAST(:job AS BIGINT) AND m.name = CAST(:name AS VARCHAR(100))
            AND m.step >= CAST(:block AS BIGINT) * {BLOCK} AND m.step < CAST(:block AS BIGINT) * {BLOCK} + {BLOCK} ORDER BY m.value, m.step LIMIT 1),
        MIN(value),
        (SELECT m.step FROM metrics m WHERE m.job_id = CAST(:job AS BIGINT) AND m.name = CAST(:name AS VARCHAR(100))
            AND m.step >= CAST(:block AS BIGINT) * {BLOCK} AND m.step < CAST(:block AS BIGINT) * {BLOCK} + {BLOCK}
            ORDER BY m.value DESC, m.step LIMIT 1),
        MAX(value),
        COALESCE((SELECT MIN(m.step) FROM metrics m WHERE m.job_id = CAST(:job AS BIGINT)
            AND m.name = CAST(:name AS VARCHAR(100)) AND m.step >= CAST(:block AS BIGINT) * {BLOCK} + {BLOCK // 4}
            AND m.step < CAST(:block AS BIGINT) * {BLOCK} + {BLOCK}), MAX(step)),
        COALESCE((SELECT MIN(m.step) FROM metrics m WHERE m.job_id = CAST(:job AS BIGINT)
            AND m.name = CAST(:name AS VARCHAR(100)) AND m.step >= CAST(:block AS BIGINT) * {BLOCK} + {3 * BLOCK // 4}
            AND m.step < CAST(:block AS BIGINT) * {BLOCK} + {BLOCK}), MAX(step))
    FROM metrics
    WHERE job_id = CAST(:job AS BIGINT) AND name = CAST(:name AS VARCHAR(100)) AND step >= CAST(:block AS BIGINT) * {BLOCK} AND step < CAST(:block AS BIGINT) * {BLOCK} + {BLOCK}
    HAVING COUNT(*) > 0
    ON CONFLICT (job_id, name, block) DO UPDATE SET
        n = excluded.n, first_step = excluded.first_step, last_step = excluded.last_step,
        min_step = excluded.min_step, min_value = excluded.min_value,
        max_step = excluded.max_step, max_value = excluded.max_value,
        q1_step = excluded.q1_step, q3_step = excluded.q3_step
    """
)

REBUILD_SQL = text(
    f"""
    INSERT INTO metric_blocks (job_id, name, block, n, first_step, last_step, min_step, min_value,
                               max_step, max_value, q1_step, q3_step)
    SELECT g.job_id, g.name, g.block, g.n, g.first_step, g.last_step,
        (SELECT m.step FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
            AND m.step >= g.block * {BLOCK} AND m.step < g.block * {BLOCK} + {BLOCK}
            ORDER BY m.value, m.step LIMIT 1),
        g.min_value,
        (SELECT m.step FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
            AND m.step >= g.block * {BLOCK} AND m.step < g.block * {BLOCK} + {BLOCK}
            ORDER BY m.value DESC, m.step LIMIT 1),
        g.max_value,
        COALESCE((SELECT MIN(m.step) FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
            AND m.step >= g.block * {BLOCK} + {BLOCK // 4} AND m.step < g.block * {BLOCK} + {BLOCK}), g.last_step),
        COALESCE((SELECT MIN(m.step) FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
            AND m.step >= g.block * {BLOCK} + {3 * BLOCK // 4} AND m.step < g.block * {BLOCK} + {BLOCK}), g.last_step)
    FROM (SELECT job_id, name, step / {BLOCK} AS block, COUNT(*) AS n, MIN(step) AS first_step,
                 MAX(step) AS last_step, MIN(value) AS min_value, MAX(value) AS max_value
          FROM metrics WHERE job_id = :job GROUP BY job_id, name, step / {BLOCK}) AS g
    WHERE true
    ON CONFLICT (job_id, name, block) DO UPDATE SET
        n = excluded.n, first_step = excluded.first_step, last_step = excluded.last_step,
        min_step = excluded.min_step, min_value = excluded.min_value,
        max_step = excluded.max_step, max_value = excluded.max_value,
        q1_step = excluded.q1_step, q3_step = excluded.q3_step
    """
)

# Per bucket of whole blocks: its first and last step, the steps of its min and max, and the two
# filler steps of its middle block (used only where first/last/min/max coincide).
_PICK_SQL = text(
    """
    WITH b AS (
        SELECT first_step, last_step, min_step, min_value, max_step, max_value, q1_step, q3_step,
               ((block - :b0) * :buckets) / :nblocks AS k
        FROM metric_blocks WHERE job_id = :job AND name = :name AND block >= :b0 AND block <= :b1
    ), r AS (
        SELECT k, q1_step, q3_step, min_step, max_step,
               ROW_NUMBER() OVER (PARTITION BY k ORDER BY min_value, min_step) AS rmin,
               ROW_NUMBER() OVER (PARTITION BY k ORDER BY max_value DESC, max_step) AS rmax,
               ROW_NUMBER() OVER (PARTITION BY k ORDER BY first_step) AS rpos,
               COUNT(*) OVER (PARTITION BY k) AS cnt
        FROM b
    )
    SELECT MIN(first_step) FROM b GROUP BY k
    UNION SELECT MAX(last_step) FROM b GROUP BY k
    UNION SELECT min_step FROM r WHERE rmin = 1
    UNION SELECT max_step FROM r WHERE rmax = 1
    UNION SELECT q1_step FROM r WHERE rpos = cnt / 2 + 1
    UNION SELECT q3_step FROM r WHERE rpos = cnt / 2 + 1
    """
)


def refresh_blocks(session: Session, job_id: int, steps: Iterable[tuple[str, int]]) -> None:
    """Recompute the summaries of the blocks holding these (name, step) points (after an upsert:
    an overwritten step may have held a block's min or max)."""
    touched = {(name, step // BLOCK) for name, step in steps}
    if touched:
        session.execute(_REFRESH_SQL, [{"job": job_id, "name": n, "block": b} for n, b in sorted(touched)])


def rebuild_blocks(session: Session, job_id: int) -> None:
    """Recompute every block summary of a job (after points were loaded without ``write_metrics``)."""
    session.execute(REBUILD_SQL, {"job": job_id})


def m4(points: Sequence[Point], bucket_of: Any) -> list[Point]:
    """Per bucket (``bucket_of(step)``): the first, last, min and max point, in step order. Where
    those are fewer than four distinct points (a monotone stretch: first = max, last = min), the
    bucket's other points nearest its middle fill in, so a bucket gives 4 points whenever it has 4.
    ``points`` must be in step order."""
    groups: dict[int, list[Point]] = {}
    for p in points:
        groups.setdefault(bucket_of(p[0]), []).append(p)
    out: list[Point] = []
    for group in groups.values():
        keep = {group[0][0]: group[0], group[-1][0]: group[-1]}
        lo_p = min(group, key=lambda p: (p[1], p[0]))
        hi_p = max(group, key=lambda p: (p[1], -p[0]))
        keep[lo_p[0]], keep[hi_p[0]] = lo_p, hi_p
        mid = len(group) // 2
        for i in sorted(range(len(group)), key=lambda i: abs(i - mid)):
            if len(keep) >= 4:
                break
            keep.setdefault(group[i][0], group[i])
        out.extend(keep.values())
    out.sort(key=lambda p: p[0])
    return out


def _rows(session: Session, sql: str, params: dict[str, Any]) -> list[Point]:
    return [(int(s), float(v), e) for s, v, e in session.execute(text(sql), params)]


def downsample(session: Session, job_id: int, name: str, lo: int, hi: int, max_points: int) -> list[Point]:
    """At most ``max_points`` points of steps [lo, hi]: M4 over exactly ``max_points // 4`` buckets."""
    buckets = max_points // 4
    base = "SELECT step, value, epoch FROM metrics WHERE job_id = :job AND name = :name"
    params: dict[str, Any] = {"job": job_id, "name": name, "lo": lo, "hi": hi}
    if buckets == 0:  # 2 or 3 points asked for: the first and the last
        return _rows(session, base + " AND step IN (:lo, :hi) ORDER BY step", params)
    b0, b1 = -(-lo // BLOCK), (hi + 1) // BLOCK - 1  # the whole blocks inside [lo, hi]
    nblocks = b1 - b0 + 1
    if nblocks < buckets:  # fewer than buckets * BLOCK steps: reduce the raw points
        span = hi - lo + 1
        rows = _rows(session, base + " AND step >= :lo AND step <= :hi ORDER BY step", params)
        return m4(rows, lambda s: (s - lo) * buckets // span)
    picks = [r[0] for r in session.execute(_PICK_SQL, {**params, "b0": b0, "b1": b1, "buckets": buckets,
                                                       "nblocks": nblocks})]
    edge_lo, edge_hi = b0 * BLOCK, (b1 + 1) * BLOCK  # partial blocks: [lo, edge_lo) and [edge_hi, hi]
    in_list = ", ".join(str(int(s)) for s in picks) or "NULL"  # ints from the database itself
    rows = _rows(session, base + f" AND step >= :lo AND step <= :hi AND (step IN ({in_list})"
                 " OR step < :edge_lo OR step >= :edge_hi) ORDER BY step",
                 {**params, "edge_lo": edge_lo, "edge_hi": edge_hi})

    def bucket_of(step: int) -> int:
        return min(buckets - 1, max(0, (step // BLOCK - b0) * buckets // nblocks))

    return m4(rows, bucket_of)
