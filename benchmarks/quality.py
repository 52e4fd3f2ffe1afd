"""Representation quality of the seven configurations on Fashion-MNIST, beside baselines.

For each of rotation, exemplar, relative_position, jigsaw, simclr, moco_v1, moco_v2: pretrain from
``examples/<name>.json`` with the budget given here, then evaluate the exported backbone with the
weighted kNN (k=200, t=0.1) and the linear probe, exactly as an evaluation job would
(``ssl_core.features.extract_features``, ``ssl_core.evaluate``'s knn_accuracy and linear_probe;
features extracted once per backbone and shared by the two protocols). Beside them: the same
backbone at random init, raw pixels, and a supervised model (the same backbone + a linear head
trained with cross-entropy on the same labelled subset for the same number of epochs, crop + flip),
evaluated the same way.

    .venv/bin/python benchmarks/quality.py                      # CPU budget (9-15 min on 2 shared cores)
    .venv/bin/python benchmarks/quality.py --device cuda --epochs 200 --train-subset 60000 \
        --backbone resnet18 --eval-train-subset 60000 --test-subset 10000 --linear-epochs 100

Writes ``<out>/quality.json`` and ``<out>/quality.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ["rotation", "exemplar", "relative_position", "jigsaw", "simclr", "moco_v1", "moco_v2"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="pretraining epochs per method")
    p.add_argument("--train-subset", type=int, default=4096, help="pretraining images (seeded subset of train)")
    p.add_argument("--backbone", default="convnet", choices=["convnet", "resnet18", "resnet34", "resnet50"])
    p.add_argument("--width", type=int, default=32, help="convnet width")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--eval-train-subset", type=int, default=5000, help="kNN bank / probe training images")
    p.add_argument("--test-subset", type=int, default=2000, help="test images (None = all)")
    p.add_argument("--linear-epochs", type=int, default=20)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality", help="results and run folders (git-ignored)")
    return p.parse_args(argv)


def pretrain_spec(name: str, args):
    from ssl_core.specs import ExemplarSpec, PretrainSpec

    raw = json.loads((ROOT / "examples" / f"{name}.json").read_text())
    raw["backbone"] = {"name": args.backbone, **({"width": args.width} if args.backbone == "convnet" else {})}
    raw["data"] = {**raw.get("data", {}), "dataset": "fashion_mnist", "subset": args.train_subset}
    raw.update(epochs=args.epochs, batch_size=args.batch_size, device=args.device, seed=args.seed, log_every=20)
    raw["eval"] = {"monitor": {"every_epochs": 0}}
    raw.pop("optim", None)  # the paper's recipe, re-scaled to this batch size and epoch count
    if raw["method"]["name"] == "rotation":
        raw["batch_size"] = max(2, args.batch_size // 4)  # 4 rotated copies per image: same inputs per step
    if raw["method"]["name"] == "moco":
        raw["method"]["queue_size"] = min(raw["method"].get("queue_size", 4096), args.batch_size * 16,
                                          (args.train_subset // args.batch_size) * args.batch_size)
    if raw["method"]["name"] == "exemplar":
        # N surrogate classes = N seed images, K transformed samples of each per epoch (N*K samples);
        # epochs scaled so it sees as many images as the others (epochs x train_subset in all)
        m = ExemplarSpec.model_validate(raw["method"])
        n = min(m.num_classes, args.train_subset)
        raw["method"]["num_classes"] = n
        raw["epochs"] = max(1, round(args.epochs * args.train_subset / (n * m.samples_per_class)))
        raw["batch_size"] = min(raw["batch_size"], n * m.samples_per_class)
    if raw["method"]["name"] == "simclr":
        # SimCLR App. B.1: square-root lr scaling, 0.075 x sqrt(BS), is better for small batches and short runs
        optim = PretrainSpec.model_validate(raw).optim.model_dump(mode="json")
        raw["optim"] = {**optim, "lr": 0.075 * math.sqrt(raw["batch_size"])}
    return PretrainSpec.model_validate(raw)


def load_eval_data(args):
    """The labelled bank/probe set and the test set, loaded once for every backbone."""
    from ssl_core.data import load_dataset

    train = load_dataset("fashion_mnist", "train", subset=args.eval_train_subset, seed=args.seed)
    test = load_dataset("fashion_mnist", "test", subset=args.test_subset, seed=args.seed)
    return train, test


def evaluate_backbone(args, data, *, weights: Path | None = None, baseline: str | None = None) -> dict:
    """kNN (k=200, t=0.1) and linear probe top-1, with the functions an evaluation job uses.

    Features are extracted once per backbone and shared by both protocols.
    """
    import torch

    from ssl_core.backbones import build_backbone
    from ssl_core.backbone_file import load_backbone
    from ssl_core.evaluate import knn_accuracy, linear_probe
    from ssl_core.features import extract_features, raw_pixel_features
    from ssl_core.normalization import dataset_stats
    from ssl_core.runtime import resolve_device, resolve_precision

    device = resolve_device(args.device)
    amp, _ = resolve_precision("auto", device)
    train, test = data
    mean, std = dataset_stats("fashion_mnist", 1)
    t = time.time()
    if baseline == "raw_pixels":
        f_train, f_test = (raw_pixel_features(x.images, mean, std, device) for x in (train, test))
    else:
        if weights is not None:
            backbone, meta = load_backbone(weights, device)
        else:
            torch.manual_seed(args.seed)
            backbone = build_backbone(backbone_spec(args), 1, 28).to(device)
        f_train, f_test = (extract_features(backbone, x.images, mean, std, 512, device, amp) for x in (train, test))
    y_train, y_test = train.labels.to(device), test.labels.to(device)
    res = {"feature_dim": int(f_train.shape[1]), "features_s": round(time.time() - t, 1)}
    t = time.time()
    res["knn"] = knn_accuracy(f_train, y_train, f_test, y_test, k=200, temperature=0.1, num_classes=10)
    res["knn_s"] = round(time.time() - t, 1)
    t = time.time()
    res["linear"] = linear_probe(f_train, y_train, f_test, y_test, epochs=args.linear_epochs, lr=0.1,
                                 batch_size=256, weight_decay=0.0, num_classes=10, seed=args.seed).top1
    res["linear_s"] = round(time.time() - t, 1)
    return res


def backbone_spec(args):
    from ssl_core.specs import BackboneSpec

    return BackboneSpec(name=args.backbone, **({"width": args.width} if args.backbone == "convnet" else {}))


def train_supervised(args, out: Path) -> tuple[Path, float, float]:
    """The same backbone + linear head trained with cross-entropy on the pretraining subset."""
    import torch

    from ssl_core.backbones import build_backbone
    from ssl_core.data import load_dataset
    from ssl_core.backbone_file import backbone_metadata, export_backbone
    from ssl_core.evaluate import finetune
    from ssl_core.normalization import dataset_stats
    from ssl_core.runtime import resolve_device, resolve_precision, seed_everything

    seed_everything(args.seed)
    device = resolve_device(args.device)
    amp, scaler = resolve_precision("auto", device)
    train = load_dataset("fashion_mnist", "train", subset=args.train_subset, seed=args.seed)
    test = load_dataset("fashion_mnist", "test", subset=args.test_subset, seed=args.seed)
    bspec = backbone_spec(args)
    size, channels = train.images.shape[-1], train.images.shape[1]
    backbone = build_backbone(bspec, channels, size)
    mean, std = dataset_stats("fashion_mnist", channels)
    t = time.time()
    r = finetune(backbone, train.images, train.labels, test.images, test.labels, mean=mean, std=std,
                 num_classes=10, epochs=args.epochs, lr=0.1 * args.batch_size / 256, batch_size=args.batch_size,
                 weight_decay=5e-4, augment=True, seed=args.seed, device=device, amp_dtype=amp, use_scaler=scaler)
    wall = time.time() - t
    meta = backbone_metadata("{}", bspec, backbone.feature_dim, channels, size, mean, std, "supervised",
                             args.epochs, "fashion_mnist")
    path = export_backbone(out / "backbone.safetensors", backbone, meta)
    return path, wall, r.top1


def markdown(rows: list[dict], args, machine: str) -> str:
    def pct(v):
        return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"

    lines = [
        "| method | epochs | pretrain wall (s) | kNN top-1 (%) | linear top-1 (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        wall = f"{r['wall_s']:.0f}" if r.get("wall_s") is not None else "-"
        lines.append(f"| {r['method']} | {r.get('epochs', '-')} | {wall} | {pct(r.get('knn'))} | {pct(r.get('linear'))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ssl_core.reporting import NullSink
    from ssl_core.specs import method_label
    from ssl_core.train import pretrain

    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda" else "cpu"
    machine = (torch.cuda.get_device_name(0) if device == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    rows: list[dict] = []
    t_all = time.time()
    data = load_eval_data(args)

    def save():
        payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "machine": machine, "torch": torch.__version__, "rows": rows,
                   "total_wall_s": round(time.time() - t_all, 1)}
        (args.out / "quality.json").write_text(json.dumps(payload, indent=2))
        (args.out / "quality.md").write_text(markdown(rows, args, machine))

    for name in [m for m in args.methods.split(",") if m]:
        spec = pretrain_spec(name, args)
        run_dir = args.out / name
        t = time.time()
        result = pretrain(spec, run_dir, sink=NullSink(), resume=False)
        wall = time.time() - t
        row = {"method": method_label(spec), "epochs": spec.epochs, "wall_s": round(wall, 1),
               "final_loss": result.final_loss, "pretext_acc": result.metrics.get("train/pretext_acc"),
               "batch_size": spec.batch_size, "images": spec.data.subset}
        row.update(evaluate_backbone(args, data, weights=result.backbone_path))
        rows.append(row)
        print(json.dumps(row), flush=True)
        save()

    if not args.no_baselines:
        for baseline in ("random_init", "raw_pixels"):
            row = {"method": f"baseline: {baseline.replace('_', ' ')}", "epochs": 0, "wall_s": None}
            row.update(evaluate_backbone(args, data, baseline=baseline))
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()
        path, wall, e2e_top1 = train_supervised(args, args.out / "supervised")
        row = {"method": "supervised (cross-entropy)", "epochs": args.epochs, "wall_s": round(wall, 1),
               "end_to_end_top1": e2e_top1}
        row.update(evaluate_backbone(args, data, weights=path))
        rows.append(row)
        print(json.dumps(row), flush=True)
        save()

    save()
    print()
    print(markdown(rows, args, machine))
    print(f"machine: {machine}; total {time.time() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
