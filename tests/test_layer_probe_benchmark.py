"""benchmarks/layer_probe.py picks the layer on held-out training images, never on the test set."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from tests.support.scripts import load_script



def _layer_probe():
    return load_script("benchmarks/layer_probe.py", "layer_probe_bench")


def _informative(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Features that name the class (one-hot plus a little noise)."""
    return torch.nn.functional.one_hot(labels, 10).float() * 4 + 0.1 * torch.randn(len(labels), 10, generator=gen)


def test_the_choice_is_made_on_heldout_training_images(monkeypatch, tmp_path: Path) -> None:
    lp = _layer_probe()
    gen = torch.Generator().manual_seed(0)
    y_train, y_test = torch.randint(0, 10, (400,), generator=gen), torch.randint(0, 10, (200,), generator=gen)
    # "train_only" separates the classes on training images and is noise on the test images; "test_only"
    # is the reverse: a choice that looked at the test set would pick "test_only"
    f_train = {"train_only": _informative(y_train, gen), "test_only": torch.randn(400, 10, generator=gen)}
    f_test = {"train_only": torch.randn(200, 10, generator=gen), "test_only": _informative(y_test, gen)}
    monkeypatch.setattr(lp, "layer_features", lambda args, row, data: (f_train, f_test))
    args = lp.parse_args(["--rows", "random_init", "--layers", "train_only,test_only", "--heldout", "100",
                          "--results", str(tmp_path / "r.json")])
    entry = lp.run_row(args, "random_init", (SimpleNamespace(labels=y_train), SimpleNamespace(labels=y_test)))
    assert entry["chosen"] == {"knn": "train_only", "linear": "train_only"}
    assert entry["heldout"]["train_only"]["linear"] > 0.9 > entry["heldout"]["test_only"]["linear"]
    assert entry["test"]["linear"] < 0.3  # the chosen layer's honest (bad) test score, not the other's
    assert "| random_init |" in lp.table({"config": {"layers": args.layers}, "entries": {"random_init": entry}})
