"""Service latency on PostgreSQL: job submission, metric history, job listing.

Against a real ``uvicorn api.main:app`` server process on 127.0.0.1 and a PostgreSQL database
this script creates (and drops at the end):

1. **submission**: ``POST /v1/jobs`` from 32 concurrent clients (asyncio + httpx, one
   connection each). Two loads: *paced* -- each client submits, then waits so that together
   they offer ``--rate`` requests/s (latency under a steady load) -- and *saturated* -- each
   client sends its next request as soon as the previous answer arrives (the throughput
   ceiling; latency there is mostly queueing).
2. **metric history**: ``GET /v1/jobs/{id}/metrics?name=train/loss&max_points=1000`` on one job
   holding 1,000,000 stored points (bulk-loaded with COPY, block summaries rebuilt after), with a
   planted spike and dip that every answer must show: the whole range and random windows.
3. **listing**: ``GET /v1/jobs`` with 10,000 jobs stored: first page (limit 50), a status
   filter, and a page deep in the cursor chain.

Reads are measured from one client, one request at a time (the latency of the query path).
Prints a table (p50 / p99 / mean in ms) and writes JSON with ``--out``.

    python benchmarks/service.py --out benchmarks/service.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.db.jobs import insert_job_rows  # noqa: E402
from api.db.metric_blocks import rebuild_blocks  # noqa: E402
from api.db.session import make_engine, session_factory, upgrade  # noqa: E402
from ssl_core.specs import method_label, parse_job_spec  # noqa: E402
from tests.support.databases import PG_ADMIN_URL, create_database, drop_database  # noqa: E402
from tests.support.net import free_port, wait_for_http  # noqa: E402
from tests.support.processes import service_env  # noqa: E402

SPEC = {"method": {"name": "simclr"}, "backbone": {"name": "resnet18"},
        "data": {"dataset": "fashion_mnist", "subset": 10000}, "epochs": 5, "batch_size": 256}


# planted in the seeded series: every downsampled answer whose range holds them must show them (M4)
SPIKE, DIP = (123_457, 100.0), (654_321, -50.0)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "max_ms": round(max(ms), 2)}


def proc_cpu_ms(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children), from /proc: a figure that
    does not depend on what else the machine is running, unlike wall-clock latency."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = sum(int(f) for f in fields[11:15])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def seed(url: str, n_jobs: int, n_points: int) -> int:
    """n_jobs finished jobs spread over 30 days, and one job with n_points metric points (COPY)."""
    spec = parse_job_spec(SPEC)
    spec_json = spec.model_dump(mode="json")
    engine = make_engine(url)
    now = datetime.now(timezone.utc)
    rng = random.Random(0)
    rows = []
    for i in range(n_jobs):
        created = now - timedelta(seconds=(n_jobs - i) * 260)
        status = rng.choices(["succeeded", "failed", "cancelled"], [90, 6, 4])[0]
        rows.append(dict(kind="pretrain", status=status, name=f"job-{i}", tags=["bench", f"t{i % 10}"], priority=0,
                         spec=spec_json, method=method_label(spec), dataset="fashion_mnist", protocol=None,
                         queue="gpu", attempt=1, max_attempts=3, cancel_requested=False,
                         progress={"epoch": 5, "step": 195, "total_steps": 195, "images_per_sec": 900.0,
                                   "eta_s": 0.0},
                         created_at=created, updated_at=created, started_at=created, finished_at=created))
    with session_factory(engine)() as s, s.begin():
        metric_job = insert_job_rows(s, rows)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy("COPY metrics (job_id, name, step, value, epoch, created_at) FROM STDIN") as copy:
            for step in range(n_points):
                value = SPIKE[1] if step == SPIKE[0] else DIP[1] if step == DIP[0] else \
                    4.0 / (1 + step / 1000) + 0.01 * (step % 7)
                copy.write_row((metric_job, "train/loss", step, value, step // 1000, now))
        raw.commit()
    finally:
        raw.close()
    with session_factory(engine)() as s, s.begin():  # COPY bypasses write_metrics: summarise the blocks
        rebuild_blocks(s, metric_job)
    # steady state: autovacuum would have set the visibility map (index-only scans) by now
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return metric_job


# -- server -----------------------------------------------------------------------------------
def start_server(url: str, port: int, workers: int, artifacts: Path) -> subprocess.Popen:
    env = service_env(database_url=url, artifact_root=artifacts, max_active_jobs=1000000, log_level="WARNING")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", 60, "the API server to become ready",
                      alive=lambda: proc.poll() is None)
    except AssertionError:
        proc.terminate()
        raise
    return proc


# -- load -------------------------------------------------------------------------------------
async def submissions(base: str, clients: int, per_client: int, rate: float | None) -> tuple[list[float], float]:
    """Latencies (ms) of POST /v1/jobs in steady state; rate=None means back-to-back (saturated).

    Every client opens its connection and sends one untimed submission first, all together, so
    connection set-up and the server's pool growth are not counted as submission latency."""
    body = json.dumps({"spec": SPEC, "tags": ["bench"]}).encode()
    headers = {"content-type": "application/json"}
    interval = clients / rate if rate else 0.0
    lat: list[float] = []
    conns = [httpx.AsyncClient(base_url=base, timeout=30) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.post("/v1/jobs", content=body, headers=headers) for c in conns))

        async def client(i: int, c: httpx.AsyncClient) -> None:
            await asyncio.sleep(interval * i / clients)  # spread the clients over one interval
            next_at = time.perf_counter()
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = await c.post("/v1/jobs", content=body, headers=headers)
                lat.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 201:
                    raise RuntimeError(f"submission failed: {r.status_code} {r.text[:200]}")
                if interval:
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
        return lat, len(lat) / (time.perf_counter() - t0)
    finally:
        await asyncio.gather(*(c.aclose() for c in conns))


