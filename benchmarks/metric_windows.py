"""Metric history reads, in process, side by side: this tree's ``query_metrics`` (M4 from block
summaries) against another tree's (e.g. the first-point-per-bucket reads before M4), on one
PostgreSQL database holding one job with 1,000,000 points (the ``benchmarks/service.py`` series).

    python benchmarks/metric_windows.py --old-tree /work/wt-old --rounds 6 --out results/metric_windows.json

Rounds alternate old/new (the order flips every round) over the same random windows (1,000 points
out of a window of at least 5,000 steps, as in service.py) and the full range; each round records
the load average, so rounds taken on a busy shared machine can be set aside. ``--db URL`` reuses a
seeded database (job 1) instead of creating and seeding one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.db import metrics as new_metrics  # noqa: E402
from api.db.session import make_engine, session_factory, upgrade  # noqa: E402
from tests.support.databases import PG_ADMIN_URL, create_database, drop_database  # noqa: E402


def load_old(tree: Path):
    """The other tree's api/db/metrics.py as a module (its imports resolve to this tree's models,
    which hold the same ``metrics`` table)."""
    spec = importlib.util.spec_from_file_location("old_metrics", tree / "api" / "db" / "metrics.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_metrics"] = mod
    spec.loader.exec_module(mod)
    return mod


def timed(sessions, mod, job: int, windows: list[tuple[int | None, int | None]]) -> list[float]:
    out = []
    with sessions() as s:
        for a, b in windows:
            t0 = time.perf_counter()
            mod.query_metrics(s, job, "train/loss", start_step=a, end_step=b, max_points=1000)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-tree", type=Path, required=True)
    p.add_argument("--db", default=None, help="a database already seeded by benchmarks/service.py's seed (job 1)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--windows", type=int, default=150)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    old = load_old(args.old_tree)
    url, made = args.db, None
    if url is None:
        from benchmarks.service import seed

        url = made = create_database(PG_ADMIN_URL, prefix="pretextlab_bench")
        upgrade(url)
        seed(url, 1, 1_000_000)
    engine = make_engine(url)
    sessions = session_factory(engine)
    rng = random.Random(1)
    windows = []
    for _ in range(args.windows):
        a = rng.randrange(0, 1_000_000 - 10_000)
        windows.append((a, rng.randrange(a + 5_000, 1_000_000)))
    classes = {"random window": windows, "window < 16k steps": [w for w in windows if w[1] - w[0] < 16_000],
               "full range": [(None, None)] * 30}
    timed(sessions, old, 1, windows[:20]), timed(sessions, new_metrics, 1, windows[:20])  # warm caches
    rounds = []
    try:
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            row = {"round": r, "load1": round(load, 2)}
            order = [("old", old), ("new", new_metrics)][:: 1 if r % 2 == 0 else -1]
            for key, ws in classes.items():
                for name, mod in order:
                    row[f"{key} {name} p50"] = round(statistics.median(timed(sessions, mod, 1, ws)), 2)
            rounds.append(row)
            print(json.dumps(row))
    finally:
        engine.dispose()
        if made:
            drop_database(made, PG_ADMIN_URL)
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "metric_windows", "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
