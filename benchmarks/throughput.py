"""Input-pipeline and SimCLR training throughput: pretextlab's device-side pipeline vs the usual one.

Three measurements, in one run, on the same device and cores:

(a) augmentation alone -- two SimCLR views of 32x32 RGB uint8 images, images/s:
    ours  = ssl_core.augment.build_pipeline(default SimCLR ops) on whole batches on the device,
            both views in one call (as SSLMethod.augment_views); on a CPU with several torch
            threads, also with one thread ("ours_1_thread"); with --compile, also with
            Pipeline.compile() ("ours_compiled", what the spec's compile: true runs);
    usual = torchvision per-sample transforms on PIL images (RandomResizedCrop(32, (0.08, 1)),
            flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, ToTensor) in a
            DataLoader with --workers processes (and, for reference, in the main process).
(b) SimCLR training, same backbone, head, NT-Xent, optimizer (the spec's LARS) and batch:
    ours  = the method's training_step on uint8 data already on the device;
    usual = a torch DataLoader + the per-sample torchvision pipeline feeding the same step.
(c) the ceiling: the same step on pre-made (already augmented) tensors.

Prints the device and thread counts and the ratios (a) ours/usual, (b) ours/usual, (b) ours/(c);
writes everything as JSON with --out. Defaults are small enough for a 2-core CPU; use e.g.
``--batch-size 512 --steps 50 --aug-images 50000`` for full runs on a GPU.

    python benchmarks/throughput.py --device cpu --backbone convnet --out throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_core import specs  # noqa: E402
from ssl_core.augment import build_pipeline  # noqa: E402
from ssl_core.data import make_synthetic  # noqa: E402
from ssl_core.losses import nt_xent  # noqa: E402
from ssl_core.runtime import autocast, resolve_device, resolve_precision  # noqa: E402

SIZE = 32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def usual_transform():
    """The usual per-sample SimCLR CIFAR pipeline (torchvision, PIL)."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(SIZE, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToTensor(),
    ])


