"""Downsampled metric reads that keep every spike and dip (M4: first, last, min, max per bucket).

A chart of a million points drawn from one point per bucket hides a loss spike that lasted ten
steps. M4 keeps, per bucket, the first and last point and the points holding the minimum and the
maximum, so the drawn envelope is the true one. Finding a bucket's min and max by scanning its
points would read every stored point (0.7 s for 1M points on PostgreSQL here), so each metric keeps
summaries in ``metric_blocks`` at two levels -- blocks of 64 steps and of 1,024 steps -- each with
its count, first/last step, the min and max with their steps, and two filler steps; a write
refreshes the blocks it touched (:func:`refresh_blocks`). A read then

* takes the coarsest level with at least one whole block per bucket and cuts the range into
  exactly ``max_points // 4`` buckets of whole blocks (block ``k`` of ``N`` goes to bucket
  ``k * buckets // N``: no bucket is lost to rounding),
* picks in SQL each bucket's first and last step and the earliest steps holding its min and its
  max, plus -- only where those coincide (a monotone or flat stretch) -- two filler steps of its
  middle block: about four steps per bucket (hash aggregates over a few thousand summary rows),
* fetches those points by index probes, with the partial blocks at both ends of the range (as
  level-0 summaries plus fewer than 64 points a side), and reduces each bucket to 4 points in
  Python: first, last, min, max, and fillers only where those coincide, so the answer has
  max_points // 4 * 4 points whenever the data has them.

A range shorter than ``buckets`` blocks of 64 (< buckets * 64 points) has no summary fine enough:
on PostgreSQL one aggregate pass over its points picks the same four steps per bucket (and the
steps around each bucket's middle, for fillers), and only those points are fetched; on SQLite
every point of the range is read and reduced in Python. Reads fetch their rows in one call: row
by row, converting ~1,500 rows cost more than the query itself.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

BLOCK = 64  # steps per level-0 summary row: 1M points -> 15,625 rows
FANOUT = 16  # level-0 rows per level-1 row (1,024 steps): 1M points -> 977 rows
SIZES = (BLOCK * FANOUT, BLOCK)  # the levels a read tries, coarsest first

Point = tuple[int, float, "int | None"]  # (step, value, epoch)

_UPSERT = """
    INSERT INTO metric_blocks (job_id, name, level, block, n, first_step, last_step, min_step, min_value,
                               max_step, max_value, q1_step, q3_step)
    {select}
    ON CONFLICT (job_id, name, level, block) DO UPDATE SET
        n = excluded.n, first_step = excluded.first_step, last_step = excluded.last_step,
        min_step = excluded.min_step, min_value = excluded.min_value,
        max_step = excluded.max_step, max_value = excluded.max_value,
        q1_step = excluded.q1_step, q3_step = excluded.q3_step
