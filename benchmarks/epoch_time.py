"""Wall time of one SimCLR pretraining epoch through the real trainer.

Runs ``ssl_core.train.pretrain`` -- the loop jobs run: data on the device, augmentation in
the step (``SSLMethod.augment_views``), channels_last, the precision ``auto`` picks (bf16 on
GPUs that support it), the optimizer the spec's defaults pick (LARS), checkpoints at every
epoch end -- on N synthetic 32x32 RGB images (default 50,000: the size of CIFAR-10's training
set; ``ssl_core.data``'s synthetic train split is enlarged to N for this run, because the real
CIFAR-10 cannot be downloaded here), ResNet-18 with the CIFAR stem, batch 512, two views per
image, the kNN monitor off. Reports, per epoch:

* ``epoch_s``  -- from the end of the previous epoch (its checkpoint written) to the end of
  this one: what a user waits;
* ``steps_s``  -- from the start of the epoch's first step to the start of the next epoch's
  first step minus the epoch-end work, i.e. the steps alone (stamped by the loop's per-step
  ``should_stop()`` call: the first to the last step start, scaled by steps / (steps - 1)).

The first epoch includes compilation (``--compile``) and cuDNN autotuning; the target is read
from the later ones. The target: under 3 s per epoch on one H100-class GPU.

    python benchmarks/epoch_time.py --device cuda --compile --out epoch_gpu.json
    python benchmarks/epoch_time.py --device cpu --images 2048 --backbone convnet --batch-size 256 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ssl_core import data as D  # noqa: E402
from ssl_core import specs  # noqa: E402
from ssl_core.reporting import NullSink  # noqa: E402
from ssl_core.runtime import resolve_device, resolve_precision  # noqa: E402
from ssl_core.train import pretrain  # noqa: E402


class StampSink(NullSink):
    """NullSink that stamps the start of every step (should_stop) and every epoch end (flush)."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.epoch_ends: list[float] = []

    def should_stop(self) -> bool:
        self.steps.append(time.perf_counter())
        return False

    def flush(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.epoch_ends.append(time.perf_counter())
        prev = self.epoch_ends[-2] if len(self.epoch_ends) > 1 else (self.steps[0] if self.steps else None)
        if prev is not None:  # as it goes: the numbers survive a crash after training
            print(f"  flush {len(self.epoch_ends)}: {self.epoch_ends[-1] - prev:.2f} s since the previous one", flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--backbone", choices=["resnet18", "convnet"], default="resnet18")
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--compile", action="store_true", help="the spec's compile: true (backbone + augmentation)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    D.SYNTHETIC_SIZES["train"] = args.images  # this process only: see the module docstring
    device = resolve_device(args.device)
    spec = specs.PretrainSpec(
        method={"name": "simclr"}, backbone={"name": args.backbone}, data={"dataset": "synthetic"},
        batch_size=args.batch_size, epochs=args.epochs, device=args.device, precision=args.precision,
        compile=args.compile, log_every=50, eval={"monitor": {"every_epochs": 0}},
    )
    sink = StampSink()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = pretrain(spec, Path(out), sink=sink, resume=False)
    steps_per_epoch = args.images // args.batch_size
    epochs = []
    prev_end = None
    for e, end in enumerate(sink.epoch_ends[: args.epochs]):  # the last flush follows the backbone export
        first = sink.steps[e * steps_per_epoch]
        last = sink.steps[(e + 1) * steps_per_epoch - 1]  # start of the epoch's last step
        epochs.append({
            "epoch": e + 1,
            "epoch_s": end - (prev_end if prev_end is not None else first),
            "steps_s": (last - first) * steps_per_epoch / max(1, steps_per_epoch - 1),
        })
        prev_end = end
    amp, _ = resolve_precision(args.precision, device)
    info = {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "python": platform.python_version(), "nproc": os.cpu_count(),
        "precision": str(amp or "fp32"), "platform": platform.platform(),
    }
    res = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "steps_per_epoch": steps_per_epoch,
           "epochs": epochs, "total_s": time.perf_counter() - t_start, "final_loss": result.metrics.get("epoch/loss")}
    print(f"device {info['device']}{' (' + info['gpu'] + ')' if info['gpu'] else ''}, {info['precision']}, "
          f"{args.backbone}, {args.images} images, batch {args.batch_size}, compile {args.compile}")
    for ep in epochs:
        print(f"  epoch {ep['epoch']}: {ep['epoch_s']:.2f} s (steps {ep['steps_s']:.2f} s, "
              f"{args.images * 2 / ep['epoch_s']:.0f} views/s)")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
