"""Downloads with the S3 artifact store: a 307 to a presigned URL on a real S3-compatible server
(moto_server) that returns the file's bytes; Range requests on the filesystem store; s3:// dataset
paths checked before a job is queued."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from api.db.artifacts import register_artifact
from api.main import create_app
from api.db.session import upgrade
from api_helpers import submit
from ssl_core.storage import open_store


@pytest.fixture
def s3_client(sqlite_url, make_settings, s3_server, s3_bucket):
    upgrade(sqlite_url)
    open_store.cache_clear()
    settings = make_settings(sqlite_url, artifact_url=f"s3://{s3_bucket}/arts", presign_seconds=45,
                             s3_public_endpoint_url=s3_server.endpoint, allowed_data_urls=f"s3://{s3_bucket}/data/")
    with TestClient(create_app(settings)) as c:
        yield c, settings
    open_store.cache_clear()


def test_a_download_redirects_to_a_presigned_url_with_the_right_bytes(s3_client, tmp_path):
    client, settings = s3_client
    job = submit(client)["id"]
    payload = os.urandom(200_000)
    local = tmp_path / "w.safetensors"
    local.write_bytes(payload)
    settings.artifact_store().put(f"jobs/{job}/backbone.safetensors", local)
    from api.db.session import make_engine, session_factory

    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        register_artifact(s, job, "backbone.safetensors", "backbone", len(payload))
        s.commit()
    engine.dispose()
    assert [a["name"] for a in client.get(f"/v1/jobs/{job}/artifacts").json()["items"]] == ["backbone.safetensors"]
    r = client.get(f"/v1/jobs/{job}/artifacts/backbone.safetensors", follow_redirects=False)
    assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
    url = r.headers["location"]
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["45"]
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == payload
    assert "backbone.safetensors" in got.headers["content-disposition"]
    # unregistered names and escapes are refused before any URL is signed
    assert client.get(f"/v1/jobs/{job}/artifacts/other.bin", follow_redirects=False).status_code == 404
    assert client.get(f"/v1/jobs/{job}/artifacts/..%2F..%2Fx", follow_redirects=False).status_code in (400, 404)


@pytest.mark.parametrize("path,ok", [
    ("s3://{b}/data/pets", True), ("s3://{b}/private/pets", False), ("s3://{b}/data/../private", False),
    ("s3://NotABucket/data", False),
])
def test_s3_dataset_paths_are_checked_before_queueing(s3_client, path: str, ok: bool):
    client, settings = s3_client
    bucket = settings.artifact_url.split("/")[2]
    spec = {"kind": "pretrain", "method": {"name": "rotation"},
            "data": {"dataset": "image_folder", "path": path.format(b=bucket), "image_size": 16}}
    r = client.post("/v1/jobs", json={"spec": spec})
    if ok:
        assert r.status_code == 201, r.text
    else:
        assert r.status_code == 422, r.text
        assert "data.path" in r.text


def test_range_requests_keep_working_with_the_filesystem_store(client, db, settings):
    job = submit(client)["id"]
    payload = os.urandom(10_000)
    folder = settings.job_dir(job)
    folder.mkdir(parents=True)
    (folder / "backbone.safetensors").write_bytes(payload)
    with db() as s:
        register_artifact(s, job, "backbone.safetensors", "backbone", len(payload))
        s.commit()
    r = client.get(f"/v1/jobs/{job}/artifacts/backbone.safetensors", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == payload[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(payload)}"