class TwoViews(torch.utils.data.Dataset):
    """PIL images -> (view1, view2) float tensors by the usual per-sample transform."""

    def __init__(self, pil_images: list, transform) -> None:
        self.images, self.transform = pil_images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        return self.transform(img), self.transform(img)


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    arr = images.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def usual_loader(pil: list, batch: int, num_samples: int, workers: int, device: torch.device, seed: int):
    sampler = torch.utils.data.RandomSampler(
        range(len(pil)), replacement=True, num_samples=num_samples, generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(
        TwoViews(pil, usual_transform()), batch_size=batch, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


# ---------------------------------------------------------------------------
# (a) augmentation alone
def bench_augment(images: torch.Tensor, args, device: torch.device) -> dict:
    ops = specs.default_augment(specs.SimCLRSpec(), SIZE)
    pipe = build_pipeline(ops, SIZE)
    data = images.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    b = args.batch_size
    n = max(b, args.aug_images // b * b)  # whole batches: a smaller last one would recompile inside a timed round
    pil = to_pil(images)
    out: dict = {"images": n, "views_per_image": 2, "usual_workers": args.workers, "rounds": args.rounds}

    def timed(pipeline) -> Callable[[], float]:
        def run(count: int) -> None:
            for i in range(0, count, b):
                idx = torch.randint(0, data.shape[0], (min(b, count - i),), device=device, generator=g)
                x = data[idx]
                pipeline(x.repeat(2, 1, 1, 1), g)  # both views in one call, as SSLMethod.augment_views

        def measure() -> float:
            run(2 * b)  # warm-up (and, compiled, the first compilation)
            sync(device)
            t = time.perf_counter()
            run(n)
            sync(device)
            return n / (time.perf_counter() - t)
        return measure

    ours = timed(pipe)

    def usual() -> float:
        """The usual pipeline as people run it: DataLoader worker processes, pinned batches."""
        it = iter(usual_loader(pil, b, n + 2 * b, args.workers, device, seed=0))
        for _ in range(2):  # workers started, queue primed
            next(it)
        t, seen = time.perf_counter(), 0
        for x1, x2 in it:
            x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
            seen += x1.shape[0]
        sync(device)
        return seen / (time.perf_counter() - t)

    def usual_main_process() -> float:
        tf, m = usual_transform(), min(n, args.single_process_images)
        t = time.perf_counter()
        for i in range(m):
            tf(pil[i % len(pil)]), tf(pil[i % len(pil)])
        return m / (time.perf_counter() - t)

    modes = {"ours": ours, "usual": usual, "usual_main_process": usual_main_process}
    if args.compile != "none":  # the spec's compile: true (Pipeline.compile: the pointwise ops fused)
        modes["ours_compiled"] = timed(build_pipeline(ops, SIZE).compile())
    threads = torch.get_num_threads()
    if device.type == "cpu" and threads > 1:
        # the batched ops on 32x32 images are small (0.4 M values per op at batch 128): with
        # several intra-op threads the fork/join of every op can cost more than it saves on a
        # shared CPU, so ours is also measured with one thread (one core, against the usual
        # pipeline's `--workers` processes)
        def ours_1_thread() -> float:
            torch.set_num_threads(1)
            try:
                return ours()
            finally:
                torch.set_num_threads(threads)

        modes["ours_1_thread"] = ours_1_thread
    out["torch_threads"] = threads
    runs = interleaved(modes, args.rounds)
    for k, v in runs.items():
        out[f"{k}_images_per_s"] = float(np.median(v))
        out[f"{k}_images_per_s_rounds"] = v
    return out


def interleaved(modes: dict, rounds: int) -> dict[str, list[float]]:
    """Each mode once per round, rounds interleaved, so a load change on a shared machine
    hits every mode alike; callers report the median over rounds."""
    runs: dict[str, list[float]] = {k: [] for k in modes}
    for _ in range(rounds):
        for k, fn in modes.items():
            runs[k].append(fn())
    return runs


# ---------------------------------------------------------------------------
# (b), (c) training
def make_method(args, device: torch.device):
    from ssl_core.optim import build_optimizer
    from ssl_core.registry import build_method

    spec = specs.PretrainSpec(
        method={"name": "simclr"}, backbone={"name": args.backbone}, data={"dataset": "synthetic"},
        batch_size=args.batch_size, epochs=100, device=args.device, precision=args.precision,
    )
    torch.manual_seed(0)
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    method = build_method(spec).to(device).to(memory_format=fmt)
    method.train()
    if args.compile == "all":  # the same model in every mode; the trainer does this for compile: true
        method.backbone.compile()
    return spec, method, build_optimizer(method, spec.optim)


def timed_steps(step, batches, warmup: int, steps: int, device: torch.device, batch: int) -> float:
    """images/s over `steps` optimizer steps after `warmup` steps; one sync at each end."""
    for _ in range(warmup):
        step(next(batches))
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    sync(device)
    return steps * batch / (time.perf_counter() - t)


def bench_train(images: torch.Tensor, args, device: torch.device) -> dict:
    amp_dtype, _ = resolve_precision(args.precision, device)
    b, total = args.batch_size, args.warmup + args.steps
    out: dict = {"backbone": args.backbone, "batch_size": b, "steps": args.steps, "warmup": args.warmup,
                 "rounds": args.rounds, "precision": str(amp_dtype or "fp32"), "usual_workers": args.workers}
    data = images.to(device)
    g = torch.Generator(device=device).manual_seed(1)
    pil = to_pil(images)

    def optimize(opt, loss) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def two_view_step(method, opt):
        """The step without augmentation: views arrive ready (usual pipeline, ceiling)."""
        def step(views) -> None:
            x1, x2 = views
            with autocast(device, amp_dtype):
                h = method.backbone(method.normalize(torch.cat([x1, x2], 0)))
                z = method.projection_head(h)
                loss = nt_xent(z[: x1.shape[0]], z[x1.shape[0]:], method.temperature)
            optimize(opt, loss)
        return step

    # ours: uint8 on the device, the method's own training_step (augmentation included)
    _, m_ours, o_ours = make_method(args, device)
    if args.compile != "none":
        m_ours.pipeline.compile()

    def ours_step(x) -> None:
        with autocast(device, amp_dtype):
            loss, _ = m_ours.training_step(x, None, g)
        optimize(o_ours, loss)

    def ours_batches():
        while True:
            yield data[torch.randint(0, data.shape[0], (b,), device=device, generator=g)]

    # usual: DataLoader workers + per-sample torchvision transforms, same model/loss/optimizer
    _, m_usual, o_usual = make_method(args, device)
    usual_step = two_view_step(m_usual, o_usual)

    def usual_batches():
        for x1, x2 in usual_loader(pil, b, b * total, args.workers, device, seed=1):
            yield x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)

    # ceiling: the same step on pre-made augmented tensors (4 distinct batches, cycled)
    _, m_ceil, o_ceil = make_method(args, device)
    ceil_step = two_view_step(m_ceil, o_ceil)
    premade = []
    with torch.no_grad():
        for k in range(4):
            x = data[(torch.arange(b, device=device) + k * b) % data.shape[0]]
            premade.append((m_ceil.augment(x, g), m_ceil.augment(x, g)))

    def ceiling_batches():
        k = 0
        while True:
            yield premade[k % len(premade)]
            k += 1

    runs = interleaved({
        "ours": lambda: timed_steps(ours_step, ours_batches(), args.warmup, args.steps, device, b),
        "usual": lambda: timed_steps(usual_step, usual_batches(), args.warmup, args.steps, device, b),
        "ceiling": lambda: timed_steps(ceil_step, ceiling_batches(), args.warmup, args.steps, device, b),
    }, args.rounds)
    for k, v in runs.items():
        out[f"{k}_images_per_s"] = float(np.median(v))
        out[f"{k}_images_per_s_rounds"] = v
    return out


# ---------------------------------------------------------------------------
def machine(device: torch.device) -> dict:
    info = {
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = list(os.getloadavg())
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--backbone", choices=["resnet18", "convnet"], default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps per mode")
    p.add_argument("--aug-images", type=int, default=2048, help="images for the augmentation benchmark")
    p.add_argument("--single-process-images", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions per mode; medians reported")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers of the usual pipeline")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--skip", choices=["augment", "train"], action="append", default=[])
    p.add_argument("--compile", choices=["none", "augment", "all"], default="none",
                   help="augment: also measure (a) with Pipeline.compile() and compile ours' augmentation in (b); "
                        "all: also torch.compile the backbone of every (b)/(c) model (the spec's compile: true)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images, _ = make_synthetic(max(2000, args.batch_size), seed=0, size=SIZE)  # (N, 3, 32, 32) uint8
    result: dict = {"machine": machine(device), "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:]))}
    m = result["machine"]
    print(f"device {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, torch {m['torch']}, "
          f"nproc {m['nproc']}, torch threads {m['torch_threads']}, usual-pipeline workers {args.workers}")

    ratios: dict = {}
    if "augment" not in args.skip:
        a = bench_augment(images, args, device)
        result["augment"] = a
        ratios["augment_ours_over_usual"] = a["ours_images_per_s"] / a["usual_images_per_s"]
        print(f"(a) augmentation, 2 views of 32x32: ours {a['ours_images_per_s']:.0f} img/s | usual "
              f"({args.workers} workers) {a['usual_images_per_s']:.0f} img/s | usual, main process "
              f"{a['usual_main_process_images_per_s']:.0f} img/s | ours/usual {ratios['augment_ours_over_usual']:.2f}x")
        if "ours_1_thread_images_per_s" in a:
            ratios["augment_ours_1_thread_over_usual"] = a["ours_1_thread_images_per_s"] / a["usual_images_per_s"]
            print(f"    ours with 1 torch thread {a['ours_1_thread_images_per_s']:.0f} img/s | ours (1 thread)/usual "
                  f"{ratios['augment_ours_1_thread_over_usual']:.2f}x")
        if "ours_compiled_images_per_s" in a:
            ratios["augment_ours_compiled_over_usual"] = a["ours_compiled_images_per_s"] / a["usual_images_per_s"]
            print(f"    ours compiled (Pipeline.compile) {a['ours_compiled_images_per_s']:.0f} img/s | "
                  f"ours compiled/usual {ratios['augment_ours_compiled_over_usual']:.2f}x")
    if "train" not in args.skip:
        t = bench_train(images, args, device)
        result["train"] = t
        ratios["train_ours_over_usual"] = t["ours_images_per_s"] / t["usual_images_per_s"]
        ratios["train_ours_over_ceiling"] = t["ours_images_per_s"] / t["ceiling_images_per_s"]
        print(f"(b) SimCLR training, {args.backbone}, batch {args.batch_size}, {t['precision']}: ours "
              f"{t['ours_images_per_s']:.1f} img/s | usual {t['usual_images_per_s']:.1f} img/s | "
              f"(c) ceiling {t['ceiling_images_per_s']:.1f} img/s")
        print(f"    ours/usual {ratios['train_ours_over_usual']:.2f}x, ours/ceiling "
              f"{ratios['train_ours_over_ceiling']:.2f}")
    result["ratios"] = ratios
    if hasattr(os, "getloadavg"):
        m["loadavg_at_end"] = list(os.getloadavg())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