"""
# Level 0 from the points: per block, its min and max with their steps (ties: the earliest step),
# and fillers: the first step at or after a quarter and three quarters of the block.
_LEVEL0 = _UPSERT.format(select=f"""
    SELECT g.job_id, g.name, 0, g.block, g.n, g.first_step, g.last_step,
        (SELECT m.step FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
            AND m.step >= g.block * {BLOCK} AND m.step < g.block * {BLOCK} + {BLOCK} ORDER BY m.value, m.step LIMIT 1),
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
          FROM metrics WHERE job_id = :job {{where}} GROUP BY job_id, name, step / {BLOCK}) AS g
    WHERE true""")
# Level 1 from level 0: the same summary over FANOUT consecutive blocks.
_LEVEL1 = _UPSERT.format(select=f"""
    SELECT g.job_id, g.name, 1, g.block, g.n, g.first_step, g.last_step,
        (SELECT c.min_step FROM metric_blocks c WHERE c.job_id = g.job_id AND c.name = g.name AND c.level = 0
            AND c.block >= g.block * {FANOUT} AND c.block < g.block * {FANOUT} + {FANOUT}
            ORDER BY c.min_value, c.min_step LIMIT 1),
        g.min_value,
        (SELECT c.max_step FROM metric_blocks c WHERE c.job_id = g.job_id AND c.name = g.name AND c.level = 0
            AND c.block >= g.block * {FANOUT} AND c.block < g.block * {FANOUT} + {FANOUT}
            ORDER BY c.max_value DESC, c.max_step LIMIT 1),
        g.max_value,
        COALESCE((SELECT MIN(c.first_step) FROM metric_blocks c WHERE c.job_id = g.job_id AND c.name = g.name
            AND c.level = 0 AND c.block >= g.block * {FANOUT} + {FANOUT // 4}
            AND c.block < g.block * {FANOUT} + {FANOUT}), g.last_step),
        COALESCE((SELECT MIN(c.first_step) FROM metric_blocks c WHERE c.job_id = g.job_id AND c.name = g.name
            AND c.level = 0 AND c.block >= g.block * {FANOUT} + {3 * FANOUT // 4}
            AND c.block < g.block * {FANOUT} + {FANOUT}), g.last_step)
    FROM (SELECT job_id, name, block / {FANOUT} AS block, SUM(n) AS n, MIN(first_step) AS first_step,
                 MAX(last_step) AS last_step, MIN(min_value) AS min_value, MAX(max_value) AS max_value
          FROM metric_blocks WHERE level = 0 AND job_id = :job {{where}} GROUP BY job_id, name, block / {FANOUT}) AS g
    WHERE true""")
_RANGE = "AND name = :name AND {col} >= :lo AND {col} < :hi"
_REFRESH0 = text(_LEVEL0.format(where=_RANGE.format(col="step")))
_REFRESH1 = text(_LEVEL1.format(where=_RANGE.format(col="block")))
_REBUILD0 = text(_LEVEL0.format(where=""))
_REBUILD1 = text(_LEVEL1.format(where=""))

# How many distinct steps a bucket's first, last, min and max are (the fillers are fetched only
# where that is under 4: a monotone or flat stretch).
_CORE = """(1 + CASE WHEN l <> f THEN 1 ELSE 0 END + CASE WHEN smin NOT IN (f, l) THEN 1 ELSE 0 END
            + CASE WHEN smax NOT IN (f, l, smin) THEN 1 ELSE 0 END)"""
# Per bucket of whole blocks of one level (block k of N goes to bucket k * buckets // N): its first
# and last step, the earliest step holding its min and its max, and -- only where those coincide --
# the two filler steps of its middle block: about four steps per bucket, fetched after by index
# probes (a join to ``metrics`` here would be planned as a scan of the job's points when the
# statistics are stale, as they are right after a bulk write). Window functions would sort every
# block row again.
_BUCKET_STEPS = f"""
    WITH b AS (
        SELECT block, first_step, last_step, min_step, min_value, max_step, max_value, q1_step, q3_step,
               ((block - :b0) * :buckets) / :nblocks AS k
        FROM metric_blocks WHERE job_id = :job AND name = :name AND level = :level
                                 AND block >= :b0 AND block <= :b1
    ), g AS (
        SELECT k, MIN(first_step) AS f, MAX(last_step) AS l, MIN(min_value) AS mn, MAX(max_value) AS mx,
               (MIN(block) + MAX(block)) / 2 AS mid
        FROM b GROUP BY k
    ), x AS (
        SELECT g.k, g.f, g.l, MIN(b.min_step) FILTER (WHERE b.min_value = g.mn) AS smin,
               MIN(b.max_step) FILTER (WHERE b.max_value = g.mx) AS smax,
               MIN(b.q1_step) FILTER (WHERE b.block = g.mid) AS q1, MIN(b.q3_step) FILTER (WHERE b.block = g.mid) AS q3
        FROM b JOIN g ON b.k = g.k GROUP BY g.k, g.f, g.l
    ), s(step) AS (
        SELECT f FROM x UNION SELECT l FROM x UNION SELECT smin FROM x UNION SELECT smax FROM x
        UNION SELECT q1 FROM x WHERE {_CORE} < 4 UNION SELECT q3 FROM x WHERE {_CORE} < 4
    )
    SELECT step FROM s WHERE step IS NOT NULL
"""
# The same on PostgreSQL in one aggregate pass, no join: an array compares element by element, so
# MIN(ARRAY[min_value, min_step]) is the earliest step of the bucket's min (MAX with -step: of its
# max), and the filler steps come from the bucket's middle summary row.
_BUCKET_STEPS_PG = """
    SELECT MIN(first_step), MAX(last_step), (MIN(ARRAY[min_value, min_step]))[2],
           -(MAX(ARRAY[max_value, -max_step]))[2],
           (array_agg(q1_step ORDER BY block))[COUNT(*) / 2 + 1], (array_agg(q3_step ORDER BY block))[COUNT(*) / 2 + 1]
    FROM metric_blocks WHERE job_id = :job AND name = :name AND level = :level AND block >= :b0 AND block <= :b1
    GROUP BY ((block - :b0) * :buckets) / :nblocks
"""


def refresh_blocks(session: Session, job_id: int, steps: Iterable[tuple[str, int]]) -> None:
    """Recompute the summaries (both levels) of the blocks holding these (name, step) points, after
    an upsert: an overwritten step may have held a block's min or max."""
    steps = list(steps)
    for sql, size, unit in ((_REFRESH0, BLOCK, 1), (_REFRESH1, BLOCK * FANOUT, FANOUT)):
        touched = sorted({(name, step // size) for name, step in steps})
        if touched:  # [lo, hi) in the source's unit: steps for level 0, level-0 blocks for level 1
            session.execute(sql, [{"job": job_id, "name": n, "lo": b * size // unit, "hi": (b + 1) * size // unit}
                                  for n, b in touched])


def rebuild_blocks(session: Session, job_id: int) -> None:
    """Recompute every summary of a job (after points were loaded without ``write_metrics``)."""
    session.execute(_REBUILD0, {"job": job_id})
    session.execute(_REBUILD1, {"job": job_id})


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


def _rows(session: Session, sql: str, params: dict[str, Any], ordered: bool = False) -> list[Point]:
    """Rows (step, value, epoch) in step order (``ordered``: the SQL sorts them already), fetched
    in one call rather than row by row (which cost more than the query on long ranges)."""
    rows = [(int(s), float(v), e) for s, v, e in session.execute(text(sql), params).all()]
    return rows if ordered else sorted(rows)


def downsample(session: Session, job_id: int, name: str, lo: int, hi: int, max_points: int) -> list[Point]:
    """At most ``max_points`` points of steps [lo, hi]: M4 over exactly ``max_points // 4`` buckets."""
    buckets = max_points // 4
    base = "SELECT step, value, epoch FROM metrics WHERE job_id = :job AND name = :name"
    params: dict[str, Any] = {"job": job_id, "name": name, "lo": lo, "hi": hi}
    if buckets == 0:  # 2 or 3 points asked for: the first and the last
        return _rows(session, base + " AND step IN (:lo, :hi) ORDER BY step", params)
    for size in SIZES:  # the coarsest level with at least one whole block per bucket
        b0, b1 = -(-lo // size), (hi + 1) // size - 1  # the whole blocks inside [lo, hi]
        if b1 - b0 + 1 >= buckets:
            return _from_blocks(session, params, base, buckets, size, b0, b1)
    # fewer than buckets * BLOCK steps (< 64 points per bucket): from the raw points
    span = hi - lo + 1
    if session.get_bind().dialect.name == "postgresql":
        rows = _raw_candidates(session, params, base, buckets, span)
    else:  # every point of the range, fetched in one call and in key order
        rows = _rows(session, base + " AND step >= :lo AND step <= :hi ORDER BY step", params, ordered=True)
    return m4(rows, lambda s: (s - lo) * buckets // span)


# PostgreSQL, one pass of hash aggregates over the range: per bucket its first and last step, the
# earliest step of its min and of its max (an array compares element by element: [value, step]),
# and the steps within two places of its middle (fillers, used only where the four coincide).
_RAW_STEPS = """
    SELECT MIN(step), MAX(step), (MIN(ARRAY[value, step]))[2], -(MAX(ARRAY[value, -step]))[2],
           (array_agg(step ORDER BY step))[COUNT(*) / 2 - 1 : COUNT(*) / 2 + 3]
    FROM metrics WHERE job_id = :job AND name = :name AND step >= :lo AND step <= :hi
    GROUP BY ((step - :lo) * :buckets) / :span
"""


def _raw_candidates(session: Session, params: dict[str, Any], base: str, buckets: int, span: int) -> list[Point]:
    """The points :func:`m4` needs from a short range: about four per bucket leave the database."""
    steps: set[int] = set()
    for f, l, smin, smax, middle in session.execute(text(_RAW_STEPS), {**params, "buckets": buckets,
                                                                        "span": span}).all():
        core = {int(f), int(l), int(smin), int(smax)}
        steps |= core if len(core) == 4 else core | {int(x) for x in middle}
    in_list = ", ".join(str(s) for s in sorted(steps))  # ints from the database itself
    return _rows(session, f"{base} AND step IN ({in_list})", params)


def _from_blocks(session: Session, params: dict[str, Any], base: str, buckets: int, size: int,
                 b0: int, b1: int) -> list[Point]:
    nblocks = b1 - b0 + 1
    level = 0 if size == BLOCK else 1
    picks: set[int] = set()
    # the partial blocks at both ends, [lo, b0 * size) and [(b1 + 1) * size, hi]: read as level-0
    # summaries where they hold whole 64-step blocks, as points for the rest (< 64 steps a side)
    edges = [(params["lo"], b0 * size - 1), ((b1 + 1) * size, params["hi"])]
    raw: list[tuple[int, int]] = []
    for a, b in edges:
        if a > b:
            continue
        if size == BLOCK:
            raw.append((a, b))
            continue
        c0, c1 = -(-a // BLOCK), (b + 1) // BLOCK - 1
        if c0 > c1:
            raw.append((a, b))
            continue
        picks |= _region_picks(session, params, c0, c1)
        raw += [(a, c0 * BLOCK - 1), ((c1 + 1) * BLOCK, b)]
    picks |= _bucket_steps(session, {**params, "level": level, "b0": b0, "b1": b1, "buckets": buckets,
                                     "nblocks": nblocks})
    in_list = ", ".join(str(s) for s in sorted(picks)) or "NULL"  # ints from the database itself
    # index probes and short ranges, never one OR (which PostgreSQL may answer by scanning the range)
    sql = f"{base} AND step IN ({in_list})"
    ranges: dict[str, int] = {}
    for i, (a, b) in enumerate(r for r in raw if r[0] <= r[1]):
        sql += f" UNION ALL {base} AND step >= :edge_lo{i} AND step <= :edge_hi{i}"
        ranges.update({f"edge_lo{i}": a, f"edge_hi{i}": b})
    rows = _rows(session, sql, {**params, **ranges})

    def bucket_of(step: int) -> int:
        return min(buckets - 1, max(0, (step // size - b0) * buckets // nblocks))

    return m4(rows, bucket_of)


def _bucket_steps(session: Session, params: dict[str, Any]) -> set[int]:
    """The steps M4 keeps from the buckets of whole blocks (fillers only where needed)."""
    if session.get_bind().dialect.name != "postgresql":
        return {int(r[0]) for r in session.execute(text(_BUCKET_STEPS), params).all()}
    steps: set[int] = set()
    for f, l, smin, smax, q1, q3 in session.execute(text(_BUCKET_STEPS_PG), params).all():
        core = {int(f), int(l), int(smin), int(smax)}
        steps |= core if len(core) == 4 else core | {int(q1), int(q3)}
    return steps


def _region_picks(session: Session, params: dict[str, Any], c0: int, c1: int) -> set[int]:
    """First, last, min, max and filler steps of level-0 blocks c0..c1 (at most FANOUT rows)."""
    rows = session.execute(text(
        "SELECT block, first_step, last_step, min_step, min_value, max_step, max_value, q1_step, q3_step "
        "FROM metric_blocks WHERE job_id = :job AND name = :name AND level = 0 AND block >= :c0 AND block <= :c1 "
        "ORDER BY block"), {**params, "c0": c0, "c1": c1}).all()
    if not rows:
        return set()
    mid = rows[len(rows) // 2]
    return {rows[0][1], rows[-1][2], min(rows, key=lambda r: (r[4], r[3]))[3],
            max(rows, key=lambda r: (r[6], -r[5]))[5], mid[7], mid[8]}
