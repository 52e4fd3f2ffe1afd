"""The filesystem artifact store: a local or shared folder (today's layout, the embedded default).

A worker writes a job's files straight into ``<root>/jobs/<id>/``, so storing them is a no-op; a
file from elsewhere is copied in through a temporary name and renamed, so it appears only when
complete. Every key is checked (:func:`~ssl_core.storage.base.check_key`) and its resolved path
must stay under the root, so neither a spelling nor a symlink leads out.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ssl_core.storage.base import ArtifactStore, ObjectInfo, StoreError, UnsafeKey, check_key


class FileStore(ArtifactStore):
    remote = False

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str, *, allow_prefix: bool = False) -> Path:
        check_key(key, allow_prefix=allow_prefix)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise UnsafeKey(f"object key {key!r} resolves outside the store root")
        return path

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def put(self, key: str, path: Path) -> None:
        dest = self._path(key)
        src = Path(path).resolve()
        if src == dest:  # the worker wrote it in place: nothing to copy
            return
        _copy_atomic(src, dest)

    def get(self, key: str, dest: Path) -> Path:
        src = self._path(key)
        dest = Path(dest)
        if not src.is_file():
            raise StoreError(f"no object {key!r} in {self.url}")
        if dest.resolve() != src:
            _copy_atomic(src, dest)
        return dest

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix, allow_prefix=True) if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for f in sorted(p for p in base.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
            st = f.stat()
            out.append(ObjectInfo(f.relative_to(self.root).as_posix(), st.st_size, None, st.st_mtime_ns))
        return out

    def info(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        st = path.stat()
        return ObjectInfo(key, st.st_size, None, st.st_mtime_ns)

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix, allow_prefix=True)
        if base == self.root:
            raise UnsafeKey("refusing to delete the whole store")
        n = len(self.list(prefix))
        shutil.rmtree(base, ignore_errors=True)
        return n

    def presigned_url(self, key: str, expires_s: int, filename: str | None = None) -> str | None:
        return None


def _copy_atomic(src: Path, dest: Path) -> None:
    """Copy through a temporary name in the destination folder, then rename: all or nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copy2(src, tmp)  # copy2 keeps the mtime: pull_newer compares it
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
