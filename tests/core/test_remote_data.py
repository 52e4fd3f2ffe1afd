"""Image-folder datasets from an s3:// prefix on a real S3-compatible server (moto_server): fetched
once into the host cache, verified against the ETag (MD5) or a MANIFEST.sha256, bounded in size,
and only from the allowed prefixes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from ssl_core import data as D
from ssl_core.data.remote import CACHE_FOLDER, MANIFEST
from ssl_core.errors import DatasetError


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), colour).save(buf, format="PNG")
    return buf.getvalue()


FILES = {f"{cls}/{i}.png": png((40 * i, 200 if cls == "cat" else 20, 90)) for cls in ("cat", "dog") for i in range(3)}


@pytest.fixture
def bucket(s3_server, s3_bucket, tmp_path: Path, monkeypatch) -> str:
    client = s3_server.client()
    for key, body in FILES.items():
        client.put_object(Bucket=s3_bucket, Key=f"sets/pets/{key}", Body=body)
    monkeypatch.setenv("PRETEXTLAB_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("PRETEXTLAB_ALLOWED_DATA_URLS", f"s3://{s3_bucket}/sets/")
    monkeypatch.delenv("PRETEXTLAB_DATA_CACHE_BYTES", raising=False)
    D.clear_cache()
    yield s3_bucket
    D.clear_cache()


def test_an_s3_image_folder_loads_once_into_the_host_cache(bucket: str, tmp_path: Path, s3_server):
    ds = D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)
    assert len(ds) == 6 and ds.num_classes == 2 and tuple(ds.images.shape[1:]) == (3, 8, 8)
    cached = tmp_path / "data" / CACHE_FOLDER / bucket / "sets" / "pets"
    assert (cached / "cat" / "0.png").read_bytes() == FILES["cat/0.png"]
    # fetched once: a second load (the decoded-tensor cache cleared) reads the cached files only
    stamp = (cached / "dog" / "2.png").stat().st_mtime_ns
    D.clear_cache()
    assert len(D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)) == 6
    assert (cached / "dog" / "2.png").stat().st_mtime_ns == stamp
    # the stored set changed: fetched again
    s3_server.client().put_object(Bucket=bucket, Key="sets/pets/dog/3.png", Body=png((1, 2, 3)))
    D.clear_cache()
    assert len(D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)) == 7


def test_a_file_that_does_not_match_its_manifest_fails_naming_it(bucket: str, s3_server, tmp_path: Path):
    lines = [f"{hashlib.sha256(b).hexdigest()}  {k}" for k, b in FILES.items()]
    lines[0] = "0" * 64 + "  " + next(iter(FILES))  # the first file's recorded checksum is wrong
    s3_server.client().put_object(Bucket=bucket, Key=f"sets/pets/{MANIFEST}", Body="\n".join(lines).encode())
    with pytest.raises(DatasetError, match=rf"cat/0.png: sha256 differs from {MANIFEST}"):
        D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)
    assert not (tmp_path / "data" / CACHE_FOLDER / bucket / "sets" / "pets").exists()  # nothing half-fetched
    lines[0] = f"{hashlib.sha256(FILES['cat/0.png']).hexdigest()}  cat/0.png"
    s3_server.client().put_object(Bucket=bucket, Key=f"sets/pets/{MANIFEST}", Body="\n".join(lines).encode())
    assert len(D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)) == 6


def test_a_corrupted_download_fails_the_etag_check(bucket: str, monkeypatch):
    """The bytes that arrive are not the object's (a flipped bit on the way): the MD5 ETag catches it."""
    from ssl_core.storage.s3 import S3Store

    real_get = S3Store.get

    def flip_a_byte(self, key, dest):
        out = real_get(self, key, dest)
        data = bytearray(out.read_bytes())
        data[-1] ^= 0xFF
        out.write_bytes(bytes(data))
        return out

    monkeypatch.setattr(S3Store, "get", flip_a_byte)
    with pytest.raises(DatasetError, match="MD5 differs from the object's ETag"):
        D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)


def test_the_cache_size_limit_refuses_a_larger_set(bucket: str, monkeypatch):
    monkeypatch.setenv("PRETEXTLAB_DATA_CACHE_BYTES", "100")
    with pytest.raises(DatasetError, match="more than the dataset cache allows"):
        D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)


def test_only_allowed_prefixes_are_read(bucket: str, monkeypatch):
    monkeypatch.setenv("PRETEXTLAB_ALLOWED_DATA_URLS", f"s3://{bucket}/other/")
    with pytest.raises(DatasetError, match="PRETEXTLAB_ALLOWED_DATA_URLS"):
        D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)
    with pytest.raises(DatasetError, match="'..'"):
        D.load_dataset("image_folder", "all", path=f"s3://{bucket}/other/../sets/pets", image_size=8)


def test_the_least_recently_used_set_is_evicted_to_make_room(bucket: str, s3_server, tmp_path: Path, monkeypatch):
    for key, body in FILES.items():
        s3_server.client().put_object(Bucket=bucket, Key=f"sets/pets2/{key}", Body=body)
    one_set = sum(len(b) for b in FILES.values())
    monkeypatch.setenv("PRETEXTLAB_DATA_CACHE_BYTES", str(one_set + 200))  # room for one set (and its index)
    cache = tmp_path / "data" / CACHE_FOLDER / bucket / "sets"
    D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets", image_size=8)
    D.load_dataset("image_folder", "all", path=f"s3://{bucket}/sets/pets2", image_size=8)
    assert (cache / "pets2" / "cat" / "0.png").is_file() and not (cache / "pets").exists()
