"""Chaos benchmark: no job lost, none run twice, while workers die and the broker forgets.

Starts its own redis-server (free port), a fresh PostgreSQL database, the API process
(`pretextlab serve` with a broker: API + reconciler) and N Celery workers (`pretextlab worker`);
submits a batch of short pretraining jobs over HTTP; then, while they run, kills random workers
with SIGKILL -- spread over the batch, 3-8 s apart at least, preferring a worker that is running a
job -- restarting a fresh one each time, and empties the broker once (FLUSHALL) at 30 % done. At the end
it reads SQL (the source of truth) and reports:

  submitted, succeeded, failed, lost (not succeeded by the deadline, or failed), run_twice (a job
  with two JobRun intervals that overlap, or more runs than claims), metric gaps/duplicates, the
  longest wait from a worker's death to its job's next claim, and the longest wait from a requeue
  to the next claim.

Multi-process jobs: ``--multi-jobs M --slots 2`` makes M of the jobs ask for 2 GPUs
(``resources.gpus``) and starts every worker with 2 CPU slots, so 2-process jobs and pairs of
1-process jobs share the workers; the first kill then prefers a worker running a 2-process job.
Each kill also checks that no process below the killed worker (its rank processes) is alive
``--orphan-grace`` seconds later (``orphan_ranks``, which must be 0). 2-process jobs need the
multi-process launcher (``ssl_core.launch``).

Then a broker-loss probe with idle workers: ``--probe-jobs`` jobs are queued in SQL as if their
message had been sent and then wiped (FLUSHALL right after), and the time from entering the queue to
the claim is reported (``broker_loss_queue_to_claim_s``; target <= 10 s). With the deployment's
default REDISPATCH_AFTER_SECONDS (60, ``--redispatch-after``) that is the idle workers' poll at work,
not the reconciler.

    .venv/bin/python benchmarks/chaos.py --jobs 20 --workers 3 --kills 6 --out benchmarks/results/chaos.json
    .venv/bin/python benchmarks/chaos.py --jobs 12 --workers 2 --slots 2 --multi-jobs 6 --kills 4 \
        --out benchmarks/results/chaos_multi.json

With ``--artifact-url s3://bucket/prefix`` the artifacts go to an S3-compatible server it starts
(moto_server, a child process) and every worker gets its own scratch folder, so a resumed job can
only continue from the checkpoint *object*; the report adds ``objects_missing`` (succeeded jobs
without their backbone and checkpoint objects).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api.db.clock import as_utc, utcnow as now  # noqa: E402
from tests.support.databases import PG_ADMIN_URL, create_database, drop_database  # noqa: E402
from tests.support.net import free_port, wait_for_http  # noqa: E402
from tests.support.processes import Proc, RedisServer, descendants, pid_alive, service_env  # noqa: E402
from tests.support.specs import tiny_pretrain  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=6, help="kill -9 this many workers (each replaced)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per job (4 steps each)")
    ap.add_argument("--step-delay", type=float, default=0.1, help="seconds per step (test throttle)")
    ap.add_argument("--lease", type=float, default=3.0)
    ap.add_argument("--max-attempts", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slots", type=int, default=1, help="CPU slots per worker (jobs side by side)")
    ap.add_argument("--multi-jobs", type=int, default=0, help="this many of the jobs ask for 2 GPUs (2 processes)")
    ap.add_argument("--orphan-grace", type=float, default=15.0, help="seconds a killed worker's ranks may take to die")
    ap.add_argument("--redispatch-after", type=float, default=60.0,
                    help="PRETEXTLAB_REDISPATCH_AFTER_SECONDS (the reconciler's first re-send; 60 = the default)")
    ap.add_argument("--probe-jobs", type=int, default=2, help="jobs of the broker-loss probe (0 = none)")
    ap.add_argument("--pg-admin-url", default=PG_ADMIN_URL,
                    help="an existing database to connect to for CREATE DATABASE")
    ap.add_argument("--artifact-url", default=None, help="s3://bucket/prefix: artifacts on a moto_server it starts")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "chaos.json"))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    import httpx
    import redis
    import sqlalchemy as sa

    from api.db.jobs import events_of, get_jobs
    from api.db.leases import runs_of
    from api.db.metrics import step_ranges
    from api.db.models import JobRun
    from api.db.session import make_engine, session_factory, upgrade

    work = Path(tempfile.mkdtemp(prefix="pretextlab-chaos-"))
    db_url = create_database(args.pg_admin_url, prefix="pretextlab_chaos")
    db_name = db_url.rsplit("/", 1)[1]
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)

    api_port = free_port()
    redis_server = RedisServer(work)
    redis_server.start()
    s3 = start_object_store(args.artifact_url, work) if args.artifact_url else None
    env = service_env(
        database_url=db_url, broker_url=redis_server.url, artifact_root=work / "artifacts", port=api_port,
        lease_seconds=args.lease, heartbeat_seconds=args.lease / 6, reconcile_seconds=1,
        redispatch_after_seconds=args.redispatch_after, metric_flush_seconds=0.5, max_attempts=args.max_attempts,
        log_level="INFO", test_step_delay=args.step_delay, artifact_url=args.artifact_url)
    env.update(s3.env() if s3 else {})
    py = sys.executable
    procs: list[Proc] = []
    workers: dict[str, Proc] = {}
    counter = {"n": 0}

    def start_worker() -> str:
        counter["n"] += 1
        name = f"chaos{counter['n']}"
        wenv = {**env, "PRETEXTLAB_ARTIFACT_ROOT": str(work / f"scratch-{name}")} if s3 else env  # no shared disk
        workers[name] = Proc(name, [py, "-m", "worker.cli", "worker", "--hostname", f"{name}@%h",
                                    "--slots", str(args.slots)], wenv, work)
        procs.append(workers[name])
        return name

    kills: list[dict[str, Any]] = []
    flushed_at: datetime | None = None
    t_start = time.monotonic()
    try:
        procs.append(Proc("serve", [py, "-m", "worker.cli", "serve"], env, work))
        for _ in range(args.workers):
            start_worker()
        base = f"http://127.0.0.1:{api_port}"
        wait_for_http(base + "/healthz", 60, "the API to answer /healthz",
                      on_timeout=lambda: "see " + str(work / "serve.log"))
        with httpx.Client(base_url=base, timeout=10) as http:
            ids = []
            multi = set(rng.sample(range(args.jobs), min(args.multi_jobs, args.jobs)))
            for i in range(args.jobs):
                spec = tiny_pretrain(args.epochs, **({"resources": {"gpus": 2}} if i in multi else {}))
                r = http.post("/v1/jobs", json={"spec": spec, "name": f"chaos-{i}"})
                r.raise_for_status()
                ids.append(r.json()["id"])
        print(f"submitted {len(ids)} jobs to {args.workers} workers; db {db_name}; logs {work}", flush=True)

        def statuses() -> dict[int, str]:
            with sessions() as s:
                return {j.id: j.status for j in get_jobs(s, ids)}

        def running_owners(min_gpus: int = 1) -> list[str]:
            with sessions() as s:
                return [j.owner for j in get_jobs(s, ids) if j.status == "running" and j.owner and j.gpus >= min_gpus]

        ranks_of_killed: list[int] = []  # processes below killed workers: none may outlive the grace
        last_kill = {"t": 0.0}

        kills_left = args.kills
        next_chaos = time.monotonic() + rng.uniform(3, 6)
        end = time.monotonic() + args.timeout
        while time.monotonic() < end:
            st = statuses()
            done = sum(v in ("succeeded", "failed", "cancelled") for v in st.values())
            if done == len(ids):
                break
            if flushed_at is None and done >= len(ids) * 0.3:
                redis.Redis.from_url(redis_server.url).flushall()  # every queued and unacked message: gone
                flushed_at = now()
                print(f"FLUSHALL at {done}/{len(ids)} done", flush=True)
            # spread the kills over the batch: kill k waits until k/(kills+1) of the jobs are done
            kill_no = args.kills - kills_left
            spread_ok = done >= (kill_no * len(ids)) // (args.kills + 1)
            if kills_left and spread_ok and time.monotonic() >= next_chaos:
                # prefer a worker that is running a job right now: that is the interesting kill
                busy = {o.split("@")[0] for o in running_owners()}
                multi_busy = {o.split("@")[0] for o in running_owners(2)} if not kills else set()
                alive = [n for n, p in workers.items() if p.alive()]
                choice = ([n for n in alive if n in multi_busy] or [n for n in alive if n in busy] or alive)
                if choice:
                    victim = rng.choice(choice)
                    below = descendants(workers[victim].pid)
                    workers[victim].kill9()
                    ranks_of_killed.extend(below)
                    last_kill["t"] = time.monotonic()
                    kills.append({"worker": victim, "at": now().isoformat(), "busy": victim in busy,
                                  "multi_process": victim in multi_busy, "processes_below": len(below)})
                    kills_left -= 1
                    print(f"kill -9 {victim} (busy={victim in busy}); {done}/{len(ids)} done", flush=True)
                    start_worker()
                next_chaos = time.monotonic() + rng.uniform(3, 8)
            time.sleep(0.5)
        wall = time.monotonic() - t_start
        if kills:  # give the last kill's ranks their grace before counting survivors
            time.sleep(max(0.0, args.orphan_grace - (time.monotonic() - last_kill["t"])))
        orphans = [p for p in ranks_of_killed if pid_alive(p)]
        probe = broker_loss_probe(sessions, redis_server.url, args) if args.probe_jobs else []

        # -- the verdict, from SQL -------------------------------------------------------------
        with sessions() as s:
            jobs = {j.id: j for j in get_jobs(s, ids)}
            all_runs = runs_of(s, ids)
            events = events_of(s, ids)
            steps = [(jid, *r) for jid, r in step_ranges(s, ids, "train/loss").items()]
        by_job: dict[int, list[JobRun]] = {}
        for r in all_runs:
            by_job.setdefault(r.job_id, []).append(r)
        run_twice = []
        for jid, rs in by_job.items():
            overlap = any(a.ended_at is None or as_utc(b.started_at) < as_utc(a.ended_at) for a, b in zip(rs, rs[1:]))
            if overlap or len(rs) > jobs[jid].attempt:
                run_twice.append(jid)
        total_steps = 4 * args.epochs
        metric_bad = [jid for jid, n, lo, hi in steps
                      if jobs[jid].status == "succeeded" and (n, lo, hi) != (total_steps, 1, total_steps)]
        metric_bad += [jid for jid in ids if jobs[jid].status == "succeeded" and jid not in {r[0] for r in steps}]
        # waits: a killed worker's job -> its next claim; any requeue event -> the next claim
        kill_at = {k["worker"]: datetime.fromisoformat(k["at"]) for k in kills}
        wait_after_kill = []
        for jid, rs in by_job.items():
            for a, b in zip(rs, rs[1:]):
                victim = a.worker.split("@")[0]
                if a.outcome == "lost" and victim in kill_at:
                    wait_after_kill.append((as_utc(b.started_at) - kill_at[victim]).total_seconds())
        kill_to_requeue = []  # recovery latency: lease expiry + one reconcile period
        for e in events:
            if e.from_status == "running" and e.to_status == "queued" and e.actor == "reconciler":
                lost = [r for r in by_job.get(e.job_id, []) if r.outcome == "lost" and r.attempt == e.attempt]
                victim = lost[0].worker.split("@")[0] if lost else None
                if victim in kill_at:
                    kill_to_requeue.append((as_utc(e.at) - kill_at[victim]).total_seconds())
        requeue_wait = []
        pending: dict[int, datetime] = {}
        for e in events:
            if e.from_status == "running" and e.to_status == "queued":
                pending[e.job_id] = as_utc(e.at)
            elif e.from_status == "queued" and e.to_status == "running" and e.job_id in pending:
                requeue_wait.append((as_utc(e.at) - pending.pop(e.job_id)).total_seconds())
        counts = {s_: sum(j.status == s_ for j in jobs.values()) for s_ in
                  ("succeeded", "failed", "cancelled", "queued", "running", "cancelling")}
        report = {
            "submitted": len(ids),
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "lost": len(ids) - counts["succeeded"],
            "run_twice": len(run_twice),
            "run_twice_jobs": run_twice,
            "orphan_ranks": len(orphans),
            "multi_process_jobs": args.multi_jobs,
            "metric_gaps_or_duplicates": len(metric_bad),
            "status_counts": counts,
            "runs_total": len(all_runs),
            "runs_by_outcome": {o: sum(r.outcome == o for r in all_runs) for o in
                                sorted({str(r.outcome) for r in all_runs})},
            "jobs_resumed": sum(len(rs) > 1 for rs in by_job.values()),
            "kills": kills,
            "flushall_at": flushed_at.isoformat() if flushed_at else None,
            "max_kill_to_requeue_s": round(max(kill_to_requeue), 2) if kill_to_requeue else None,
            "max_wait_after_kill_s": round(max(wait_after_kill), 2) if wait_after_kill else None,
            "max_requeue_to_claim_s": round(max(requeue_wait), 2) if requeue_wait else None,
            "objects_missing": objects_missing(s3, args.artifact_url, [j for j in ids if jobs[j].status == "succeeded"]),
            # runs that began by downloading their job's checkpoint object (another host's progress)
            "resumed_from_object": sum(p.log().count("fetched its checkpoint from") for p in workers.values()),
            "broker_loss_queue_to_claim_s": probe,
            "max_broker_loss_queue_to_claim_s": max((p for p in probe if p is not None), default=None),
            "wall_s": round(wall, 1),
            "config": {**vars(args), "pg_admin_url": "<redacted>"},
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "logs": str(work),
        }
    finally:
        for p in procs:
            p.stop(timeout=30)
        redis_server.stop()
        if s3 is not None:
            s3.stop()
        engine.dispose()
        drop_database(db_url, args.pg_admin_url)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{'submitted':>28} {report['submitted']}")
    for k in ("succeeded", "failed", "lost", "run_twice", "orphan_ranks", "metric_gaps_or_duplicates",
              "objects_missing", "resumed_from_object", "runs_total",
              "jobs_resumed", "max_kill_to_requeue_s", "max_wait_after_kill_s", "max_requeue_to_claim_s",
              "broker_loss_queue_to_claim_s", "wall_s"):
        print(f"{k:>28} {report[k]}")
    print(f"{'kills':>28} {len(kills)} ({sum(k['busy'] for k in kills)} mid-job); FLUSHALL once: "
          f"{report['flushall_at'] is not None}")
    print(f"wrote {out}")
    return 0 if (report["lost"] == 0 and report["run_twice"] == 0 and report["orphan_ranks"] == 0
                 and not report["objects_missing"]) else 1


def start_object_store(url: str, work: Path):
    """A moto_server holding the bucket of ``url`` (the artifact store of this run)."""
    from ssl_core.storage import parse_s3_url
    from tests.support.objstore import MotoS3

    server = MotoS3(work).start()
    server.create_bucket(parse_s3_url(url, "--artifact-url").bucket)
    return server


def objects_missing(s3, url: str | None, job_ids: list[int]) -> int | None:
    """Succeeded jobs whose backbone or checkpoint is not an object in the store (None: no S3 run)."""
    if s3 is None or url is None:
        return None
    from ssl_core.storage import parse_s3_url

    loc = parse_s3_url(url, "--artifact-url")
    client, missing = s3.client(), 0
    for jid in job_ids:
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=loc.bucket, Prefix=f"{loc.prefix}jobs/{jid}/")
                .get("Contents", [])}
        missing += not {f"{loc.prefix}jobs/{jid}/backbone.safetensors", f"{loc.prefix}jobs/{jid}/checkpoints/last.safetensors"} <= keys
    return missing


def broker_loss_probe(sessions: Any, redis_url: str, args: argparse.Namespace) -> list[float | None]:
    """Queue jobs whose message is lost (marked dispatched, then FLUSHALL) while the workers are
    idle; seconds from entering the queue to the claim (None: not claimed within 120 s)."""
    import redis

    from api.db.jobs import create_job, get_jobs, job_events, mark_dispatched

    with sessions() as s, s.begin():
        ids = [create_job(s, tiny_pretrain(1), name=f"probe-{i}", max_attempts=args.max_attempts).id
               for i in range(args.probe_jobs)]
        for jid in ids:
            mark_dispatched(s, jid)  # as if sent ...
    redis.Redis.from_url(redis_url).flushall()  # ... and wiped
    print(f"broker-loss probe: jobs {ids} queued with their messages lost", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with sessions() as s:
            if all(j.status != "queued" for j in get_jobs(s, ids)):
                break
        time.sleep(0.2)
    waits: list[float | None] = []
    with sessions() as s:
        for jid in ids:
            ev = job_events(s, jid)
            queued = next(e.at for e in ev if e.to_status == "queued")
            claimed = next((e.at for e in ev if e.to_status == "running"), None)
            waits.append(round((as_utc(claimed) - as_utc(queued)).total_seconds(), 2) if claimed else None)
    return waits


if __name__ == "__main__":
    raise SystemExit(main())
