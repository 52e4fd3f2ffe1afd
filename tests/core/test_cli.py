"""The local CLI: examples validate, --set overrides, clear validation errors, a tiny train + evaluate."""

import json
from pathlib import Path

import pytest

from ssl_core.cli import build_pretrain_spec, data_main, evaluate_main, set_path, train_main
from ssl_core.specs import PretrainSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALL_EXAMPLES = sorted(EXAMPLES.glob("*.json")) + sorted((EXAMPLES / "tiny").glob("*.json"))


def test_the_seven_configurations_have_examples():
    names = {p.stem for p in EXAMPLES.glob("*.json")}
    assert {"rotation", "exemplar", "relative_position", "jigsaw", "simclr", "moco_v1", "moco_v2",
            "simclr_quickstart"} <= names


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_validates(path):
    spec = PretrainSpec.model_validate(json.loads(path.read_text()))
    assert spec.optim is not None and spec.augment is not None


def test_set_parses_json_then_strings_and_keeps_the_method_recipe():
    raw = json.loads((EXAMPLES / "tiny" / "simclr.json").read_text())
    spec = build_pretrain_spec(raw, ["epochs=3", "method.temperature=0.2", "optim.lr=0.5", "data.dataset=synthetic",
                                     "eval.monitor.every_epochs=1"])
    assert spec.epochs == 3 and spec.method.temperature == 0.2
    assert spec.optim.name == "lars" and spec.optim.lr == 0.5  # the paper's optimizer, lr overridden
    assert spec.eval.monitor.every_epochs == 1
    data = {"augment": [{"op": "horizontal_flip"}]}
    set_path(data, ["augment", "0", "p"], 0.3)
    assert data == {"augment": [{"op": "horizontal_flip", "p": 0.3}]}


def test_validation_error_names_the_field_and_exits_2(tmp_path, capsys):
    spec = EXAMPLES / "tiny" / "simclr.json"
    assert train_main([str(spec), "--out", str(tmp_path), "--set", "batch_size=1"]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "Traceback" not in err
    assert train_main([str(spec), "--out", str(tmp_path), "--set", "method.temperature=hot"]) == 2
    assert "method.simclr.temperature: Input should be a valid number" in capsys.readouterr().err
    assert train_main([str(spec), "--out", str(tmp_path), "--set", "optim.warmup_epochs=5"]) == 2
    assert "  optim.warmup_epochs: 5.0 exceeds epochs 2" in capsys.readouterr().err
    assert train_main([str(spec), "--out", str(tmp_path), "--set", "nope"]) == 2
    assert "dotted.key=value" in capsys.readouterr().err
    assert evaluate_main(["--baseline", "raw_pixels", "--protocol", "finetune"]) == 2
    assert "protocol" in capsys.readouterr().err


def test_train_then_evaluate_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    rc = train_main([str(EXAMPLES / "tiny" / "rotation.json"), "--out", str(out), "--set", "epochs=1"])
    assert rc == 0
    assert (out / "backbone.safetensors").exists() and (out / "checkpoints" / "last.safetensors").exists()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(x["type"] == "metrics" and "train/loss" in x["values"] for x in lines)
    captured = capsys.readouterr()
    assert json.loads(captured.out)["completed"] is True and "epoch 1:" in captured.err  # tqdm bar's epoch line
    # --resume of the finished checkpoint: nothing to train, same steps
    assert train_main([str(EXAMPLES / "tiny" / "rotation.json"), "--out", str(out), "--set", "epochs=1",
                       "--no-progress", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3
    rc = evaluate_main(["--weights", str(out / "backbone.safetensors"), "--protocol", "knn",
                        "--set", "data.dataset=synthetic", "--set", "data.train_subset=20",
                        "--set", "data.test_subset=10", "--set", "protocol.k=5", "--set", "device=cpu",
                        "--out", str(tmp_path / "eval")])
    assert rc == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert " img/s" in captured.err and "step" in captured.err  # the same progress bar as train
    assert result["protocol"] == "knn" and 0.0 <= result["top1"] <= 1.0 and result["method"] == "rotation"
    assert (tmp_path / "eval" / "result.json").exists()


def test_data_list(capsys):
    assert data_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist" in out and "synthetic" in out
    assert data_main(["prepare", "imagenet"]) == 2


def test_resuming_is_opt_in_and_only_for_the_same_run(tmp_path, capsys):
    spec, out = str(EXAMPLES / "tiny" / "simclr.json"), tmp_path / "run"
    assert train_main([spec, "--out", str(out), "--set", "epochs=1", "--no-progress"]) == 0
    before = (out / "backbone.safetensors").read_bytes()
    capsys.readouterr()
    # the same command again: refused, the run is untouched
    assert train_main([spec, "--out", str(out), "--set", "epochs=1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds a run: pass --resume to continue it, or choose a new --out" in err
    # --resume with a different run's spec: refused, naming the fields
    assert train_main([spec, "--out", str(out), "--set", "epochs=1", "--set", "method.temperature=0.2",
                       "--set", "seed=7", "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "method.temperature, seed" in err and "Traceback" not in err
    assert (out / "backbone.safetensors").read_bytes() == before
    # --resume with more epochs continues the run from its global step
    assert train_main([spec, "--out", str(out), "--set", "epochs=2", "--resume", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["completed"] and (result["epoch"], result["step"]) == (2, 6)
