"""The S3-compatible artifact store (AWS S3, MinIO, Ceph RGW, GCS's S3 interface), through boto3.

* **Atomic uploads**: an S3 PUT, and the completion of a multipart upload, make the object appear
  whole or not at all; boto3's transfer manager switches to multipart (parallel parts) above
  ``multipart_threshold``, so a multi-GB checkpoint is neither one huge request nor ever half visible.
* **Where and who**: endpoint, region and credentials come from boto3's usual chain --
  ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_REGION``/``AWS_DEFAULT_REGION``,
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles -- unless given here.
* **Presigned downloads** are signed for ``public_endpoint_url`` when set (the address clients
  reach, e.g. a MinIO published on the host, where the workers use the compose network's name).
  Signing is local computation: the API never contacts the store to serve a download.
* **Errors**: an unreachable endpoint, a timeout, a 5xx or a throttle, after the client's own
  retries, raise :class:`StoreUnavailable` (try later); other refusals raise :class:`StoreError`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ssl_core.storage.base import ArtifactStore, ObjectInfo, StoreError, StoreUnavailable, check_key

MTIME_META = "mtime-ns"  # the uploaded file's mtime, so a pull can tell an older copy from a newer one
_RETRYABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _translate(exc: BaseException, what: str) -> StoreError:
    """A client exception as StoreUnavailable (try later) or StoreError (refused), saying what failed."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            err = seen.response.get("Error", {})
            status = int(seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(err.get("Code", ""))
            cls = StoreUnavailable if status >= 500 or code in _RETRYABLE_CODES else StoreError
            return cls(f"{what}: {code or status} {err.get('Message', '')}".strip())
        if isinstance(seen, BotoCoreError):  # connection refused/reset, DNS, timeouts
            return StoreUnavailable(f"{what}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}")


class S3Store(ArtifactStore):
    remote = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 public_endpoint_url: str | None = None, region: str | None = None, retries: int = 3,
                 multipart_threshold: int = 64 << 20, multipart_chunksize: int = 16 << 20):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(retries={"max_attempts": max(1, retries), "mode": "standard"}, signature_version="s3v4",
                        connect_timeout=5, read_timeout=60, s3={"addressing_style": "path"} if endpoint_url else {})
        session = boto3.session.Session()
        self._client = session.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)
        public = public_endpoint_url or endpoint_url
        self._signer = self._client if public == endpoint_url else session.client(
            "s3", endpoint_url=public, region_name=region, config=config)
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                        multipart_chunksize=multipart_chunksize, max_concurrency=4)

    def _full(self, key: str, *, allow_prefix: bool = False) -> str:
        return self.prefix + check_key(key, allow_prefix=allow_prefix)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError, boto3.exceptions.Boto3Error, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
                raise  # a local file problem, not the store's
            raise _translate(exc, what) from exc

    def put(self, key: str, path: Path) -> None:
        full = self._full(key)
        meta = {MTIME_META: str(Path(path).stat().st_mtime_ns)}
        self._call(f"upload {self.url}{key}", self._client.upload_file, str(path), self.bucket, full,
                   ExtraArgs={"Metadata": meta}, Config=self._transfer)

    def get(self, key: str, dest: Path) -> Path:
        info = self.info(key)
        if info is None:
            raise StoreError(f"no object {key!r} in {self.url}")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self._call(f"download {self.url}{key}", self._client.download_file, self.bucket, self._full(key),
                       str(tmp), Config=self._transfer)
            if info.mtime_ns is not None:
                os.utime(tmp, ns=(info.mtime_ns, info.mtime_ns))
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def info(self, key: str) -> ObjectInfo | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                return None
            raise _translate(exc, f"head {self.url}{key}") from exc
        except BotoCoreError as exc:
            raise _translate(exc, f"head {self.url}{key}") from exc
        mtime = head.get("Metadata", {}).get(MTIME_META)
        return ObjectInfo(key, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"') or None,
                          int(mtime) if mtime and mtime.isdigit() else None)

    def list(self, prefix: str) -> list[ObjectInfo]:
        full = self._full(prefix, allow_prefix=True) if prefix else self.prefix
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
        out = []
        try:
            for page in pages:
                for o in page.get("Contents", []):
                    out.append(ObjectInfo(o["Key"][len(self.prefix):], int(o["Size"]),
                                          str(o.get("ETag", "")).strip('"') or None, None))
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"list {self.url}{prefix}") from exc
        return out

    def delete_prefix(self, prefix: str) -> int:
        keys = [self.prefix + o.key for o in self.list(check_key(prefix, allow_prefix=True))]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
            self._call(f"delete {self.url}{prefix}", self._client.delete_objects, Bucket=self.bucket, Delete=batch)
        return len(keys)

    def presigned_url(self, key: str, expires_s: int, filename: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=int(expires_s))

    def ensure_bucket(self) -> bool:
        """Create the bucket if it does not exist (the deployment's migrate step); True if created."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in _MISSING | {"NoSuchBucket"}:
                raise _translate(exc, f"head bucket {self.bucket}") from exc
        except BotoCoreError as exc:
            raise _translate(exc, f"head bucket {self.bucket}") from exc
        self._call(f"create bucket {self.bucket}", self._client.create_bucket, Bucket=self.bucket)
        return True
