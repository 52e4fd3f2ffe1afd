"""Representation quality of the seven configurations on Fashion-MNIST, beside baselines.

For each of rotation, exemplar, relative_position, jigsaw, simclr, moco_v1, moco_v2: pretrain from
``examples/<name>.json`` with the budget given here, then evaluate the exported backbone with the
weighted kNN (k=200, t=0.1) and the linear probe, exactly as an evaluation job would
(``ssl_core.features.extract_features``, ``ssl_core.evaluate``'s knn_accuracy and linear_probe;
features extracted once per backbone and shared by the two protocols). Beside them: the same
backbone at random init, raw pixels, and a supervised model (the same backbone + a linear head
trained with cross-entropy on the same labelled images for the same number of epochs, crop + flip),
evaluated the same way.

Each (row, seed) is one entry of the results JSON, written atomically as soon as it finishes; a
run given an existing results file skips the entries already in it, so a table too long for one
sitting is completed over several runs (the file also records the budget, and a run with another
budget is refused rather than mixed in). The table gives mean ± std over the seeds present.

    .venv/bin/python benchmarks/quality.py                             # small budget, seed 0 (10-15 min)
    .venv/bin/python benchmarks/quality.py --seeds 0,1,2               # small budget, 3 seeds
    .venv/bin/python benchmarks/quality.py --budget full --rows simclr,moco_v2,raw_pixels,random_init \
        --results docs/quality_full.json                               # all 60,000 training images
    .venv/bin/python benchmarks/quality.py --device cuda --epochs 200 --train-subset 60000 \
        --backbone resnet18 --eval-train-subset 60000 --test-subset 10000 --linear-epochs 100

Writes the results JSON (``--results``, default ``<out>/quality.json``) and ``<out>/quality.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ["rotation", "exemplar", "relative_position", "jigsaw", "simclr", "moco_v1", "moco_v2"]
BASELINES = ["random_init", "raw_pixels", "supervised"]
# small: the CPU budget of the first tables; full: every Fashion-MNIST training image for pretraining,
# the kNN bank and the probe, and the whole test set (15 epochs: one row fits in 45 min on 2 cores)
BUDGETS = {
    "small": {"epochs": 10, "train_subset": 4096, "eval_train_subset": 5000, "test_subset": 2000},
    "full": {"epochs": 15, "train_subset": 60000, "eval_train_subset": 60000, "test_subset": 10000},
}
# what makes two entries comparable: entries of a results file must agree on all of these
CONFIG_KEYS = ("budget", "epochs", "train_subset", "backbone", "width", "batch_size", "eval_train_subset",
               "test_subset", "linear_epochs", "device")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="small", choices=sorted(BUDGETS), help="defaults for the four sizes below")
    p.add_argument("--epochs", type=int, help="pretraining epochs per method")
    p.add_argument("--train-subset", type=int, help="pretraining images (seeded subset of train)")
    p.add_argument("--backbone", default="convnet", choices=["convnet", "resnet18", "resnet34", "resnet50"])
    p.add_argument("--width", type=int, default=32, help="convnet width")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--eval-train-subset", type=int, help="kNN bank / probe training images")
    p.add_argument("--test-subset", type=int, help="test images")
    p.add_argument("--linear-epochs", type=int, default=20)
    p.add_argument("--rows", "--methods", dest="rows", default=",".join(METHODS + BASELINES),
                   help="comma-separated rows, run in this order: " + ",".join(METHODS + BASELINES))
    p.add_argument("--no-baselines", action="store_true", help="drop " + ",".join(BASELINES) + " from --rows")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each row runs once per seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality", help="run folders (git-ignored)")
    p.add_argument("--results", type=Path, help="results JSON, read first and extended (default <out>/quality.json)")
    p.add_argument("--table", action="store_true", help="print the table of --results and exit (runs nothing)")
    args = p.parse_args(argv)
    for key, value in BUDGETS[args.budget].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.rows = [r for r in args.rows.split(",") if r and not (args.no_baselines and r in BASELINES)]
    unknown = sorted(set(args.rows) - set(METHODS + BASELINES))
    if unknown:
        p.error(f"--rows: unknown {unknown} (known: {METHODS + BASELINES})")
    args.results = args.results or args.out / "quality.json"
    args.seed = args.seeds[0]  # set per entry by main()
    return args


def pretrain_spec(name: str, args):
    from ssl_core.specs import ExemplarSpec, PretrainSpec

    raw = json.loads((ROOT / "examples" / f"{name}.json").read_text())
    example_batch, example_optim = raw.get("batch_size", 256), raw.pop("optim", None)
    raw["backbone"] = {"name": args.backbone, **({"width": args.width} if args.backbone == "convnet" else {})}
    raw["data"] = {**raw.get("data", {}), "dataset": "fashion_mnist", "subset": args.train_subset}
    raw.update(epochs=args.epochs, batch_size=args.batch_size, device=args.device, seed=args.seed, log_every=20)
    raw["eval"] = {"monitor": {"every_epochs": 0}}
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
    if example_optim is not None:
        # the example's tuned optimizer (chosen on the monitor's held-out training images): its lr moved to
        # this batch by the square-root rule (SimCLR App. B.1), its warm-up to this run's length as the
        # paper recipe's; an example without one gets the paper's recipe for this batch and epoch count
        warmup = PretrainSpec.model_validate(raw).optim.warmup_epochs
        lr = example_optim["lr"] * math.sqrt(raw["batch_size"] / example_batch)
        raw["optim"] = {**example_optim, "lr": round(lr, 4), "warmup_epochs": warmup}
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


ROW_LABELS = {"random_init": "baseline: random init", "raw_pixels": "baseline: raw pixels",
              "supervised": "supervised (cross-entropy)"}


def run_entry(row: str, args, data) -> dict:
    """Pretrain (or train, or nothing for the baselines) and evaluate one row at one seed."""
    from ssl_core.reporting import NullSink
    from ssl_core.specs import method_label
    from ssl_core.train import pretrain

    entry: dict = {"row": row, "seed": args.seed, "load_start": os.getloadavg()[0],
                   "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.time()
    if row in METHODS:
        spec = pretrain_spec(row, args)
        run_dir = args.out / f"{row}-seed{args.seed}"
        t = time.time()
        # a row cut short (killed, machine lost) continues from its last epoch's checkpoint next time;
        # wall_s is then this attempt's time only, and resumed_at_epoch says so
        entry["resumed_at_epoch"] = checkpoint_epoch(run_dir)
        result = pretrain(spec, run_dir, sink=NullSink(), resume=True)
        entry.update(method=method_label(spec), epochs=spec.epochs, wall_s=round(time.time() - t, 1),
                     final_loss=result.final_loss, pretext_acc=result.metrics.get("train/pretext_acc"),
                     batch_size=spec.batch_size, images=spec.data.subset, lr=spec.optim.lr,
                     spec=json.loads(spec.model_dump_json()))  # the recipe this entry measured
        entry.update(evaluate_backbone(args, data, weights=result.backbone_path))
    elif row == "supervised":
        path, wall, e2e_top1 = train_supervised(args, args.out / f"supervised-seed{args.seed}")
        entry.update(method=ROW_LABELS[row], epochs=args.epochs, wall_s=round(wall, 1), end_to_end_top1=e2e_top1)
        entry.update(evaluate_backbone(args, data, weights=path))
    else:
        entry.update(method=ROW_LABELS[row], epochs=0, wall_s=None)
        entry.update(evaluate_backbone(args, data, baseline=row))
    entry.update(total_s=round(time.time() - t0, 1), load_end=os.getloadavg()[0],
                 finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return entry


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch a run folder's checkpoint has reached (0: none)."""
    from ssl_core.checkpoint import LAST_CHECKPOINT, CheckpointFormatError, read_checkpoint_header

    try:
        return int(read_checkpoint_header(run_dir / LAST_CHECKPOINT).get("epoch", 0))
    except (FileNotFoundError, CheckpointFormatError):
        return 0


