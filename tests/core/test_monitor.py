"""The kNN monitor reads held-out training images only: the test split stays for reporting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ssl_core.train as train_mod
from ssl_core.specs import PretrainSpec
from ssl_core.train import KnnMonitor, holdout_split

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tiny"


def test_holdout_split_is_disjoint_seeded_and_sized() -> None:
    labels = torch.arange(100)
    bank, query = holdout_split(labels, 60, 30, seed=3)
    assert len(bank) == 60 and len(query) == 30
    assert not set(bank.tolist()) & set(query.tolist())
    again = holdout_split(labels, 60, 30, seed=3)
    assert torch.equal(bank, again[0]) and torch.equal(query, again[1])
    assert not torch.equal(query, holdout_split(labels, 60, 30, seed=4)[1])
    # fewer images than asked: shared in the asked proportion, still disjoint and non-empty
    small_bank, small_query = holdout_split(torch.arange(12), 20, 10, seed=0)
    assert (len(small_bank), len(small_query)) == (8, 4)
    with pytest.raises(ValueError, match="eval.monitor"):
        holdout_split(torch.arange(1), 20, 10, seed=0)


def test_monitor_never_loads_the_test_split(monkeypatch) -> None:
    raw = json.loads((EXAMPLES / "rotation.json").read_text())
    raw["eval"] = {"monitor": {"every_epochs": 1, "train_subset": 20, "test_subset": 10, "k": 5}}
    spec = PretrainSpec.model_validate(raw)
    asked: list[tuple[str, int | None]] = []
    real = train_mod.load_dataset

    def spy(name, split, **kw):
        asked.append((split, kw.get("subset")))
        return real(name, split, **kw)

    monkeypatch.setattr(train_mod, "load_dataset", spy)
    mon = KnnMonitor(spec, torch.device("cpu"), None, (0.5,) * 3, (0.5,) * 3)
    assert asked == [(spec.data.info.train_split, 30)]
    assert len(mon.bank_y) + len(mon.query_y) <= 30 and len(mon.query_y) >= 1
    # no image is both a bank entry and a query (rows compared as bytes)
    bank_rows = {bytes(x.numpy().tobytes()) for x in mon.bank_x}
    query_rows = [bytes(x.numpy().tobytes()) for x in mon.query_x]
    assert len(bank_rows) == len(mon.bank_x)  # synthetic images are distinct, so the check means something
    assert not any(q in bank_rows for q in query_rows)
