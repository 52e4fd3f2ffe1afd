"""Image-folder datasets in object storage: ``data.path = "s3://bucket/prefix"``.

The prefix is fetched once into a per-host cache under the data root
(``<data root>/.remote-cache/<bucket>/<prefix>``) and read from there like any folder; a later job
on the same host finds it there and fetches nothing, as long as the stored listing (keys, sizes,
ETags) has not changed.

* **Allowed prefixes**: ``PRETEXTLAB_ALLOWED_DATA_URLS`` (comma-separated ``s3://`` prefixes) -- none
  by default, since a worker's credentials may read buckets (the artifact bucket, say) a user must
  not be able to name. The API checks the same rule before queueing the job.
* **Size limit**: ``PRETEXTLAB_DATA_CACHE_BYTES`` (default 20 GiB) bounds the whole cache; the least
  recently used other datasets are evicted to make room, and a prefix larger than the limit is
  refused before a byte is fetched.
* **Checksums**: every file is verified as it is fetched -- against ``MANIFEST.sha256`` when the
  prefix holds one (``sha256sum`` format, paths relative to the prefix), else against the ETag,
  which S3 and MinIO set to the MD5 of a single-part upload. A multipart ETag (``...-N``) is no MD5:
  such a file without a manifest entry is checked by size only (put a manifest beside large files).
  A mismatch fails the job naming the file; nothing half-fetched is ever used (the fetch goes to a
  temporary folder renamed into place; a per-dataset lock keeps concurrent workers of a host apart).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from ssl_core.errors import DatasetError
from ssl_core.storage import ObjectInfo, StoreError, StoreUnavailable, open_store
from ssl_core.storage.urls import S3Location, allowed_data_urls, check_data_url

CACHE_FOLDER = ".remote-cache"
INDEX = ".pretextlab-fetched.json"  # what was fetched (key -> size, etag); written last
MANIFEST = "MANIFEST.sha256"
DEFAULT_CACHE_BYTES = 20 << 30


def cache_limit(environ: Mapping[str, str] | None = None) -> int:
    raw = (os.environ if environ is None else environ).get("PRETEXTLAB_DATA_CACHE_BYTES", "").strip()
    try:
        return int(raw) if raw else DEFAULT_CACHE_BYTES
    except ValueError:
        raise DatasetError(f"PRETEXTLAB_DATA_CACHE_BYTES: {raw!r} is not an integer") from None


def fetch_dataset(url: str, data_root: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The local copy of the image folder at ``url`` (fetched and verified if it is not cached)."""
    env = os.environ if environ is None else environ
    try:
        loc = check_data_url(url, allowed_data_urls(env.get("PRETEXTLAB_ALLOWED_DATA_URLS", "")), "data.path")
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    cache = Path(data_root) / CACHE_FOLDER
    dest = cache / loc.bucket / loc.prefix
    store = open_store(f"s3://{loc.bucket}/{loc.prefix}")
    try:
        listing = [o for o in store.list("") if not o.key.endswith("/")]
        if not listing:
            raise DatasetError(f"data.path: {url!r} holds no files")
        with _locked(cache, loc):
            if _index_matches(dest, listing):
                os.utime(dest / INDEX)  # most recently used: evicted last
                return dest
            _fetch(store, loc, listing, dest, cache, cache_limit(env))
    except StoreUnavailable:
        raise  # the worker hands the job back: the data may be reachable later
    except StoreError as exc:
        raise DatasetError(f"data.path: {url!r}: {exc}") from None
    return dest


@contextmanager
def _locked(cache: Path, loc: S3Location) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(loc.url.encode()).hexdigest()[:16]
    with open(cache / f".lock-{name}", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _index_matches(dest: Path, listing: list[ObjectInfo]) -> bool:
    try:
        index = json.loads((dest / INDEX).read_text())
    except (OSError, ValueError):
        return False
    want = {o.key: [o.size, o.etag] for o in listing}
    return index == want and all((dest / k).is_file() and (dest / k).stat().st_size == s for k, (s, _) in want.items())


def _fetch(store, loc: S3Location, listing: list[ObjectInfo], dest: Path, cache: Path, limit: int) -> None:
    total = sum(o.size for o in listing)
    if total > limit:
        raise DatasetError(f"data.path: {loc.url} holds {total} bytes, more than the dataset cache allows "
                           f"({limit}; PRETEXTLAB_DATA_CACHE_BYTES)")
    _evict(cache, keep=dest, need=total, limit=limit)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        manifest = _manifest(store, listing, tmp)
        for o in listing:
            if o.key == MANIFEST:
                continue
            local = store.get(o.key, tmp / o.key)
            _verify(local, o, manifest.get(o.key), loc)
        (tmp / INDEX).write_text(json.dumps({o.key: [o.size, o.etag] for o in listing}))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _manifest(store, listing: list[ObjectInfo], tmp: Path) -> dict[str, str]:
    """``MANIFEST.sha256`` of the prefix, if there is one: relative path -> sha256 hex."""
    if not any(o.key == MANIFEST for o in listing):
        return {}
    out = {}
    for line in store.get(MANIFEST, tmp / MANIFEST).read_text().splitlines():
        digest, _, name = line.strip().partition(" ")
        if digest and name:
            out[name.strip().lstrip("*").removeprefix("./")] = digest.lower()
    return out


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(local: Path, obj: ObjectInfo, sha256: str | None, loc: S3Location) -> None:
    size = local.stat().st_size
    if size != obj.size:
        raise DatasetError(f"data.path: {loc.url}{obj.key}: fetched {size} bytes, the store lists {obj.size}")
    if sha256 is not None:
        if _digest(local, "sha256") != sha256:
            raise DatasetError(f"data.path: {loc.url}{obj.key}: sha256 differs from {MANIFEST}")
    elif obj.etag and "-" not in obj.etag and _digest(local, "md5") != obj.etag.lower():
        raise DatasetError(f"data.path: {loc.url}{obj.key}: MD5 differs from the object's ETag")


def _evict(cache: Path, keep: Path, need: int, limit: int) -> None:
    """Delete the least recently used cached datasets (not ``keep``) until ``need`` more bytes fit."""
    entries = []
    for index in cache.rglob(INDEX):
        folder = index.parent
        if folder != keep:
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            entries.append((index.stat().st_mtime, folder, size))
    used = sum(size for _, _, size in entries)
    for _, folder, size in sorted(entries, key=lambda e: e[0]):
        if used + need <= limit:
            break
        shutil.rmtree(folder, ignore_errors=True)
        used -= size
