"""Reporting overhead: what the service's reporting costs the training loop.

The same small SimCLR pretraining runs through ``ssl_core.train.pretrain`` with

* ``null``     -- ``NullSink`` (the baseline: the loop still reads its metrics every ``log_every`` steps),
* ``sqlite``   -- ``worker.sink.SqlSink`` on a real SQLite file (WAL), a claimed job and its lease,
* ``postgres`` -- ``SqlSink`` on a fresh PostgreSQL database (created here, dropped afterwards),

at ``log_every`` 1 (pessimistic: a metric batch every step) and 10 (the default). The runs are
interleaved, and the store that runs first rotates between repeats, so a noisy neighbour hits
every store alike.

Three numbers per configuration:

* step time -- the loop calls ``should_stop()`` at the start of every step, so the interval
  between two calls inside an epoch is one step, including its metric read and the sink calls
  at a log boundary; the mean over a run, the median over the repeats;
* overhead -- (step time with the sink - step time with NullSink) / NullSink, same log_every:
  the end-to-end cost, including the sink's background thread competing for the GIL and cores;
* blocking -- time the training thread spends inside sink methods during the steps (metrics,
  progress, should_stop), as a share of the step time: the direct cost, free of noise; plus
  the CPU time of the sink's writer thread (all it can take from the loop through the GIL; its
  waits on the database release the GIL), as a share of the step time: their sum bounds the
  sink's cost. The epoch boundary (flush, checkpoint registration) is reported apart, per epoch.

    python benchmarks/reporting.py --out reporting.json
    python benchmarks/reporting.py --backbone resnet18 --batch-size 256 --device cuda --out reporting-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.databases import sqlite_file_url, throwaway_database  # noqa: E402

IN_STEP_CALLS = ("metrics", "progress", "should_stop")
SYNTHETIC_TRAIN = 2000  # ssl_core.data.SYNTHETIC_SIZES["train"]


class TimedSink:
    """Wraps a sink: times every call on the caller's thread and stamps the start of every step."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.step_starts: list[float] = []
        self.step_cpu: list[float] = []  # the training thread's CPU time at each step start
        self.in_step_s = 0.0  # metrics/progress/should_stop: called inside the steps
        self.boundary_s = 0.0  # flush/artifact: called at epoch ends
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def _timed(self, name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            dt = time.perf_counter() - t0
            if name in IN_STEP_CALLS:
                self.in_step_s += dt
            else:
                self.boundary_s += dt
            self.calls[name] = self.calls.get(name, 0) + 1
            self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def metrics(self, step, values, epoch=None):
        return self._timed("metrics", self.inner.metrics, step, values, epoch=epoch)

    def progress(self, **kw):
        return self._timed("progress", self.inner.progress, **kw)

    def artifact(self, name, path, kind):
        return self._timed("artifact", self.inner.artifact, name, path, kind)

    def should_stop(self) -> bool:
        self.step_starts.append(time.perf_counter())
        self.step_cpu.append(time.thread_time())
        return self._timed("should_stop", self.inner.should_stop)

    def flush(self):
        return self._timed("flush", self.inner.flush)


# -- stores ------------------------------------------------------------------------------------------
class Store:
    """A migrated database and a session factory; each run gets its own claimed job."""

    def __init__(self, url: str) -> None:
        from api.db.session import make_engine, session_factory, upgrade

        upgrade(url)
        self.url = url
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)

    def new_lease(self, spec_json: dict, job_dir: Path):
        from api.db.jobs import create_job
        from api.db.leases import claim
        from api.settings import Settings

        with self.sessions() as s, s.begin():
            job_id = create_job(s, spec_json, name="reporting benchmark", max_attempts=Settings().max_attempts).id
        lease = claim(self.sessions, job_id, "bench-worker", lease_seconds=60.0, job_dir=job_dir)
        assert lease is not None
        return lease

    def metric_rows(self, job_id: int) -> int:
        from api.db.metrics import count_points

        with self.sessions() as s:
            return count_points(s, job_id)


# -- one run -----------------------------------------------------------------------------------------
def make_spec(args, log_every: int):
    from ssl_core.specs import PretrainSpec

    return PretrainSpec.model_validate({
        "method": {"name": "simclr"},
        "backbone": {"name": args.backbone, **({"width": args.width} if args.backbone == "convnet" else {})},
        "data": {"dataset": "synthetic", "image_size": 32, "subset": args.batch_size * args.steps},
        "epochs": args.epochs, "batch_size": args.batch_size, "device": args.device, "log_every": log_every,
        "seed": 0,
    })