def config_of(args) -> dict:
    return {k: getattr(args, k) for k in CONFIG_KEYS}


def load_results(args, machine: str) -> dict:
    """The results file to extend: a new one, or the existing one when its budget is this run's."""
    if not args.results.exists():
        return {"config": config_of(args), "machine": machine, "entries": {}}
    payload = json.loads(args.results.read_text())
    if payload.get("config") != config_of(args):
        raise SystemExit(f"{args.results}: its budget {payload.get('config')} is not this run's {config_of(args)}; "
                         "give another --results to start a new table")
    return payload


def save_entry(args, machine: str, key: str, entry: dict) -> dict:
    """Add one entry to the results file at once: re-read under a lock, so two runs sharing a file
    (say, one per row) never drop each other's rows; written atomically."""
    import fcntl

    from ssl_core.runtime import atomic_write_text

    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results.with_name(f".{args.results.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        payload = load_results(args, machine)
        payload["entries"][key] = entry
        atomic_write_text(args.results, json.dumps(payload, indent=2) + "\n")
    atomic_write_text(args.out / "quality.md", markdown(payload))
    return payload


def summarise(payload: dict) -> list[dict]:
    """One line per row: mean, std and standard error over its seeds (test-set sampling included)."""
    n_test = payload["config"]["test_subset"]
    order = {r: i for i, r in enumerate(METHODS + BASELINES)}
    by_row: dict[str, list[dict]] = {}
    for e in payload["entries"].values():
        by_row.setdefault(e["row"], []).append(e)
    lines = []
    for row in sorted(by_row, key=lambda r: order.get(r, 99)):
        es = sorted(by_row[row], key=lambda e: e["seed"])
        line = {"row": row, "method": es[0]["method"], "seeds": [e["seed"] for e in es],
                "epochs": es[0]["epochs"], "wall_s": [e["wall_s"] for e in es], "total_s": [e["total_s"] for e in es],
                "load": [(e["load_start"], e["load_end"]) for e in es]}
        for key in ("knn", "linear"):
            vals = [e[key] for e in es]
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            # test-set binomial SE of the mean, plus the seed-to-seed spread where there are seeds
            se = math.sqrt(mean * (1 - mean) / (n_test * len(vals)) + std**2 / len(vals))
            line[key] = {"mean": mean, "std": std, "se": se}
        lines.append(line)
    return lines


def margin_in_se(a: dict, b: dict) -> float:
    """(a - b) in standard errors of the difference."""
    return (a["mean"] - b["mean"]) / math.sqrt(a["se"] ** 2 + b["se"] ** 2)


def markdown(payload: dict) -> str:
    def pm(v: dict, n: int) -> str:
        return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" if n > 1 else f"{100 * v['mean']:.1f}"

    lines = summarise(payload)
    rand = next((ln for ln in lines if ln["row"] == "random_init"), None)
    out = [
        "| method | seeds | epochs | pretrain wall (s) | row wall (s) | load (start-end) | kNN top-1 (%) "
        "| linear top-1 (%) | linear - random init (SE) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for ln in lines:
        n = len(ln["seeds"])
        walls = [w for w in ln["wall_s"] if w is not None]
        wall = "/".join(f"{w:.0f}" for w in walls) or "-"
        total = "/".join(f"{w:.0f}" for w in ln["total_s"])
        load = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in ln["load"])
        margin = f"{margin_in_se(ln['linear'], rand['linear']):+.1f}" if rand and ln is not rand else "-"
        out.append(f"| {ln['method']} | {n} | {ln['epochs']} | {wall} | {total} | {load} | {pm(ln['knn'], n)} "
                   f"| {pm(ln['linear'], n)} | {margin} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.results.read_text())), end="")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda" else "cpu"
    machine = (torch.cuda.get_device_name(0) if device == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    payload = load_results(args, machine)
    for seed in args.seeds:
        args.seed = seed
        todo = [r for r in args.rows if f"{r}/seed{seed}" not in payload["entries"]]
        if not todo:
            continue
        data = load_eval_data(args)
        for row in todo:
            if f"{row}/seed{seed}" in load_results(args, machine)["entries"]:
                continue  # another run sharing the file did it meanwhile
            entry = run_entry(row, args, data)
            entry["machine"] = machine
            payload = save_entry(args, machine, f"{row}/seed{seed}", entry)
            print(json.dumps(entry), flush=True)
    payload = load_results(args, machine)
    print()
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
