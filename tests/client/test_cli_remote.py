"""The remote commands of `pretextlab` against a real embedded server: output and exit codes
(0 ok, 2 bad input, 3 not found, 4 auth, 1 other), --set parsed as `pretextlab train` does."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from pretextlab.cli_remote import build_spec
from pretextlab.client import Client
from tests.client.conftest import TOKEN
from tests.support.net import free_port
from tests.support.processes import REPO, service_env
from tests.support.specs import tiny_pretrain
from worker.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_pretrain(epochs=2)))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_submit_wait_jobs_show_logs_download(server, spec_file, tmp_path, capsys):
    s = ("--server", server.url)
    rc, out, err = run(capsys, "submit", str(spec_file), *s, "--name", "cli-run", "--tag", "cli", "--tag", "x",
                       "--set", "epochs=1", "--set", "optim.lr=0.05", "--wait")
    assert rc == 0, err + server.log()
    job_id = int(out.split()[1])
    assert out.strip() == f"job {job_id} succeeded"
    assert f"submitted job {job_id} (queued)" in err and f"job {job_id}" in err  # and the progress bar

    with Client(server.url) as c:
        job = c.job(job_id)
    assert (job["name"], job["tags"], job["spec"]["epochs"]) == ("cli-run", ["cli", "x"], 1)
    # --set on a section the file leaves to the recipe tunes the method's own optimizer, as in `train`
    local = build_spec(tiny_pretrain(epochs=2), ["epochs=1", "optim.lr=0.05"])
    assert job["spec"]["optim"] == local["optim"] and job["spec"]["optim"]["lr"] == 0.05

    rc, out, _ = run(capsys, "jobs", *s, "--status", "succeeded")
    assert rc == 0 and out.splitlines()[0].split()[:3] == ["ID", "STATUS", "KIND"]
    row = next(line for line in out.splitlines()[1:] if line.split()[0] == str(job_id))
    assert row.split()[1:5] == ["succeeded", "pretrain", "rotation", "synthetic"] and row.endswith("cli-run")
    rc, out, _ = run(capsys, "jobs", *s, "--tag", "cli", "--json")
    assert rc == 0 and [j["id"] for j in json.loads(out)] == [job_id]

    rc, out, _ = run(capsys, "show", str(job_id), *s)
    assert rc == 0 and f"job        {job_id}" in out and "status     succeeded" in out and "tags       cli, x" in out
    rc, out, _ = run(capsys, "show", str(job_id), *s, "--json")
    assert json.loads(out)["id"] == job_id

    rc, out, _ = run(capsys, "logs", str(job_id), *s)
    lines = out.splitlines()
    assert rc == 0 and "- -> queued" in lines[0] and "queued -> running  (attempt 1 by " in lines[1]
    assert "running -> succeeded" in lines[-1]

    rc, out, _ = run(capsys, "download", str(job_id), "backbone.safetensors", *s, "-o", str(tmp_path / "w.st"))
    assert rc == 0 and out.strip() == str(tmp_path / "w.st")
    assert (tmp_path / "w.st").read_bytes() == server.job_file(job_id, "backbone.safetensors").read_bytes()
    rc, out, _ = run(capsys, "download", str(job_id), *s, "-o", str(tmp_path / "all"))
    assert rc == 0
    assert (tmp_path / "all" / "checkpoints" / "last.safetensors").read_bytes() == \
        server.job_file(job_id, "checkpoints/last.safetensors").read_bytes()
    assert str(tmp_path / "all" / "backbone.safetensors") in out.splitlines()


def test_logs_follow_then_cancel(server, capsys):
    s = ("--server", server.url)
    with Client(server.url) as c:
        job = c.submit(tiny_pretrain(epochs=30))  # >= 6 s of steps: longer than the longest poll interval
    rc, out, err = run(capsys, "logs", str(job["id"]), *s, "--follow")
    assert rc == 0, err
    assert re.search(rf"^job {job['id']} running  epoch \d+  step \d+/120  \d+ img/s", out, re.M), out  # progress
    assert "running -> succeeded" in out.splitlines()[-1]

    with Client(server.url) as c:
        long = c.submit(tiny_pretrain(epochs=500))
    rc, out, _ = run(capsys, "cancel", str(long["id"]), *s)
    assert rc == 0 and out.strip() in (f"job {long['id']} cancelled", f"job {long['id']} cancelling")
    with Client(server.url) as c:
        assert c.wait(long["id"], timeout=60, progress=False)["status"] == "cancelled"
    rc, _, err = run(capsys, "cancel", str(long["id"]), *s)  # finished: a conflict, not bad input
    assert rc == 1 and "409 invalid_state" in err


def test_exit_codes_for_bad_input_missing_jobs_and_dead_servers(server, spec_file, tmp_path, capsys):
    s = ("--server", server.url)
    rc, _, err = run(capsys, "submit", str(spec_file), *s, "--set", "batch_size=1")  # refused locally
    assert rc == 2 and "batch_size" in err and "Traceback" not in err
    rc, _, err = run(capsys, "submit", str(spec_file), *s, "--set", "nope")
    assert rc == 2 and "dotted.key=value" in err
    rc, _, err = run(capsys, "submit", str(tmp_path / "missing.json"), *s)
    assert rc == 2 and "cannot read spec" in err
    # refused by the server (a data path outside its roots): its details printed, exit 2
    outside = tmp_path / "imgs"
    rc, _, err = run(capsys, "submit", str(spec_file), *s, "--set", "data.dataset=image_folder",
                     "--set", f"data.path={outside}")
    assert rc == 2 and "422 invalid_spec" in err and "spec.data.path" in err

    rc, _, err = run(capsys, "show", "987654", *s)
    assert rc == 3 and "404 not_found: job 987654 not found" in err
    rc, _, err = run(capsys, "download", "987654", "x", *s, "-o", str(tmp_path / "x"))
    assert rc == 3 and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["show", "abc", *s])
    assert exit_.value.code == 2
    rc, _, err = run(capsys, "jobs", "--server", f"http://127.0.0.1:{free_port()}")
    assert rc == 1 and "cannot reach" in err


def test_server_and_token_from_the_environment_and_auth_exit_code(token_server, monkeypatch, capsys):
    monkeypatch.setenv("PRETEXTLAB_URL", token_server.url)
    monkeypatch.delenv("PRETEXTLAB_TOKEN", raising=False)
    rc, _, err = run(capsys, "jobs")
    assert rc == 4 and "401 unauthorized" in err
    rc, _, err = run(capsys, "jobs", "--token", "wrong")
    assert rc == 4 and "403 forbidden" in err
    monkeypatch.setenv("PRETEXTLAB_TOKEN", TOKEN)
    rc, out, _ = run(capsys, "jobs")
    assert rc == 0 and out.startswith("    ID  STATUS")


def test_console_script_runs_the_remote_commands(server):
    """Through the installed entry point in a fresh interpreter (no torch needed to list jobs)."""
    code = "import sys; from worker.cli import main; rc = main(); assert 'torch' not in sys.modules; sys.exit(rc)"
    env = {**service_env(), "PRETEXTLAB_URL": server.url}
    out = subprocess.run([sys.executable, "-c", code, "jobs", "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), list)


def test_set_parses_like_train_for_both_kinds():
    spec = build_spec({"kind": "pretrain", "method": {"name": "simclr"}, "data": {"dataset": "synthetic"}},
                      ["epochs=3", "method.temperature=0.2", "optim.lr=0.5"])
    assert spec["epochs"] == 3 and spec["method"]["temperature"] == 0.2
    assert spec["optim"]["name"] == "lars" and spec["optim"]["lr"] == 0.5  # the paper's optimizer
    ev = build_spec({"kind": "evaluate", "source_job_id": 3}, ['protocol={"protocol": "linear", "epochs": 2}',
                                                               "data.dataset=synthetic"])
    assert ev["protocol"] == {"protocol": "linear", "epochs": 2} and ev["data"] == {"dataset": "synthetic"}
    with pytest.raises(ValueError, match="kind"):
        build_spec({"kind": "train"}, [])
