"""Artifact store benchmark: upload/download throughput, and what storing a checkpoint costs a run
with the S3 store compared with the filesystem store.

Against an S3-compatible server it starts (moto_server, a child process; or ``--endpoint`` for a
real MinIO/S3 with credentials in the usual AWS variables) and a folder on the local disk:

* throughput -- ``put`` and ``get`` of files of ``--sizes-mb`` (median MB/s over ``--repeats``),
  for the S3 store and for the filesystem store copying from a worker's scratch folder (the
  shared-filesystem case: NFS would be the disk here plus the network);
* per-checkpoint overhead -- what the worker does after each checkpoint write
  (``worker.artifact_sync.Publisher`` on the ``checkpoints/`` folder): with the filesystem store the
  file is already in place (a no-op); with S3 it is an upload (multipart above 64 MiB). Reported in
  seconds per checkpoint, and as the share of an epoch of ``--epoch-s`` seconds.

    python benchmarks/storage.py --sizes-mb 1,16,128 --repeats 3 --out benchmarks/results/storage.json

moto keeps objects in its own Python process's memory: its throughput is a floor for a real
MinIO on the same machine, not a measure of one.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssl_core.storage import ArtifactStore, open_store  # noqa: E402
from ssl_core.storage.local import FileStore  # noqa: E402
from worker.artifact_sync import Publisher  # noqa: E402

MB = 1 << 20


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(store: ArtifactStore, src: Path, work: Path, repeats: int) -> dict[str, float]:
    size = src.stat().st_size / MB
    up, down = [], []
    for i in range(repeats):
        os.utime(src)  # a new mtime: put_changed would skip an unchanged file, put never does
        up.append(size / timed(lambda: store.put(f"bench/{src.name}", src)))
        dest = work / f"down-{i}-{src.name}"
        down.append(size / timed(lambda: store.get(f"bench/{src.name}", dest)))
        dest.unlink()
    return {"upload_mb_s": round(statistics.median(up), 1), "download_mb_s": round(statistics.median(down), 1)}


def checkpoint_overhead(store: ArtifactStore, job_dir: Path, size_mb: int, repeats: int) -> float:
    """Median seconds the worker spends storing one checkpoint of ``size_mb`` after writing it."""
    ck = job_dir / "checkpoints" / "last.safetensors"
    ck.parent.mkdir(parents=True, exist_ok=True)
    publish = Publisher(store, 1, job_dir)
    times = []
    for _ in range(repeats):
        ck.write_bytes(os.urandom(size_mb * MB))  # the trainer's write, not timed: both stores do it
        times.append(timed(lambda: publish("checkpoints/last.safetensors", ck, "checkpoint")))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="1,16,128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epoch-s", type=float, default=60.0, help="epoch length the overhead is compared with")
    ap.add_argument("--endpoint", default=None, help="a running S3 endpoint (default: start moto_server)")
    ap.add_argument("--bucket", default="pretextlab-bench")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "storage.json"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes_mb.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="pretextlab-storage-"))
    server = None
    if args.endpoint is None:
        from tests.support.objstore import MotoS3

        server = MotoS3(work).start()
        os.environ.update(server.env())
        server.create_bucket(args.bucket)
    else:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint
    rows = []
    try:
        s3 = open_store(f"s3://{args.bucket}/bench")
        fs_store = FileStore(work / "shared")
        for size in sizes:
            src = work / f"blob-{size}mb.bin"
            src.write_bytes(os.urandom(size * MB))
            row = {"size_mb": size, "s3": throughput(s3, src, work, args.repeats),
                   "filesystem_copy": throughput(fs_store, src, work, args.repeats)}
            # per checkpoint: the filesystem store's job folder *is* the store (no copy at all)
            in_place = FileStore(work / "fs-root")
            row["checkpoint_s"] = {
                "filesystem": round(checkpoint_overhead(in_place, work / "fs-root" / "jobs" / "1", size, args.repeats), 4),
                "s3": round(checkpoint_overhead(s3, work / "scratch" / "jobs" / "1", size, args.repeats), 4),
            }
            row["s3_overhead_share_of_epoch"] = round(
                (row["checkpoint_s"]["s3"] - row["checkpoint_s"]["filesystem"]) / args.epoch_s, 4)
            rows.append(row)
            src.unlink()
            print(json.dumps(row), flush=True)
    finally:
        if server is not None:
            server.stop()
    report = {"rows": rows, "config": vars(args), "server": "moto_server" if server else args.endpoint,
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{'size MB':>8} {'S3 up MB/s':>11} {'S3 down MB/s':>13} {'FS copy MB/s':>13} "
          f"{'ckpt FS s':>10} {'ckpt S3 s':>10}")
    for r in rows:
        print(f"{r['size_mb']:>8} {r['s3']['upload_mb_s']:>11} {r['s3']['download_mb_s']:>13} "
              f"{r['filesystem_copy']['upload_mb_s']:>13} {r['checkpoint_s']['filesystem']:>10} {r['checkpoint_s']['s3']:>10}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
