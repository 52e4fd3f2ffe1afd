"""Artifact listing and streamed download; names that try to leave the job's folder are refused."""

from __future__ import annotations

import os

import pytest

from api.db.artifacts import UnsafePath, check_artifact_name, register_artifact
from api_helpers import submit


@pytest.fixture
def job_with_files(client, db, settings):
    job = submit(client)["id"]
    with db() as s:
        folder = settings.job_dir(job)
    (folder / "checkpoints").mkdir(parents=True)
    payload = os.urandom(300_000)
    (folder / "backbone.safetensors").write_bytes(payload)
    (folder / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    (folder / "link").symlink_to("/etc/passwd")
    with db() as s:
        register_artifact(s, job, "backbone.safetensors", "backbone", len(payload))
        register_artifact(s, job, "checkpoints/last.pt", "checkpoint", 4)
        register_artifact(s, job, "link", "result", 1)
        register_artifact(s, job, "gone.json", "result", 1)
        s.commit()
    return job, payload


def test_list_and_stream_download(client, job_with_files):
    job, payload = job_with_files
    items = client.get(f"/v1/jobs/{job}/artifacts").json()["items"]
    assert [(a["name"], a["kind"]) for a in items] == [
        ("backbone.safetensors", "backbone"), ("checkpoints/last.pt", "checkpoint"), ("gone.json", "result"),
        ("link", "result")]
    assert items[0]["size"] == len(payload) and items[0]["url"] == f"/v1/jobs/{job}/artifacts/backbone.safetensors"
    assert client.get(f"/v1/jobs/{job}").json()["artifacts"] == 4
    with client.stream("GET", f"/v1/jobs/{job}/artifacts/backbone.safetensors") as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert "backbone.safetensors" in r.headers["content-disposition"]
        chunks = list(r.iter_bytes())
    assert b"".join(chunks) == payload
    assert client.get(f"/v1/jobs/{job}/artifacts/checkpoints/last.pt").content == b"ckpt"


@pytest.mark.parametrize("raw", [
    "..%2F..%2Fetc%2Fpasswd", "..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "%2Fetc%2Fpasswd", "checkpoints%2F..%2F..%2Fx",
    "a%5C..%5C..%5Cwin.ini", "x%00.txt", "C%3A%5Cwindows", "%2E%2E",
])
def test_traversal_attempts_are_refused(client, job_with_files, raw):
    job, _ = job_with_files
    r = client.get(f"/v1/jobs/{job}/artifacts/{raw}")
    assert r.status_code in (400, 404), r.status_code
    err = r.json()["error"]
    assert err["code"] in ("unsafe_artifact_name", "not_found") and err["message"]
    assert b"root:" not in r.content


def test_symlink_out_of_the_folder_and_missing_file(client, job_with_files):
    job, _ = job_with_files
    r = client.get(f"/v1/jobs/{job}/artifacts/link")
    assert r.status_code == 400 and "outside the job's folder" in r.json()["error"]["message"]
    r = client.get(f"/v1/jobs/{job}/artifacts/gone.json")
    assert r.status_code == 404 and "missing" in r.json()["error"]["message"]
    r = client.get(f"/v1/jobs/{job}/artifacts/not-registered.bin")
    assert r.status_code == 404 and "no artifact named" in r.json()["error"]["message"]


def test_artifact_name_rules():
    assert check_artifact_name("checkpoints/last.pt") == "checkpoints/last.pt"
    for bad in ["", "../x", "a/../../b", "/etc/passwd", "a\\b", "a\x00b", "C:x", "a//b", "./a", "a\nb", "x" * 300]:
        with pytest.raises(UnsafePath):
            check_artifact_name(bad)


def test_register_artifact_refuses_unsafe_names(db, client):
    job = submit(client)["id"]
    with db() as s, pytest.raises(UnsafePath):
        register_artifact(s, job, "../../evil", "result", 1)
