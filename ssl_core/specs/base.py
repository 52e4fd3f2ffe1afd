"""What every spec shares: the strict base model and the input-safety limits.

The API refuses anything beyond these limits before a job is queued.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 8192
MAX_IMAGE_SIZE = 512
MAX_QUEUE_SIZE = 1 << 20
MAX_QUEUE_ELEMENTS = 1 << 26  # K x D floats: 256 MiB of fp32 keys at most
MAX_SUBSET = 10_000_000
MAX_PERMUTATIONS = 1000
MAX_GPUS = 1024  # resources.gpus: ranks of one data-parallel job


class Strict(BaseModel):
    """Base for every spec: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def climbs_or_has_nul(path: str) -> bool:
    """Whether a user-given path has a ``..`` component (either slash) or a NUL byte: refused
    by spelling at validation, before any resolution (ssl_core.paths checks containment later)."""
    return "\x00" in path or ".." in path.replace("\\", "/").split("/")
