"""benchmarks/quality.py's bookkeeping: resumable entries, one budget per file, mean ± std and SE."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tests.support.scripts import load_script



def _quality():
    return load_script("benchmarks/quality.py", "quality_bench")


def _entry(row: str, seed: int, knn: float, linear: float) -> dict:
    return {"row": row, "seed": seed, "method": row, "epochs": 1, "wall_s": 1.0, "total_s": 2.0,
            "load_start": 1.0, "load_end": 1.5, "knn": knn, "linear": linear}


def test_entries_merge_skip_and_refuse_another_budget(tmp_path: Path) -> None:
    q = _quality()
    results = tmp_path / "r.json"
    a = q.parse_args(["--results", str(results), "--out", str(tmp_path), "--rows", "simclr", "--seeds", "0,1"])
    b = q.parse_args(["--results", str(results), "--out", str(tmp_path), "--rows", "raw_pixels"])
    assert (a.epochs, a.train_subset, a.test_subset, a.seeds) == (10, 4096, 2000, [0, 1])
    q.save_entry(a, "m", "simclr/seed0", _entry("simclr", 0, 0.7, 0.8))
    q.save_entry(b, "m", "raw_pixels/seed0", _entry("raw_pixels", 0, 0.75, 0.79))  # another run, same file
    assert set(q.load_results(a, "m")["entries"]) == {"simclr/seed0", "raw_pixels/seed0"}
    full = q.parse_args(["--budget", "full", "--results", str(results), "--out", str(tmp_path)])
    assert (full.train_subset, full.eval_train_subset, full.test_subset) == (60000, 60000, 10000)
    with pytest.raises(SystemExit, match="not this run's"):
        q.load_results(full, "m")


def test_summary_mean_std_and_margin_in_standard_errors() -> None:
    q = _quality()
    payload = {"config": {"test_subset": 10000}, "entries": {
        "random_init/seed0": _entry("random_init", 0, 0.70, 0.80),
        "random_init/seed1": _entry("random_init", 1, 0.70, 0.82),
        "simclr/seed0": _entry("simclr", 0, 0.75, 0.85),
    }}
    lines = {ln["row"]: ln for ln in q.summarise(payload)}
    rand, simclr = lines["random_init"]["linear"], lines["simclr"]["linear"]
    assert rand["mean"] == pytest.approx(0.81) and rand["std"] == pytest.approx(math.sqrt(2e-4))
    assert rand["se"] == pytest.approx(math.sqrt(0.81 * 0.19 / 20000 + 2e-4 / 2))
    assert simclr["std"] == 0.0 and simclr["se"] == pytest.approx(math.sqrt(0.85 * 0.15 / 10000))
    assert q.margin_in_se(simclr, rand) == pytest.approx(0.04 / math.sqrt(simclr["se"] ** 2 + rand["se"] ** 2))
    table = q.markdown(payload)
    assert "| simclr | 1 |" in table and "81.0 ± 1.4" in table
