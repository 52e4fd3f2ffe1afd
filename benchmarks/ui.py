"""Dashboard page latency with 10,000 jobs stored and a 1,000,000-point curve (PostgreSQL).

Seeds a fresh database exactly as benchmarks/service.py does (10,000 finished jobs over 30 days,
one of them holding 1M ``train/loss`` points), starts ``uvicorn api.main:app``, then measures:

1. **HTTP**: each page's HTML (jobs list, a filtered list, a page deep in the cursor chain, the
   job page of the 1M-point job, Compare of two jobs, Leaderboard) and the data a job page asks for
   after loading (metric names, then the curve at 900 points: the server's downsampling), one
   request at a time; and the job page's total = HTML + names + curve, sequentially.
2. **browser** (``--browser``, needs chromium + chromium-driver): navigation start to the curve
   drawn (the uPlot canvas with the points) in headless Chromium, from the Navigation Timing API.

    python benchmarks/ui.py --out benchmarks/results/ui.json [--browser]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests" / "ui")]

from service import proc_cpu_ms, seed, start_server, summary  # noqa: E402

from api.db.session import upgrade  # noqa: E402
from tests.support.databases import PG_ADMIN_URL, create_database, drop_database  # noqa: E402
from tests.support.net import free_port  # noqa: E402

CURVE_POINTS = 900  # what a 900-px chart asks for


def timed(c: httpx.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = c.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")
    return out


def job_page_total(c: httpx.Client, job: int, n: int) -> list[float]:
    """HTML, then the metric names, then the curve: what a visitor waits for, one after another."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert c.get(f"/ui/jobs/{job}").status_code == 200
        names = c.get(f"/v1/jobs/{job}/metrics").json()["names"]
        for name in names:
            body = c.get(f"/v1/jobs/{job}/metrics", params={"name": name, "max_points": CURVE_POINTS}).json()
            assert 2 <= len(body["points"]) <= CURVE_POINTS
        out.append((time.perf_counter() - t0) * 1000)
    return out


def browser_loads(base: str, job: int, n: int) -> list[float]:
    from selenium.webdriver.support.ui import WebDriverWait
    from ui_harness import chrome

    driver = chrome()
    out = []
    try:
        for _ in range(n + 1):  # the first load warms the browser's cache of the static files
            driver.get(f"{base}/ui/jobs/{job}")
            drawn_at = WebDriverWait(driver, 30, poll_frequency=0.01).until(lambda d: d.execute_script(
                "const c = document.querySelector('.chart[data-metric=\"train/loss\"]');"
                "return c && c.querySelector('canvas') && c.dataset.points ? performance.now() : null"))
            out.append(drawn_at)  # performance.now() counts from navigation start (error: one poll, ~10 ms)
        return out[1:]
    finally:
        driver.quit()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pg-url", default=PG_ADMIN_URL)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--metric-points", type=int, default=1_000_000)
    p.add_argument("--reads", type=int, default=100)
    p.add_argument("--browser", action="store_true", help="also time the job page in headless Chromium")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    url = create_database(args.pg_url, prefix="pretextlab_bench_ui")
    proc = None
    results: dict[str, dict] = {}
    try:
        upgrade(url)
        job = seed(url, args.jobs, args.metric_points)
        with tempfile.TemporaryDirectory() as tmp:
            proc = start_server(url, free_port(), 1, Path(tmp))
            base = f"http://127.0.0.1:{proc.args[proc.args.index('--port') + 1]}"
            with httpx.Client(base_url=base, timeout=30) as c:
                cursor = None
                for _ in range(100):
                    cursor = c.get("/v1/jobs", params={"limit": 50, **({"cursor": cursor} if cursor else {})}
                                   ).json()["next_cursor"]
                pages = {
                    "jobs list (50 rows)": "/ui/",
                    "jobs list, status=failed": "/ui/?status=failed",
                    "jobs list, page 101 via cursor": f"/ui/?cursor={cursor}&limit=50",
                    f"job page HTML ({args.metric_points:,}-point job)": f"/ui/jobs/{job}",
                    "compare 2 jobs HTML": f"/ui/compare?ids={job},{job - 1}",
                    "leaderboard": "/ui/leaderboard",
                    "metric names": f"/v1/jobs/{job}/metrics",
                    f"curve {args.metric_points:,} -> {CURVE_POINTS} points":
                        f"/v1/jobs/{job}/metrics?name=train/loss&max_points={CURVE_POINTS}",
                }
                for path in pages.values():
                    timed(c, path, 5)  # warm-up
                for key, path in pages.items():
                    c0 = proc_cpu_ms(proc.pid)
                    lat = timed(c, path, args.reads)
                    results[key] = {**summary(lat),
                                    "server_cpu_ms_per_req": round((proc_cpu_ms(proc.pid) - c0) / len(lat), 2)}
                c0 = proc_cpu_ms(proc.pid)
                lat = job_page_total(c, job, args.reads)
                results["job page total: HTML + names + curve"] = {
                    **summary(lat), "server_cpu_ms_per_req": round((proc_cpu_ms(proc.pid) - c0) / len(lat), 2)}
            if args.browser:
                lat = browser_loads(base, job, 10)
                results["browser: navigation to curve drawn"] = {**summary(lat), "server_cpu_ms_per_req": float("nan")}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        drop_database(url, args.pg_url)

    load = os.getloadavg()
    report = {"benchmark": "ui", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "loadavg_at_end": [round(x, 2) for x in load]},
              "setup": {"jobs": args.jobs, "metric_points": args.metric_points, "reads": args.reads},
              "results": results}
    width = max(len(k) for k in results)
    print(f"\n{'page':<{width}}  {'n':>4}  {'p50 ms':>8}  {'p99 ms':>8}  {'mean ms':>8}  {'cpu ms':>7}")
    for k, v in results.items():
        print(f"{k:<{width}}  {v['n']:>4}  {v['p50_ms']:>8.2f}  {v['p99_ms']:>8.2f}  {v['mean_ms']:>8.2f}  "
              f"{v['server_cpu_ms_per_req']:>7.2f}")
    print(f"(load average at the end: {load[0]:.1f} on {os.cpu_count()} CPUs)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
