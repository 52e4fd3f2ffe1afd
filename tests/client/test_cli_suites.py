"""`pretextlab suite run | table | show | list | cancel` and the client's suite methods against a
real embedded server: a small grid from a JSON file runs to its table; an unknown preset is exit 2
naming the field; the leaderboard's groups through the client."""

from __future__ import annotations

import json

import pytest

from pretextlab.client import Client
from tests.support.specs import tiny_pretrain
from worker.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_suite_run_prints_the_table(server, tmp_path, capsys):
    base = tiny_pretrain(epochs=1)
    base["eval"] = {"data": {"dataset": "synthetic", "image_size": 16, "train_subset": 64, "test_subset": 32}}
    request = tmp_path / "suite.json"
    request.write_text(json.dumps({"base": base, "grid": {"optim.lr": [0.05, 0.1]},
                                   "evaluations": [{"protocol": "knn", "k": 10}]}))
    s = ("--server", server.url)
    rc, out, err = run(capsys, "suite", "run", str(request), *s, "--seeds", "2", "--name", "cli-suite")
    assert rc == 0, err + server.log()
    suite_id = int(out.split()[1].rstrip(":"))
    assert out.splitlines()[0] == f"suite {suite_id}: 8 jobs (2 rows)"
    assert "| optim.lr=0.05 | rotation | 1 | 8 |" in out and "(n=2)" in out  # the markdown table
    assert f"suite {suite_id}" in err  # the progress bar

    rc, out, _ = run(capsys, "suite", "table", str(suite_id), *s, "--format", "csv")
    assert rc == 0 and out.splitlines()[0].startswith("variant,method,epochs,batch_size,overrides,knn_mean")
    assert len(out.splitlines()) == 3
    rc, out, _ = run(capsys, "suite", "show", str(suite_id), *s)
    assert rc == 0 and out.startswith(f"suite {suite_id} succeeded: {{'succeeded': 8}}")
    rc, out, _ = run(capsys, "suite", "list", *s)
    assert rc == 0 and f"{suite_id:>6}  succeeded" in out and out.rstrip().endswith("cli-suite")
    rc, _, err = run(capsys, "suite", "cancel", str(suite_id), *s)
    assert rc == 1 and f"suite {suite_id} is already succeeded" in err  # 409: nothing left to cancel

    with Client(server.url) as c:
        groups = c.results(group_by="variant", suite_id=suite_id)
        assert sorted(g["variant"] for g in groups) == ["optim.lr=0.05", "optim.lr=0.1"]
        assert all(g["count"] == 2 for g in groups)
        table = c.suite_table(suite_id)
        assert [r["results"]["knn"]["count"] for r in table["rows"]] == [2, 2]


def test_unknown_preset_is_bad_input(server, capsys):
    rc, _, err = run(capsys, "suite", "run", "no_such_preset", "--server", server.url)
    assert rc == 2 and "preset: unknown preset 'no_such_preset'" in err
    rc, _, err = run(capsys, "suite", "table", "999999", "--server", server.url)
    assert rc == 3
