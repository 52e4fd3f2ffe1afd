"""Service settings: one pydantic-settings class, every value from ``PRETEXTLAB_*`` variables.

ssl_core reads ``PRETEXTLAB_DATA_ROOT`` and ``PRETEXTLAB_ALLOWED_DATA_ROOTS`` straight from the
environment (it must not import ``api``); the same names are declared here so the service and the
engine agree on them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ssl_core.storage import ArtifactStore, open_store
from ssl_core.storage.urls import check_store_url, file_url_path


# Cursors stay valid for the life of the process when no PRETEXTLAB_CURSOR_SECRET is set.
_PROCESS_CURSOR_KEY = secrets.token_bytes(32)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRETEXTLAB_", extra="ignore", validate_default=True)

    database_url: str = Field("sqlite:///./pretextlab.sqlite", description="SQLAlchemy URL (sqlite or postgresql+psycopg)")
    broker_url: str | None = Field(None, description="redis://... = Celery; unset = embedded local worker")
    artifact_root: Path = Field(Path("./artifacts"), description="each job writes under ARTIFACT_ROOT/jobs/<id>/")
    artifact_url: str | None = Field(None, description="file:///path or s3://bucket/prefix (unset = file://ARTIFACT_ROOT); "
                                     "with s3:// ARTIFACT_ROOT is this host's scratch folder")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (unset = AWS_ENDPOINT_URL or AWS itself)")
    s3_public_endpoint_url: str | None = Field(None, description="the endpoint presigned download URLs name")
    presign_seconds: int = Field(300, ge=1, le=604800, description="lifetime of a presigned download URL")
    store_retries: int = Field(3, ge=1, le=20, description="tries of an artifact upload before the job is requeued")
    allowed_data_urls: str = Field("", description="s3:// prefixes image-folder datasets may be read from, comma-separated")
    data_root: Path = Field(Path("./data"), description="where datasets live")
    allowed_data_roots: str = Field("", description="extra data roots, os.pathsep- or comma-separated")
    fashion_mnist_source: Path | None = Field(None, description="Fashion-MNIST .gz files; unset = the Debian package's")
    # SecretStr: its repr and str are '**********', so a logged Settings object leaks nothing.
    api_tokens: SecretStr | None = Field(None, description="comma-separated admin bearer tokens (>= 32 chars each)")
    auth: Literal["on", "off"] = Field("on", description="off: no tokens at all, refused unless HOST is loopback")
    cursor_secret: SecretStr | None = Field(
        None, description="key signing GET /v1/jobs cursors; unset = a random key per process (set it to "
                          "share cursors between API replicas and across restarts)")
    host: str = Field("127.0.0.1", description="bind address of `pretextlab serve` (loopback by default)")
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request bodies larger than this get 413")
    max_active_jobs: int = Field(10_000, ge=1, description="queued + running + cancelling jobs allowed at once")
    max_active_jobs_per_owner: int = Field(1_000, ge=1, description="the same, per token (follow-ups included)")
    max_runtime_s: int | None = Field(None, ge=1, description="ceiling on a job's run time (s); unset = none")
    max_suite_jobs: int = Field(500, ge=1, description="jobs one suite or sweep may create, evaluations included")
    retention_days: float | None = Field(None, gt=0, description="prune metrics/artifacts of jobs finished earlier")
    prune_seconds: float = Field(600.0, gt=0, description="period of the retention sweep (and deleted jobs' folders)")
    db_app_password: SecretStr | None = Field(None, description="`db upgrade` creates role pretextlab_app with it")
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=100, description="worker losses before a job fails (every new job's limit)")
    reconcile_seconds: float = Field(15.0, gt=0)
    redispatch_after_seconds: float = Field(60.0, gt=0)
    idle_redispatch_seconds: float = Field(
        5.0, ge=0, description="an idle Celery worker re-sends the message of a claimable job queued this "
                               "long with none sent (lost by the broker); 0 = off")
    visibility_timeout: int = Field(3600, ge=1, description="Celery Redis transport visibility timeout (s)")
    worker_queues: str = Field("gpu,cpu")
    local_workers: int = Field(1, ge=0, le=64, description="embedded: jobs at once (CPU slots) unless WORKER_GPUS is set")
    worker_gpus: str = Field("", description="GPUs a worker owns: '0,1,2,3' or 'all'; empty = see docs/deployment.md")
    metric_flush_seconds: float = Field(2.0, gt=0)
    log_level: str = Field("INFO")
    # Seconds a worker sleeps at each step boundary: the fault-injection tests hold a job open long
    # enough to kill its worker (kill -9 mid-job, SIGTERM). 0 in every real deployment.
    session_secret: SecretStr | None = Field(None, description="key signing the dashboard's session cookie; "
                                             "set it when several API processes serve /ui/ (unset: per process)")
    test_step_delay: float = Field(0.0, ge=0, description="test knob: seconds slept per training step")

    @field_validator("broker_url", "fashion_mnist_source", "artifact_url", "s3_endpoint_url", "s3_public_endpoint_url",
                     "max_runtime_s", "retention_days", "db_app_password", "session_secret",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _empty_tokens_is_none(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        if isinstance(v, SecretStr) and not v.get_secret_value().strip():
            return None
        return v

    @model_validator(mode="after")
    def _file_url_is_the_root(self) -> "Settings":
        """``file:///path`` is ARTIFACT_ROOT spelled as a URL (the two must not disagree)."""
        if self.artifact_url is not None:
            check_store_url(self.artifact_url)
            path = file_url_path(self.artifact_url)
            if path is not None:
                self.artifact_root = path
        return self

    # -- derived values ----------------------------------------------------------------------
    def artifact_store(self) -> ArtifactStore:
        """The store the job files live in (one per process): file://ARTIFACT_ROOT unless ARTIFACT_URL says s3://."""
        url = self.artifact_url or Path(self.artifact_root).expanduser().resolve().as_uri()
        return open_store(url, endpoint_url=self.s3_endpoint_url, public_endpoint_url=self.s3_public_endpoint_url,
                          retries=self.store_retries)

    def cursor_key(self) -> bytes:
        """The pagination cursors' HMAC key: the setting, or one random key for this process."""
        if self.cursor_secret is not None and self.cursor_secret.get_secret_value():
            return self.cursor_secret.get_secret_value().encode()
        return _PROCESS_CURSOR_KEY

    def token_list(self) -> list[str]:
        """The configured bearer tokens (empty list = authentication off)."""
        if self.api_tokens is None:
            return []
        return [t.strip() for t in self.api_tokens.get_secret_value().split(",") if t.strip()]

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on"

    def auth_refusal(self, named_tokens: int) -> str | None:
        """Why the API must not start with these settings (None: it may). ``named_tokens`` is the
        number of live tokens in the api_tokens table (``pretextlab token create``)."""
        raw = self.api_tokens.get_secret_value() if self.api_tokens is not None else ""
        entries = [t.strip() for t in raw.split(",")] if raw.strip() else []
        if any(not t for t in entries):
            return ("PRETEXTLAB_API_TOKENS holds an empty entry (e.g. ',' or 'a,,b'): list the tokens "
                    "separated by single commas")
        short = [i + 1 for i, t in enumerate(entries) if len(t) < MIN_TOKEN_CHARS]
        if short:
            return (f"PRETEXTLAB_API_TOKENS: token(s) {short} are shorter than {MIN_TOKEN_CHARS} characters; "
                    "make one with `python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"`")
        if self.auth == "off":
            if entries or not is_loopback(str(self.host)):
                where = "tokens are set" if entries else f"PRETEXTLAB_HOST is {self.host!r}, not a loopback address"
                return (f"PRETEXTLAB_AUTH=off is refused: {where}. Authentication may be off only for a "
                        "server bound to 127.0.0.1/::1 (PRETEXTLAB_HOST)")
            return None
        if not entries and named_tokens == 0:
            return ("no API token: create one with `pretextlab token create NAME --admin`, or set "
                    "PRETEXTLAB_API_TOKENS, or PRETEXTLAB_AUTH=off for a loopback-only single-user server")
        return None

    @property
    def embedded(self) -> bool:
        """No broker: the local worker polls SQL."""
        return self.broker_url is None

    def allowed_roots(self) -> list[Path]:
        """The data root plus the extra allowed roots, resolved."""
        extra = [p for p in re.split(rf"[,{re.escape(os.pathsep)}]", self.allowed_data_roots) if p.strip()]
        return [Path(p).expanduser().resolve() for p in [str(self.data_root), *extra]]

    def queues(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    def job_dir(self, job_id: int) -> Path:
        """ARTIFACT_ROOT/jobs/<id>: the one folder a job writes to and the API serves from (the same
        relative path as its prefix in an object store). A reused id after a database reset finds
        the old files there, but never resumes from them: the checkpoint records the job's run key."""
        return Path(self.artifact_root).resolve() / "jobs" / str(int(job_id))


MIN_TOKEN_CHARS = 32
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or a loopback name. Anything else -- 0.0.0.0, ::, an interface address, a
    hostname that resolves who knows where, an empty host (all interfaces) -- is reachable from outside."""
    h = (host or "").strip().strip("[]")
    if h.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment (tests pass their own to ``create_app``)."""
    return Settings()
