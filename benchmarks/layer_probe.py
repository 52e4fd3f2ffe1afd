"""Which layer to probe, chosen on held-out training images, then scored once on the test set.

RotNet, Jigsaw and Exemplar-CNN report their best numbers from intermediate conv blocks, not from the
final pooled vector that ``benchmarks/quality.py`` probes. This script takes the backbones that
``quality.py`` exported (``<runs>/<row>-seed<seed>/backbone.safetensors``; ``random_init`` is built
from the seed as there), reads every requested layer in one pass (``ssl_core.features.LayerTap``, each
conv map average-pooled to at most ``--max-dims`` values, as an evaluation job's ``layer_pooling``),
and for each protocol (weighted kNN k=200 t=0.1; linear probe, 20 epochs) picks the layer that scores
best on ``--heldout`` labelled training images, with the probe or bank fitted on the remaining training
images. The test set is touched only for the chosen layer, with the bank / probe fitted on every
training image, as in ``quality.py``. The same rule is applied to random init, so the comparison stays
like for like.

    .venv/bin/python benchmarks/layer_probe.py --rows random_init,relative_position,jigsaw \
        --runs runs/quality_full --results docs/layer_probe_full.json

Each row is written to ``--results`` as soon as it is done (a row already there is skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402  (the backbone and data conventions of the quality table)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="random_init,relative_position,jigsaw")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "quality_full", help="quality.py's --out")
    p.add_argument("--layers", default="block1,block2,block3,block4,pool")
    p.add_argument("--max-dims", type=int, default=2048, help="values per pooled conv map")
    p.add_argument("--heldout", type=int, default=10000, help="training images kept out for the choice")
    p.add_argument("--budget", default="full", choices=sorted(quality.BUDGETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--results", type=Path, default=ROOT / "runs" / "layer_probe.json")
    p.add_argument("--table", action="store_true", help="print the table of --results and exit")
    args = p.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(args.rows) - set(quality.METHODS + ["random_init", "supervised"]))
    if unknown:
        p.error(f"--rows: no exported backbone for {unknown}")
    args.layers = [n for n in args.layers.split(",") if n]
    for key, value in quality.BUDGETS[args.budget].items():
        setattr(args, key, value)
    args.backbone, args.width = "convnet", 32
    return args


def layer_features(args, row: str, data) -> tuple[dict, dict]:
    """{layer: (N, D)} for the training and the test images, from one pass each."""
    import torch

    from ssl_core.backbone_file import load_backbone
    from ssl_core.backbones import build_backbone
    from ssl_core.features import LayerTap, extract_features
    from ssl_core.normalization import dataset_stats
    from ssl_core.runtime import resolve_device
    from ssl_core.specs.evaluation import LayerPooling

    device = resolve_device(args.device)
    if row == "random_init":
        torch.manual_seed(args.seed)
        backbone = build_backbone(quality.backbone_spec(args), 1, 28).to(device)
    else:
        backbone, _ = load_backbone(args.runs / f"{row}-seed{args.seed}" / "backbone.safetensors", device)
    tap = LayerTap(backbone, args.layers, LayerPooling(mode="avg", max_dims=args.max_dims))
    mean, std = dataset_stats("fashion_mnist", 1)
    return tuple(extract_features(tap, x.images, mean, std, 512, device) for x in data)


def scores(f_train, y_train, f_test, y_test, seed: int) -> dict:
    from ssl_core.evaluate import knn_accuracy, linear_probe

    return {"knn": knn_accuracy(f_train, y_train, f_test, y_test, k=200, temperature=0.1, num_classes=10),
            "linear": linear_probe(f_train, y_train, f_test, y_test, epochs=20, lr=0.1, batch_size=256,
                                   weight_decay=0.0, num_classes=10, seed=seed).top1}


def run_row(args, row: str, data) -> dict:
    from ssl_core.train import holdout_split

    t0 = time.time()
    entry: dict = {"row": row, "seed": args.seed, "load_start": os.getloadavg()[0]}
    train, test = data
    f_train, f_test = layer_features(args, row, data)
    y_train, y_test = train.labels.to(f_train[args.layers[0]].device), test.labels.to(f_test[args.layers[0]].device)
    fit, held = holdout_split(y_train, y_train.shape[0] - args.heldout, args.heldout, args.seed)
    entry["dims"] = {n: int(f.shape[1]) for n, f in f_train.items()}
    entry["heldout"] = {n: scores(f[fit], y_train[fit], f[held], y_train[held], args.seed) for n, f in f_train.items()}
    entry["chosen"], entry["test"] = {}, {}
    for protocol in ("knn", "linear"):
        layer = max(args.layers, key=lambda n: entry["heldout"][n][protocol])
        entry["chosen"][protocol] = layer
        entry["test"][protocol] = scores(f_train[layer], y_train, f_test[layer], y_test, args.seed)[protocol]
    entry.update(total_s=round(time.time() - t0, 1), load_end=os.getloadavg()[0])
    return entry


def table(payload: dict) -> str:
    layers = payload["config"]["layers"]
    out = ["| row | " + " | ".join(f"{n} held-out kNN / linear" for n in layers)
           + " | kNN: chosen layer, test | linear: chosen layer, test |",
           "|---|" + "---:|" * len(layers) + "---|---|"]
    for e in payload["entries"].values():
        cells = [f"{100 * e['heldout'][n]['knn']:.1f} / {100 * e['heldout'][n]['linear']:.1f}" for n in layers]
        out.append(f"| {e['row']} | " + " | ".join(cells) + f" | {e['chosen']['knn']}, {100 * e['test']['knn']:.1f} "
                   f"| {e['chosen']['linear']}, {100 * e['test']['linear']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    from ssl_core.runtime import atomic_write_text

    args = parse_args(argv)
    if args.table:
        print(table(json.loads(args.results.read_text())), end="")
        return 0
    config = {"budget": args.budget, "seed": args.seed, "layers": args.layers, "max_dims": args.max_dims,
              "heldout": args.heldout}
    payload = json.loads(args.results.read_text()) if args.results.exists() else {"config": config, "entries": {}}
    if payload["config"] != config:
        raise SystemExit(f"{args.results}: made with {payload['config']}, not {config}; give another --results")
    data = quality.load_eval_data(args)
    for row in args.rows:
        if row in payload["entries"]:
            continue
        payload["entries"][row] = run_row(args, row, data)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.results, json.dumps(payload, indent=2) + "\n")
        print(json.dumps(payload["entries"][row]), flush=True)
    print(table(payload), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
