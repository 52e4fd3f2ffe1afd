"""`pretextlab train | evaluate | data`: run the engine locally, no server.

    pretextlab train SPEC.json --out DIR [--set dotted.key=value ...] [--resume] [--nproc N]
    pretextlab evaluate (--weights PATH | --baseline random_init|raw_pixels) --protocol knn|linear|finetune
                        [--set dotted.key=value ...] [--out DIR]
    pretextlab data prepare NAME | pretextlab data list

``--set`` values are parsed as JSON (numbers, booleans, lists, objects), else taken as strings;
the result goes through the same spec validation as the API, so an error names the field.
Validation errors print the field and the problem and exit with status 2 (no traceback); a
permanent engine error (missing data, diverged loss) exits with status 1.

Resuming is opt-in: ``train`` refuses an out dir that already holds a checkpoint unless ``--resume``
is given (exit 2), and ``--resume`` continues only the same run -- a spec that differs from the
checkpoint's in more than epochs (grown) or device/precision/compile/logging/eval settings is refused
with the differing fields (exit 2; see ssl_core.checkpoint).

``--nproc N`` runs the pretraining data-parallel on N local processes through torch.distributed's
launcher (ssl_core.launch; NCCL on GPUs, gloo on CPU); ``batch_size`` stays the global batch. The
command also works as a rank of ``torchrun`` (``torchrun --nproc-per-node N -m ssl_core.cli train
...``, and ``--nnodes``/``--rdzv-endpoint`` across hosts): it then joins the group torchrun describes,
and rank 0 alone writes the metrics, checkpoint, backbone and the result JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ssl_core.errors import PermanentError
from ssl_core.reporting import JsonlSink, NullSink
from ssl_core.specs import DATASETS, EvaluateSpec, PretrainSpec


# ---------------------------------------------------------------------------
# --set parsing
def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: list[str]) -> list[tuple[list[str], Any]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected dotted.key=value")
        out.append((key.strip().split("."), parse_value(value)))
    return out


def set_path(data: dict, keys: list[str], value: Any) -> None:
    """data[k0][k1]... = value, creating objects on the way; a digit indexes a list."""
    cur: Any = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(cur, list):
            if not k.isdigit() or int(k) >= len(cur):
                raise ValueError(f"--set {'.'.join(keys)}: {k!r} is not an index of the list at {'.'.join(keys[:i])}")
            k = int(k)
        elif not isinstance(cur, dict):
            raise ValueError(f"--set {'.'.join(keys)}: {'.'.join(keys[:i])} is not an object")
        if last:
            cur[k] = value
        else:
            if isinstance(cur, dict) and not isinstance(cur.get(k), (dict, list)):
                cur[k] = {}
            cur = cur[k]


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")  # model validators already name their field
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "invalid spec:\n" + "\n".join(lines)


def build_pretrain_spec(raw: dict, sets: list[str]) -> PretrainSpec:
    """Apply --set overrides to a spec dict and validate it as a PretrainSpec.

    A section the file leaves to the method's recipe (``optim``, ``augment``) is first filled with
    the recipe resolved after the other overrides, so ``--set optim.lr=0.1`` changes the lr of the
    paper's optimizer instead of replacing it with a default one.
    """
    raw = json.loads(json.dumps(raw))
    raw.setdefault("kind", "pretrain")
    if raw["kind"] != "pretrain":
        raise ValueError(f"kind: expected a pretraining spec, got {raw['kind']!r}")
    parsed = parse_sets(sets)
    deferred = [(k, v) for k, v in parsed if k[0] in ("optim", "augment") and raw.get(k[0]) is None and len(k) > 1]
    for keys, value in parsed:
        if (keys, value) not in deferred:
            set_path(raw, keys, value)
    if deferred:
        resolved = PretrainSpec.model_validate(raw).model_dump(mode="json")
        for section in {k[0] for k, _ in deferred}:
            raw[section] = resolved[section]
        for keys, value in deferred:
            set_path(raw, keys, value)
    return PretrainSpec.model_validate(raw)


def _fail_validation(err: Exception) -> int:
    msg = format_validation_error(err) if isinstance(err, ValidationError) else f"invalid spec: {err}"
    print(msg, file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------
class TqdmSink:
    """A progress bar on stderr plus metrics.jsonl (through JsonlSink, not echoed)."""

    def __init__(self, out_dir: Path):
        from tqdm import tqdm  # a training-only dependency (the ml extra), like torch

        self.jsonl = JsonlSink(out_dir, echo=False)
        self.bar = tqdm(total=None, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.last: dict[str, float] = {}

    def metrics(self, step, values, epoch=None):
        self.jsonl.metrics(step, values, epoch)
        for k, v in values.items():
            if k in ("train/loss", "train/pretext_acc", "epoch/loss", "monitor/knn_top1", "train/lr"):
                self.last[k.split("/")[-1]] = f"{v:.4g}" if v is not None else "nan"
        self.bar.set_postfix(self.last, refresh=False)
        if "epoch/loss" in values:
            self.bar.write(f"epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in values.items() if v is not None),
                           file=sys.stderr)

    def progress(self, *, epoch, step, total_steps, images_per_sec, eta_s):
        if self.bar.total != total_steps:
            self.bar.total = total_steps
        self.bar.n = step
        self.bar.set_description(f"epoch {epoch} {images_per_sec:.0f} img/s")
        self.bar.refresh()

    def artifact(self, name, path, kind):
        self.jsonl.artifact(name, path, kind)
        self.bar.write(f"{kind}: {path}", file=sys.stderr)

    def should_stop(self) -> bool:
        return False

    def flush(self):
        self.jsonl.flush()

    def close(self):
        self.bar.close()
        self.jsonl.close()


def train_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pretextlab train", description="Pretrain a backbone locally.")
    p.add_argument("spec", type=Path, help="a pretraining spec (JSON)")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, backbone, metrics.jsonl)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set epochs=5 --set method.temperature=0.2")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT (OUT/checkpoints/last.safetensors; same spec, epochs may grow); "
                        "without it an OUT that holds a checkpoint is refused")
    p.add_argument("--no-progress", action="store_true",
                   help="print metric lines (on stderr) instead of a progress bar; stdout gets the result JSON")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine (one per GPU; CPU: gloo); batch_size is global")
    args = p.parse_args(argv)
    try:
        raw = json.loads(args.spec.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"cannot read spec {args.spec}: {e}", file=sys.stderr)
        return 2
    try:
        spec = build_pretrain_spec(raw, args.sets)
    except (ValidationError, ValueError) as e:
        return _fail_validation(e)

    if not args.resume and (args.out / "checkpoints" / "last.safetensors").exists():
        print(f"{args.out} already holds a run: pass --resume to continue it, or choose a new --out",
              file=sys.stderr)
        return 2
    rank_of_group = _launched_rank()
    if args.nproc < 1 or (args.nproc > 1 and spec.batch_size % args.nproc):
        return _fail_validation(ValueError(f"batch_size: the global batch {spec.batch_size} does not divide among "
                                           f"--nproc {args.nproc} processes"))
    if args.nproc > 1 and rank_of_group is None:
        from ssl_core.launch import launch_cli  # the ranks run this same command under the launcher

        return launch_cli(argv, args.nproc)

    from ssl_core.checkpoint import ResumeMismatchError  # torch: loaded only for the commands that train
    from ssl_core.train import pretrain

    should_stop, main = None, rank_of_group in (None, 0)
    if rank_of_group is not None:  # a torchrun rank: join its group; a signal stops every rank at one step
        from ssl_core.distributed import init_rank_process, stop_on_signals

        init_rank_process(spec.device)
        should_stop = stop_on_signals()
    if not main:
        sink = _RankSink()
    elif args.no_progress:
        sink = JsonlSink(args.out, echo=True, stream=sys.stderr)
    else:
        sink = TqdmSink(args.out)
    try:
        result = pretrain(spec, args.out, sink=sink, should_stop=should_stop, resume=args.resume)
    except ResumeMismatchError as e:  # the command is wrong, not the run: like a validation error
        print(f"cannot resume {args.out}: {e}", file=sys.stderr)
        return 2
    except PermanentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command with --resume to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    finally:
        sink.close()
        if rank_of_group is not None:
            from ssl_core.distributed import close_rank_process

            close_rank_process()
    if not main:
        return 0 if result.completed else 1
    print(json.dumps({"completed": result.completed, "epoch": result.epoch, "step": result.step,
                      "final_loss": result.final_loss, "backbone": str(result.backbone_path),
                      "checkpoint": str(result.checkpoint_path), "metrics": result.metrics}, indent=2))
    return 0 if result.completed else 1


def _launched_rank() -> int | None:
    """This process's rank when torchrun (or ``--nproc``) started it, else None."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")):
        return int(os.environ["RANK"])
    return None