def run_once(args, kind: str, log_every: int, store: Store | None, workdir: Path) -> dict:
    from api.settings import Settings
    from ssl_core.reporting import NullSink
    from ssl_core.train import pretrain
    from worker.sink import SqlSink

    spec = make_spec(args, log_every)
    job_dir = workdir / f"{kind}-{log_every}-{uuid.uuid4().hex[:6]}"
    background = {"flushes": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    inner: Any
    if store is None:
        inner = NullSink()
    else:
        settings = Settings()  # the deployment defaults: metric_flush_seconds, heartbeat_seconds
        lease = store.new_lease(spec.model_dump(mode="json"), job_dir)
        inner = SqlSink(lease, job_dir, flush_seconds=settings.metric_flush_seconds,
                        heartbeat_seconds=settings.heartbeat_seconds)
        flush = inner._flush

        def timed_flush(heartbeat: bool = False) -> None:  # the background thread's writes
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                flush(heartbeat=heartbeat)
            finally:
                if threading.current_thread() is not threading.main_thread():
                    background["flushes"] += 1
                    background["seconds"] += time.perf_counter() - t0
                    # CPU time: what it can take from the loop (the GIL); the rest is waiting on the database
                    background["cpu_seconds"] += time.thread_time() - c0

        inner._flush = timed_flush
        inner.start()
    sink = TimedSink(inner)
    t0 = time.perf_counter()
    result = pretrain(spec, job_dir, sink=sink, should_stop=sink.should_stop, resume=False)
    wall = time.perf_counter() - t0
    rows = None
    if store is not None:
        inner.close()
        rows = store.metric_rows(inner.lease.job_id)
    assert result.completed
    # in-epoch step intervals: consecutive should_stop stamps of the same epoch
    starts, cpu, per_epoch = sink.step_starts, sink.step_cpu, result.step // args.epochs
    assert per_epoch == args.steps, (per_epoch, args.steps)
    inside = [i for i in range(len(starts) - 1) if (i + 1) % per_epoch != 0]
    steps = [starts[i + 1] - starts[i] for i in inside]
    cpu_steps = [cpu[i + 1] - cpu[i] for i in inside]
    return {
        "store": kind, "log_every": log_every, "step_ms": statistics.fmean(steps) * 1e3,
        "step_ms_median": statistics.median(steps) * 1e3, "cpu_step_ms": statistics.fmean(cpu_steps) * 1e3,
        "in_step_ms_total": sum(steps) * 1e3,
        "seconds_by_call": sink.seconds,
        "in_step_blocking_us_per_step": sink.in_step_s / max(1, len(starts)) * 1e6,
        "boundary_blocking_ms_per_epoch": sink.boundary_s / args.epochs * 1e3,
        "background_flushes": background["flushes"], "background_ms": background["seconds"] * 1e3,
        "background_cpu_ms": background["cpu_seconds"] * 1e3,
        "metric_rows": rows, "calls": sink.calls, "wall_s": wall, "steps_timed": len(steps), "epochs": args.epochs,
    }


def machine(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": device, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def summarise(runs: list[dict], stores: list[str], log_everys: list[int]) -> list[dict]:
    def med(rs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    rows = []
    for le in log_everys:
        base = [r for r in runs if r["store"] == "null" and r["log_every"] == le]
        base_wall, base_cpu = med(base, "step_ms"), med(base, "cpu_step_ms")
        for kind in stores:
            rs = [r for r in runs if r["store"] == kind and r["log_every"] == le]
            wall, cpu = med(rs, "step_ms"), med(rs, "cpu_step_ms")
            # paired per repeat (the stores of one repeat ran back to back): the noise in the wall clock
            paired = [(r["step_ms"] - b["step_ms"]) / b["step_ms"] * 100 for r, b in zip(rs, base)]
            assert [r["repeat"] for r in rs] == [b["repeat"] for b in base]
            blocking_us = med(rs, "in_step_blocking_us_per_step")
            background_pct = statistics.median(r["background_cpu_ms"] / r["in_step_ms_total"] * 100 for r in rs)
            blocking_pct = blocking_us / 1e3 / wall * 100
            rows.append({
                "store": kind, "log_every": le, "step_ms": wall, "cpu_step_ms": cpu,
                "overhead_wall_pct": (wall - base_wall) / base_wall * 100,
                "overhead_wall_pct_paired": [min(paired), max(paired)],
                "overhead_cpu_pct": (cpu - base_cpu) / base_cpu * 100,
                "blocking_us_per_step": blocking_us, "blocking_pct": blocking_pct,
                # the sink's thread at most steals its own CPU time from the loop (the GIL)
                "background_cpu_pct": background_pct, "bound_pct": blocking_pct + background_pct,
                "background_wall_ms_per_run": med(rs, "background_ms"),
                "background_flushes_per_run": med(rs, "background_flushes"),
                "epoch_end_ms": med(rs, "boundary_blocking_ms_per_epoch"),
                "epoch_end_by_call_ms": {
                    k: statistics.median(r["seconds_by_call"].get(k, 0.0) for r in rs) * 1e3 / r0_epochs(rs)
                    for k in ("flush", "artifact")},
                "metric_rows_per_run": rs[0]["metric_rows"],
            })
    return rows


def r0_epochs(rs: list[dict]) -> int:
    return rs[0]["epochs"]


def print_table(rows: list[dict], info: dict) -> None:
    print(f"# reporting overhead: {info['spec']}")
    print(f"# machine: {info['machine']}")
    head = (f"{'store':<9} {'log_every':>9} {'step ms':>8} {'wall ovh %':>11} {'paired range %':>15} "
            f"{'cpu ms':>7} {'cpu ovh %':>9} {'blocking us':>11} {'blocking %':>10} {'bg %':>6} {'bound %':>8} "
            f"{'epoch-end ms':>12} {'rows':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        null = r["store"] == "null"
        lo, hi = r["overhead_wall_pct_paired"]
        rng = "-" if null else f"{lo:+.1f}..{hi:+.1f}"
        rows_s = "-" if r["metric_rows_per_run"] is None else str(r["metric_rows_per_run"])
        print(f"{r['store']:<9} {r['log_every']:>9} {r['step_ms']:>8.1f} {r['overhead_wall_pct']:>+11.2f} {rng:>15} "
              f"{r['cpu_step_ms']:>7.1f} {r['overhead_cpu_pct']:>+9.2f} {r['blocking_us_per_step']:>11.1f} "
              f"{r['blocking_pct']:>10.3f} {r['background_cpu_pct']:>6.3f} {r['bound_pct']:>8.3f} "
              f"{r['epoch_end_ms']:>12.1f} {rows_s:>5}")
    print("wall/cpu ovh: step time vs NullSink (wall clock; the training thread's CPU time). blocking: time in\n"
          "sink calls during the steps. bg: the sink thread's CPU time / step time (what it can take through\n"
          "the GIL). bound = blocking + bg. epoch-end: the loop's time in sink.flush + sink.artifact per epoch.")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--backbone", choices=["convnet", "resnet18"], default="convnet")
    p.add_argument("--width", type=int, default=8, help="convnet width")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=4, help="interleaved repeats per configuration; medians reported")
    p.add_argument("--log-every", type=int, action="append", default=None, help="default: 1 and 10")
    p.add_argument("--stores", default="null,sqlite,postgres")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: the training thread's CPU time is the whole step's compute; "
                        "0 = torch's default)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.batch_size * args.steps > SYNTHETIC_TRAIN:
        p.error(f"--batch-size x --steps must fit the {SYNTHETIC_TRAIN} synthetic training images")
    log_everys = args.log_every or [1, 10]
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if "null" not in stores:
        stores.insert(0, "null")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pretextlab-reporting-") as tmp, \
            (throwaway_database(prefix="pretextlab_reporting") if "postgres" in stores else nullcontext()) as pg_url:
        tmp_path = Path(tmp)
        os.environ.setdefault("PRETEXTLAB_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
        backends: dict[str, Store | None] = {"null": None}
        if "sqlite" in stores:
            backends["sqlite"] = Store(sqlite_file_url(tmp_path, "bench.sqlite"))
        if "postgres" in stores:
            backends["postgres"] = Store(pg_url)
        # warm-up (imports, allocator, first-call caches), not recorded
        run_once(args, "null", log_everys[0], None, tmp_path)
        runs = []
        for rep in range(args.repeats):
            for le in log_everys:
                for kind in stores[rep % len(stores):] + stores[:rep % len(stores)]:  # rotate who runs first
                    r = run_once(args, kind, le, backends[kind], tmp_path)
                    r["repeat"] = rep
                    runs.append(r)
                    print(f"  repeat {rep} log_every {le:>3} {kind:<9} step {r['step_ms']:.1f} ms", flush=True)
        for b in backends.values():
            if b is not None:
                b.engine.dispose()
    rows = summarise(runs, stores, log_everys)
    spec = make_spec(args, log_everys[0])
    info = {
        "spec": f"SimCLR, {args.backbone}" + (f" width {args.width}" if args.backbone == "convnet" else "")
                + f", 32 px synthetic, batch {args.batch_size}, {args.steps} steps x {args.epochs} epochs, "
                  f"{args.repeats} repeats, device {spec.device}",
        "machine": machine(args.device),
        "command": "python benchmarks/reporting.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print_table(rows, info)
    out = {"info": info, "summary": rows, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
