"""Service settings: one pydantic-settings class, every value from ``PRETEXTLAB_*`` variables.

ssl_core reads ``PRETEXTLAB_DATA_ROOT`` and ``PRETEXTLAB_ALLOWED_DATA_ROOTS`` straight from the
environment (it must not import ``api``); the same names are declared here so the service and the
engine agree on them.
"""

from __future__ import annotations

import os
import re
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# Cursors stay valid for the life of the process when no PRETEXTLAB_CURSOR_SECRET is set.
_PROCESS_CURSOR_KEY = secrets.token_bytes(32)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRETEXTLAB_", extra="ignore", validate_default=True)

    database_url: str = Field("sqlite:///./pretextlab.sqlite", description="SQLAlchemy URL (sqlite or postgresql+psycopg)")
    broker_url: str | None = Field(None, description="redis://... = Celery; unset = embedded local worker")
    artifact_root: Path = Field(Path("./artifacts"), description="each job writes under ARTIFACT_ROOT/jobs/<id>/")
    data_root: Path = Field(Path("./data"), description="where datasets live")
    allowed_data_roots: str = Field("", description="extra data roots, os.pathsep- or comma-separated")
    fashion_mnist_source: Path | None = Field(None, description="Fashion-MNIST .gz files; unset = the Debian package's")
    # SecretStr: its repr and str are '**********', so a logged Settings object leaks nothing.
    api_tokens: SecretStr | None = Field(None, description="comma-separated bearer tokens; unset = no auth")
    cursor_secret: SecretStr | None = Field(
        None, description="key signing GET /v1/jobs cursors; unset = a random key per process (set it to "
                          "share cursors between API replicas and across restarts)")
    host: str = Field("127.0.0.1", description="bind address of `pretextlab serve` (loopback by default)")
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request bodies larger than this get 413")
    max_active_jobs: int = Field(10_000, ge=1, description="queued + running + cancelling jobs allowed at once")
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
    local_workers: int = Field(1, ge=0, le=64)
    metric_flush_seconds: float = Field(2.0, gt=0)
    log_level: str = Field("INFO")
    # Seconds a worker sleeps at each step boundary: the fault-injection tests hold a job open long
    # enough to kill its worker (kill -9 mid-job, SIGTERM). 0 in every real deployment.
    test_step_delay: float = Field(0.0, ge=0, description="test knob: seconds slept per training step")

    @field_validator("broker_url", "fashion_mnist_source", mode="before")
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

    # -- derived values ----------------------------------------------------------------------
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
        return bool(self.token_list())

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

    def job_dir(self, job_id: int, run_key: str | None = None) -> Path:
        """ARTIFACT_ROOT/jobs/<id>-<run_key[:12]> (jobs/<id> for rows without a key): the one folder
        a job writes to and the API serves from; a reused id after a database reset gets a new one."""
        name = str(int(job_id)) + (f"-{run_key[:12]}" if run_key else "")
        return Path(self.artifact_root).resolve() / "jobs" / name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment (tests pass their own to ``create_app``)."""
    return Settings()
