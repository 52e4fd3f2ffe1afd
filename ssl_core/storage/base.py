"""The artifact store interface, its errors, and the one rule for object keys.

Keys are relative POSIX paths (``jobs/<id>/checkpoints/last.safetensors``). :func:`check_key` refuses any
spelling that could leave the store's root or prefix -- ``..``, absolute paths, backslashes, empty or
``.`` components, control characters -- before a key reaches a filesystem path or an S3 request, so a
key that escapes is refused the same way by both stores.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ssl_core.paths import CONTROL_CHARS

MAX_KEY_CHARS = 1024  # S3's limit on an object key


class StoreError(RuntimeError):
    """The artifact store refused a request (a missing object, a denied bucket...)."""


class StoreUnavailable(StoreError):
    """The artifact store could not be reached (after the client's retries): try again later."""


class UnsafeKey(ValueError):
    """An object key that could leave the store's root or prefix."""


def check_key(key: str, *, allow_prefix: bool = False, what: str = "object key", max_chars: int = MAX_KEY_CHARS) -> str:
    """``key`` if it is a relative POSIX path of plain components, else :class:`UnsafeKey` saying why
    (``what`` names it in the message). ``allow_prefix``: a trailing ``/`` is allowed (a folder prefix
    such as ``jobs/7/``). The API checks artifact names with it too: a name is a key under the job's prefix."""
    if not isinstance(key, str) or not key:
        raise UnsafeKey(f"{what} is empty")
    if len(key) > max_chars:
        raise UnsafeKey(f"{what} is longer than {max_chars} characters")
    if CONTROL_CHARS.search(key):
        raise UnsafeKey(f"{what} contains control characters or NUL")
    if "\\" in key:
        raise UnsafeKey(f"{what} contains a backslash")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise UnsafeKey(f"{what} is an absolute path")
    body = key[:-1] if allow_prefix and key.endswith("/") else key
    parts = body.split("/")
    if any(p == ".." for p in parts):
        raise UnsafeKey(f"{what} contains '..': it may not leave its folder")
    if any(p in ("", ".") for p in parts):
        raise UnsafeKey(f"{what} has empty or '.' components")
    return key


def job_prefix(job_id: int) -> str:
    """Where one job's files live in the store: ``jobs/<id>/`` (the same layout as ARTIFACT_ROOT)."""
    return f"jobs/{int(job_id)}/"


@dataclass(frozen=True)
class ObjectInfo:
    key: str            # relative to the store's root/prefix
    size: int
    etag: str | None    # S3's ETag (quotes stripped); None for files
    mtime_ns: int | None  # the source file's mtime when it was uploaded (metadata), or the file's


class ArtifactStore(ABC):
    """Files by key. Writes are atomic: a reader sees the old object, the new one, or none -- never
    part of one. ``remote`` says whether the files live somewhere a worker must copy them from."""

    remote: bool = False
    url: str = ""

    @abstractmethod
    def put(self, key: str, path: Path) -> None:
        """Store the local file ``path`` under ``key`` (replacing it), atomically."""

    @abstractmethod
    def get(self, key: str, dest: Path) -> Path:
        """Copy the object ``key`` to ``dest`` (atomically; its mtime set to the stored one)."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """The objects under ``prefix`` (a folder ending in ``/``), keys relative to the store."""

    @abstractmethod
    def info(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and stored mtime; None if there is no such object."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""

    @abstractmethod
    def presigned_url(self, key: str, expires_s: int, filename: str | None = None) -> str | None:
        """A URL a client downloads ``key`` from directly, valid for ``expires_s``; None where the
        store has no such thing (the filesystem: the API streams the file itself)."""

    def local_path(self, key: str) -> Path | None:
        """Where ``key`` lies on this machine's filesystem (FileStore only)."""
        return None

    # -- built on the primitives -------------------------------------------------------------------
    def put_changed(self, key: str, path: Path) -> bool:
        """:meth:`put` unless the stored object already has this file's size and mtime (one HEAD
        instead of re-sending a multi-GB checkpoint the run stored already); True if it was sent."""
        st = Path(path).stat()
        info = self.info(key)
        if info is not None and info.size == st.st_size and info.mtime_ns == st.st_mtime_ns:
            return False
        self.put(key, path)
        return True

    def put_folder(self, prefix: str, folder: Path) -> list[str]:
        """Store every changed file under ``folder`` as ``prefix + relative path``; returns the keys sent."""
        keys = []
        for f in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
            key = prefix + f.relative_to(folder).as_posix()
            if self.put_changed(key, f):
                keys.append(key)
        return keys

    def pull_newer(self, prefix: str, folder: Path) -> list[str]:
        """Copy into ``folder`` each object under ``prefix`` that is newer than the local file of the
        same name (or missing here); a local file written after its last upload (the store was down)
        is kept. Returns the keys fetched."""
        fetched = []
        for listed in self.list(prefix):
            obj = listed if listed.mtime_ns is not None else (self.info(listed.key) or listed)
            dest = Path(folder) / obj.key[len(prefix):]
            if dest.is_file() and obj.mtime_ns is not None and dest.stat().st_mtime_ns >= obj.mtime_ns:
                continue
            self.get(obj.key, dest)
            fetched.append(obj.key)
        return fetched

    def delete_job(self, job_id: int) -> int:
        """Delete every file of one job (its checkpoints, exports, results)."""
        return self.delete_prefix(job_prefix(job_id))