def timed_gets(c: httpx.Client, paths: list[str], check) -> list[float]:
    lat = []
    for p in paths:
        t0 = time.perf_counter()
        r = c.get(p)
        lat.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {p}: {r.status_code} {r.text[:200]}")
        check(r.json())
    return lat


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pg-url", default=PG_ADMIN_URL,
                   help="an existing database to connect to for CREATE DATABASE")
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--metric-points", type=int, default=1_000_000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--per-client", type=int, default=20, help="submissions per client per load")
    p.add_argument("--rate", type=float, default=32.0,
                   help="offered submissions/s of the paced load (32 clients x 1/s each)")
    p.add_argument("--reads", type=int, default=300, help="requests per read benchmark")
    p.add_argument("--server-workers", type=int, default=1,
                   help="uvicorn --workers; >1 added ~45 ms to every keep-alive request here, even for a bare "
                        "FastAPI app (Nagle + delayed ACK on the shared listening socket), so 1 is the default")
    p.add_argument("--keep", action="store_true", help="keep the benchmark database")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    url = create_database(args.pg_url, prefix="pretextlab_bench")
    proc = None
    try:
        upgrade(url)
        t0 = time.perf_counter()
        metric_job = seed(url, args.jobs, args.metric_points)
        seed_s = time.perf_counter() - t0
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            proc = start_server(url, port, args.server_workers, Path(tmp))
            base = f"http://127.0.0.1:{port}"
            results: dict[str, dict] = {}

            def measured(key: str, run) -> None:
                """run() -> (latencies ms, extra dict); adds the server's CPU ms per request."""
                c0 = proc_cpu_ms(proc.pid)
                lat, extra = run()
                cpu = (proc_cpu_ms(proc.pid) - c0) / max(1, len(lat))
                results[key] = {**summary(lat), **extra, "server_cpu_ms_per_req": round(cpu, 2)}

            rng = random.Random(1)
            with httpx.Client(base_url=base, timeout=30) as c:
                # warm both worker processes' pools and caches
                for _ in range(20):
                    c.get("/v1/jobs?limit=50")
                    c.get(f"/v1/jobs/{metric_job}/metrics?name=train/loss&max_points=1000")

                def full(_): return None

                def bounded(body):
                    assert 2 <= len(body["points"]) <= 1000, len(body["points"])
                    got = {p["step"]: p["value"] for p in body["points"]}
                    lo, hi = body["points"][0]["step"], body["points"][-1]["step"]
                    for step, value in (SPIKE, DIP):
                        assert not lo <= step <= hi or got.get(step) == value, (step, lo, hi)

                mp = f"/v1/jobs/{metric_job}/metrics?name=train/loss&max_points=1000"
                measured(f"metrics: full range, {args.metric_points:,} points -> 1000",
                         lambda: (timed_gets(c, [mp] * args.reads, bounded), {}))
                windows = []
                for _ in range(args.reads):
                    a = rng.randrange(0, args.metric_points - 10_000)
                    b = rng.randrange(a + 5_000, args.metric_points)
                    windows.append(f"{mp}&start_step={a}&end_step={b}")
                measured("metrics: random window -> 1000", lambda: (timed_gets(c, windows, bounded), {}))
                measured("metrics: names of the job",
                         lambda: (timed_gets(c, [f"/v1/jobs/{metric_job}/metrics"] * args.reads, full), {}))

                def page(body):
                    assert len(body["items"]) == 50

                measured("list: first page (50)", lambda: (timed_gets(c, ["/v1/jobs?limit=50"] * args.reads, page), {}))
                measured("list: status=failed (50)",
                         lambda: (timed_gets(c, ["/v1/jobs?limit=50&status=failed"] * args.reads, page), {}))
                cursor = None
                deep = max(1, min(100, args.jobs // 50 - 2))
                for _ in range(deep):  # walk 100 pages in (fewer on a small database)
                    cursor = c.get("/v1/jobs", params={"limit": 50, **({"cursor": cursor} if cursor else {})}
                                   ).json()["next_cursor"]
                measured(f"list: page {deep + 1} via cursor",
                         lambda: (timed_gets(c, [f"/v1/jobs?limit=50&cursor={cursor}"] * args.reads, page), {}))

            def submit(rate):
                lat, thr = asyncio.run(submissions(base, args.clients, args.per_client, rate))
                return lat, {"achieved_per_s": round(thr, 1)}

            measured(f"submit: {args.clients} clients paced, {args.rate:g}/s offered", lambda: submit(args.rate))
            measured(f"submit: {args.clients} clients saturated", lambda: submit(None))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        if not args.keep:
            drop_database(url, args.pg_url)

    with make_engine(args.pg_url).connect() as conn:
        pg_version = conn.execute(sa.text("SHOW server_version")).scalar()
    report = {
        "benchmark": "service",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "postgresql": pg_version, "server_workers": args.server_workers},
        "setup": {"jobs": args.jobs, "metric_points": args.metric_points, "clients": args.clients,
                  "per_client": args.per_client, "rate": args.rate, "reads": args.reads,
                  "seed_seconds": round(seed_s, 1)},
        "results": results,
    }
    width = max(len(k) for k in results)
    load = os.getloadavg()
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in load]
    print(f"\n{'benchmark':<{width}}  {'n':>5}  {'p50 ms':>8}  {'p99 ms':>8}  {'mean ms':>8}  {'req/s':>7}  {'cpu ms':>7}")
    for k, v in results.items():
        print(f"{k:<{width}}  {v['n']:>5}  {v['p50_ms']:>8.2f}  {v['p99_ms']:>8.2f}  {v['mean_ms']:>8.2f}  "
              f"{v.get('achieved_per_s', ''):>7}  {v['server_cpu_ms_per_req']:>7.2f}")
    print(f"(cpu ms = the server process's CPU time per request; load average at the end: {load[0]:.1f})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
