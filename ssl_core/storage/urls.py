"""Store URLs: ``file:///path`` (or a plain path) and ``s3://bucket/prefix``, checked without network.

:func:`parse_s3_url` is what the API runs on a dataset's ``data.path`` before queueing a job and what
the worker runs before fetching it: the bucket must be a valid S3 bucket name and the prefix a
clean relative key, so a URL cannot name a path outside its prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ssl_core.storage.base import ArtifactStore, UnsafeKey, check_key

# S3's bucket naming rules: 3-63 characters, lower-case letters, digits, dots and hyphens, starting
# and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or a clean relative key ending in "/"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def within(self, other: "S3Location") -> bool:
        """True if this location lies under ``other`` (same bucket, prefix starts with its prefix)."""
        return self.bucket == other.bucket and self.prefix.startswith(other.prefix)


def is_s3_url(text: object) -> bool:
    return isinstance(text, str) and text.lower().startswith("s3://")


def parse_s3_url(url: str, field: str = "url") -> S3Location:
    """``s3://bucket[/prefix]`` checked (bucket name rules, a prefix of plain components); ValueError
    naming ``field`` otherwise. No network access."""
    if not is_s3_url(url):
        raise ValueError(f"{field}: {url!r} is not an s3://bucket/prefix URL")
    parts = urlsplit(url)
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(f"{field}: an s3:// URL has no user, port, query or fragment")
    if not _BUCKET.match(parts.netloc) or ".." in parts.netloc:
        raise ValueError(f"{field}: {parts.netloc!r} is not a valid bucket name "
                         "(3-63 lower-case letters, digits, '.' and '-')")
    prefix = unquote(parts.path).lstrip("/")
    if prefix:
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        try:
            check_key(prefix, allow_prefix=True)
        except UnsafeKey as exc:
            raise ValueError(f"{field}: {exc}") from None
    return S3Location(parts.netloc, prefix)


def file_url_path(url: str) -> Path | None:
    """The folder of a ``file://`` URL (None for any other scheme)."""
    if not url.lower().startswith("file://"):
        return None
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"artifact_url: {url!r}: a file:// URL names a local path (file:///path)")
    return Path(unquote(parts.path))


@lru_cache(maxsize=8)
def open_store(url: str, *, endpoint_url: str | None = None, public_endpoint_url: str | None = None,
               region: str | None = None, retries: int = 3) -> ArtifactStore:
    """The store a URL names (one instance per process and arguments: boto3 clients are thread-safe).
    ``file:///path`` or a plain path: :class:`FileStore`; ``s3://bucket/prefix``: :class:`S3Store`."""
    if is_s3_url(url):
        from ssl_core.storage.s3 import S3Store  # boto3 is loaded only for an S3 store

        loc = parse_s3_url(url, "artifact_url")
        return S3Store(loc.bucket, loc.prefix, endpoint_url=endpoint_url, public_endpoint_url=public_endpoint_url,
                       region=region, retries=retries)
    from ssl_core.storage.local import FileStore

    check_store_url(url)
    return FileStore(file_url_path(url) or Path(url))


def check_store_url(url: str) -> str:
    """``url`` if it names a store (file:///path, a plain path, or a valid s3://bucket/prefix), else ValueError."""
    if is_s3_url(url):
        parse_s3_url(url, "artifact_url")
    elif "://" in url and file_url_path(url) is None:
        raise ValueError(f"artifact_url: {url!r}: use file:///path or s3://bucket/prefix")
    return url


def allowed_data_urls(text: str) -> list[S3Location]:
    """``PRETEXTLAB_ALLOWED_DATA_URLS``: comma-separated s3:// prefixes datasets may be read from."""
    return [parse_s3_url(u.strip(), "PRETEXTLAB_ALLOWED_DATA_URLS") for u in text.split(",") if u.strip()]


def check_data_url(url: str, allowed: list[S3Location], field: str = "data.path") -> S3Location:
    """An ``s3://`` dataset URL that is well formed and lies under one of the ``allowed`` prefixes
    (none allowed by default: a worker's credentials may read buckets a user must not name)."""
    loc = parse_s3_url(url, field)
    if not any(loc.within(a) for a in allowed):
        raise ValueError(
            f"{field}: {url!r} is not under an allowed s3:// prefix "
            f"({', '.join(a.url for a in allowed) or 'none configured'}); add its bucket/prefix to "
            "PRETEXTLAB_ALLOWED_DATA_URLS")
    return loc