class _RankSink(NullSink):
    """Ranks other than 0 report nowhere (the trainer gives them a null sink too)."""

    def close(self) -> None:
        pass


def evaluate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pretextlab evaluate", description="Evaluate a backbone or a baseline.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="a backbone.safetensors written by a pretraining")
    src.add_argument("--baseline", choices=["random_init", "raw_pixels"])
    p.add_argument("--protocol", choices=["knn", "linear", "finetune"], default="knn")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override an evaluate-spec field, e.g. --set protocol.epochs=10 --set data.train_subset=5000")
    p.add_argument("--out", type=Path, default=None, help="where result.json goes (default: beside the weights)")
    p.add_argument("--no-progress", action="store_true", help="metric lines on stderr instead of a progress bar")
    args = p.parse_args(argv)
    raw: dict[str, Any] = {"kind": "evaluate", "protocol": {"protocol": args.protocol}}
    if args.weights is not None:
        raw["weights"] = str(args.weights.resolve())
    else:
        raw["baseline"] = args.baseline
    try:
        for keys, value in parse_sets(args.sets):
            set_path(raw, keys, value)
        spec = EvaluateSpec.model_validate(raw)
    except (ValidationError, ValueError) as e:
        return _fail_validation(e)
    out = args.out or (args.weights.resolve().parent / f"eval_{args.protocol}" if args.weights
                       else Path(f"eval_{args.baseline}_{args.protocol}"))

    from ssl_core.evaluate import evaluate  # torch

    sink = JsonlSink(out, echo=True, stream=sys.stderr) if args.no_progress else TqdmSink(out)
    try:
        result = evaluate(spec, out, sink=sink, weights_path=Path(spec.weights) if spec.weights else None)
    except PermanentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        sink.close()
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.completed else 1


def data_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pretextlab data", description="Datasets.")
    sub = p.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="put a dataset where the loaders read it")
    prep.add_argument("name")
    sub.add_parser("list", help="the datasets pretextlab knows")
    args = p.parse_args(argv)
    if args.action == "list":
        for info in DATASETS.values():
            print(f"{info.name:14s} {info.description}")
        return 0
    if args.name not in DATASETS:
        print(f"unknown dataset {args.name!r}; one of {sorted(DATASETS)}", file=sys.stderr)
        return 2
    from ssl_core.data import prepare  # torch

    try:
        path = prepare(args.name)
    except PermanentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ssl_core.cli train|evaluate|data ...`` (what ``torchrun -m ssl_core.cli`` runs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "evaluate": evaluate_main, "data": data_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m ssl_core.cli {{{'|'.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the pretextlab command does (worker.cli)
    sys.exit(main())
