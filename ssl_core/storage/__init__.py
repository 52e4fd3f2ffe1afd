"""Artifact stores: where a job's files live beyond the worker that wrote them.

Two implementations of one small interface (:class:`~ssl_core.storage.base.ArtifactStore`):
:class:`~ssl_core.storage.local.FileStore` (a local or shared folder, the embedded default) and
:class:`~ssl_core.storage.s3.S3Store` (any S3-compatible object store, through boto3). Which one a
process uses is a URL (``PRETEXTLAB_ARTIFACT_URL``): ``file:///var/lib/pretextlab/artifacts`` or
``s3://bucket/prefix``; :func:`open_store` turns it into a store.

Torch-free and free of the service (no api, no SQL): the API presigns downloads with it, the worker
uploads checkpoints and exports with it, and :mod:`ssl_core.data.remote` fetches datasets with the
same URL rules. boto3 is imported only when an S3 store is opened.
"""

from ssl_core.storage.base import ArtifactStore, ObjectInfo, StoreError, StoreUnavailable, UnsafeKey, check_key, job_prefix
from ssl_core.storage.urls import S3Location, is_s3_url, open_store, parse_s3_url

__all__ = ["ArtifactStore", "ObjectInfo", "S3Location", "StoreError", "StoreUnavailable", "UnsafeKey", "check_key",
           "is_s3_url", "job_prefix", "open_store", "parse_s3_url"]
