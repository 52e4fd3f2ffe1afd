"""The artifact stores against real backends: a folder (FileStore) and an S3-compatible server
(moto in server mode, a child process; never a mock of the client)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import pytest

from ssl_core.storage import StoreError, StoreUnavailable, UnsafeKey, check_key, open_store, parse_s3_url
from ssl_core.storage.local import FileStore
from ssl_core.storage.s3 import S3Store

ESCAPES = ["../x", "jobs/1/../../x", "/etc/passwd", "jobs\\1", "jobs//1", "jobs/./1", "a/\x00b", "", "a/\nb"]


@pytest.fixture(params=["file", "s3"])
def any_store(request, tmp_path: Path):
    if request.param == "file":
        return FileStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/pre/fix")


def test_put_get_list_delete_round_trip(any_store, tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    any_store.put("jobs/7/checkpoints/last.pt", src)
    any_store.put("jobs/7/backbone.safetensors", src)
    any_store.put("jobs/70/other", src)
    assert [(o.key, o.size) for o in any_store.list("jobs/7/")] == [
        ("jobs/7/backbone.safetensors", 3000), ("jobs/7/checkpoints/last.pt", 3000)]
    out = any_store.get("jobs/7/checkpoints/last.pt", tmp_path / "dl" / "last.pt")
    assert out.read_bytes() == src.read_bytes()
    assert out.stat().st_mtime_ns == src.stat().st_mtime_ns  # the stored mtime travels with the bytes
    assert any_store.info("jobs/7/nothing") is None
    assert any_store.put_changed("jobs/7/backbone.safetensors", src) is False  # stored already: not re-sent
    src.write_bytes(b"new")
    assert any_store.put_changed("jobs/7/backbone.safetensors", src) is True
    assert any_store.info("jobs/7/backbone.safetensors").size == 3
    with pytest.raises(StoreError):
        any_store.get("jobs/7/nothing", tmp_path / "x")
    assert any_store.delete_job(7) == 2
    assert any_store.list("jobs/7/") == [] and [o.key for o in any_store.list("jobs/")] == ["jobs/70/other"]


@pytest.mark.parametrize("key", ESCAPES)
def test_path_escapes_in_object_keys_are_refused(any_store, tmp_path: Path, key: str):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(UnsafeKey):
        any_store.put(key, src)
    with pytest.raises(UnsafeKey):
        any_store.get(key, tmp_path / "out")
    with pytest.raises(UnsafeKey):
        check_key(key)


def test_file_store_refuses_a_symlink_out_of_its_root(tmp_path: Path):
    store = FileStore(tmp_path / "store")
    (tmp_path / "store" / "jobs").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "store" / "jobs" / "1").symlink_to(tmp_path / "outside")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(UnsafeKey, match="outside the store root"):
        store.put("jobs/1/x", src)
    assert not (tmp_path / "outside" / "x").exists()


def test_pull_newer_keeps_a_newer_local_file_and_fetches_a_newer_stored_one(any_store, tmp_path: Path):
    a, b = tmp_path / "w1" / "last.pt", tmp_path / "w1" / "last.json"
    a.parent.mkdir()
    a.write_bytes(b"old-a")
    b.write_bytes(b"old-b")
    any_store.put_folder("jobs/3/checkpoints/", a.parent)
    here = tmp_path / "w2"
    assert sorted(any_store.pull_newer("jobs/3/checkpoints/", here)) == [
        "jobs/3/checkpoints/last.json", "jobs/3/checkpoints/last.pt"]
    assert any_store.pull_newer("jobs/3/checkpoints/", here) == []  # same mtimes: nothing to fetch
    # written here after its last upload (the store was down): kept
    (here / "last.pt").write_bytes(b"local-newer")
    os.utime(here / "last.pt", ns=(a.stat().st_mtime_ns + 10**9,) * 2)
    # written elsewhere and stored after our copy: fetched
    b.write_bytes(b"remote-newer")
    os.utime(b, ns=(b.stat().st_mtime_ns + 2 * 10**9,) * 2)
    any_store.put("jobs/3/checkpoints/last.json", b)
    assert any_store.pull_newer("jobs/3/checkpoints/", here) == ["jobs/3/checkpoints/last.json"]
    assert (here / "last.pt").read_bytes() == b"local-newer"
    assert (here / "last.json").read_bytes() == b"remote-newer"


def test_multipart_upload_is_invisible_until_complete(s3_bucket: str, tmp_path: Path):
    """Above the threshold boto3 uploads in parts; no reader sees the key before the upload completes."""
    store = S3Store(s3_bucket, "mp", multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 << 20))
    seen_partial: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            info = store.info("jobs/1/big.bin")
            if info is not None and info.size != big.stat().st_size:
                seen_partial.append(info.size)

    t = threading.Thread(target=watch)
    t.start()
    try:
        store.put("jobs/1/big.bin", big)
    finally:
        done.set()
        t.join()
    info = store.info("jobs/1/big.bin")
    assert info is not None and info.size == 12 << 20 and not seen_partial
    assert "-" in (info.etag or "")  # a multipart ETag: it really went up in parts
    assert store.get("jobs/1/big.bin", tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_presigned_url_returns_the_bytes_with_the_asked_expiry(s3_bucket: str, tmp_path: Path):
    store = open_store(f"s3://{s3_bucket}/p")
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights" * 100)
    store.put("jobs/2/w.safetensors", f)
    url = store.presigned_url("jobs/2/w.safetensors", 60, filename="w.safetensors")
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == f.read_bytes()
    assert "X-Amz-Expires=60" in url and "X-Amz-Signature=" in url  # SigV4 (moto does not check signatures)


def test_an_unreachable_endpoint_is_store_unavailable(tmp_path: Path, monkeypatch):
    from tests.support.net import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = S3Store("bucket", "", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1", retries=1)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(StoreUnavailable):
        store.put("jobs/1/f", f)
    with pytest.raises(StoreUnavailable):
        store.list("jobs/1/")


def test_a_missing_bucket_is_a_store_error_not_an_outage(s3_server, monkeypatch, tmp_path: Path):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(StoreError) as info:
        S3Store("no-such-bucket-here", "").put("jobs/1/f", f)
    assert not isinstance(info.value, StoreUnavailable)


@pytest.mark.parametrize("url,ok", [
    ("s3://bucket/prefix", True), ("s3://my.bucket-1", True), ("s3://b/x", False), ("s3://Bucket/x", False),
    ("s3://bucket/a/../b", False), ("s3://user@bucket/x", False), ("s3://bucket:9000/x", False),
    ("s3://bucket/a?x=1", False), ("s3://bucket/a//b", False), ("http://bucket/a", False),
])
def test_s3_urls_are_checked_without_network(url: str, ok: bool):
    if ok:
        assert parse_s3_url(url).bucket in url
    else:
        with pytest.raises(ValueError, match="data.path"):
            parse_s3_url(url, "data.path")


def test_file_urls_and_artifact_root_name_the_same_store(tmp_path: Path):
    from api.settings import Settings

    s = Settings(artifact_url=(tmp_path / "a").as_uri())
    assert s.artifact_root == tmp_path / "a" and not s.artifact_store().remote
    assert s.job_dir(4) == (tmp_path / "a" / "jobs" / "4").resolve()
    assert Settings(artifact_root=tmp_path / "b").artifact_store().local_path("jobs/1/x") == (tmp_path / "b" / "jobs/1/x")
    with pytest.raises(ValueError, match="artifact_url"):
        Settings(artifact_url="ftp://host/x")
