"""Data-parallel scaling: training images/s of the real trainer at 1, 2, 4, ... processes.

Every measurement goes through the launcher the service uses (``ssl_core.launch.run_ranks``:
torch.distributed's elastic launcher, gloo on CPU, NCCL on CUDA), one process per rank, with the
global batch fixed (``--batch-size``; each rank takes batch/N) unless ``--weak`` keeps the per-rank
batch fixed instead (global = N x batch, the usual way to scale out). Images/s is the trainer's own
``train/images_per_sec`` (rank 0, global images) read every ``log_every`` steps, after the first
epoch's warm-up; the median of the reads counts.

    efficiency(N) = throughput(N) / (N * throughput(1))

Rounds interleave the process counts (1, 2, 4, 1, 2, 4, ...) so a change in the machine's load hits
every count alike; the load is recorded around each measurement (``/proc/loadavg`` and the busy share
of all cores from ``/proc/stat``), because on a shared machine it is part of the result.

On CPU each rank gets ``--threads`` torch threads (default 1: a rank per core, as a GPU per rank).

    python benchmarks/scaling.py --device cpu --nproc 1,2 --rounds 2 --out scaling.json
    python benchmarks/scaling.py --device cuda --nproc 1,2,4,8 --backbone resnet50 --image-size 224 \\
        --batch-size 256 --weak --dataset synthetic --subset 20480
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class Rates:
    """A sink keeping rank 0's images/s reads after the warm-up epoch."""

    def __init__(self):
        self.values: list[float] = []

    def metrics(self, step, values, epoch=None):
        if epoch and "train/images_per_sec" in values:
            self.values.append(values["train/images_per_sec"])

    def progress(self, **kw):
        pass

    def artifact(self, *a):
        pass

    def should_stop(self):
        return False

    def flush(self):
        pass


def spec_for(args: argparse.Namespace, nproc: int):
    from ssl_core.specs import PretrainSpec

    batch = args.batch_size * nproc if args.weak else args.batch_size
    return PretrainSpec.model_validate({
        "method": {"name": args.method}, "backbone": {"name": args.backbone, **({"width": args.width}
                                                                                if args.backbone == "convnet" else {})},
        "data": {"dataset": args.dataset, "image_size": args.image_size, "subset": args.subset * (nproc if args.weak else 1)},
        "epochs": args.epochs, "batch_size": batch, "device": args.device, "log_every": args.log_every,
        "checkpoint_every": args.epochs, "channels_last": args.device == "cuda",
    })


def measure(args: argparse.Namespace, nproc: int) -> dict:
    from ssl_core.launch import run_ranks

    rates = Rates()
    busy0, total0 = cpu_busy()
    load0, t0 = loadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        devices = list(range(nproc)) if args.device == "cuda" else None
        run_ranks(spec_for(args, nproc), out, nproc, devices, rates, lambda: False, resume=False)
    busy1, total1 = cpu_busy()
    ips = statistics.median(rates.values) if rates.values else float("nan")
    return {"nproc": nproc, "images_per_sec": ips, "reads": len(rates.values), "wall_s": time.perf_counter() - t0,
            "load_before": load0, "load_after": loadavg(),
            "cpu_busy_share": (busy1 - busy0) / max(1, total1 - total0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--nproc", default="1,2", help="process counts, comma-separated")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--method", default="simclr")
    p.add_argument("--backbone", default="convnet")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--subset", type=int, default=1536, help="images per epoch (x N with --weak)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (per rank with --weak)")
    p.add_argument("--weak", action="store_true", help="keep the per-rank batch fixed instead of the global one")
    p.add_argument("--epochs", type=int, default=2, help="the first is warm-up")
    p.add_argument("--log-every", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU: torch threads per rank")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.device == "cpu":
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the ranks inherit it (ssl_core.distributed)
    counts = [int(n) for n in args.nproc.split(",")]

    runs = []
    for r in range(args.rounds):
        for n in counts:
            m = measure(args, n) | {"round": r}
            runs.append(m)
            print(json.dumps(m), flush=True)
    best = {n: statistics.median([m["images_per_sec"] for m in runs if m["nproc"] == n]) for n in counts}
    base = best[counts[0]] / counts[0] if counts[0] else float("nan")
    summary = {n: {"images_per_sec": round(v, 1), "efficiency": round(v / (n * base), 3)} for n, v in best.items()}
    result = {"args": vars(args) | {"out": str(args.out)}, "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": runs, "summary": summary}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
