"""What every spec shares: the strict base model and the input-safety limits.

The API refuses anything beyond these limits before a job is queued.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic import Strict as StrictType
from pydantic_core import PydanticCustomError

MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 8192
MAX_IMAGE_SIZE = 512
MAX_QUEUE_SIZE = 1 << 20
MAX_QUEUE_ELEMENTS = 1 << 26  # K x D floats: 256 MiB of fp32 keys at most
MAX_SUBSET = 10_000_000
MAX_PERMUTATIONS = 1000
MAX_SEED = 2**31 - 1
# every list in a spec has a bound, generous for real use (a paper's pipeline is under 10 ops)
MAX_AUGMENT_OPS = 64
MAX_FOLLOWUPS = 16  # eval.after: evaluations queued when a pretraining succeeds
MAX_MILESTONES = 32
MAX_PATH_LENGTH = 4096  # a dataset folder or weights file path, in characters
MAX_GPUS = 1024  # resources.gpus: ranks of one data-parallel job


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "must be finite, not {value}", {"value": str(value)})
    return value


def _exact_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# Numeric and boolean spec fields take exactly that JSON type: "3" or true is refused for an int (not
# read as 3 or 1), a string for a float or a bool; an int is a float. NaN and infinities are refused.
Int = Annotated[int, StrictType()]
Real = Annotated[float, StrictType(), BeforeValidator(_finite)]
Bool = Annotated[bool, StrictType()]
IntChoice = BeforeValidator(_exact_int)  # for Literal[1, 2]: lax Literal reads true as 1 and 2.0 as 2


class Strict(BaseModel):
    """Base for every spec: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def climbs_or_has_nul(path: str) -> bool:
    """Whether a user-given path has a ``..`` component (either slash) or a NUL byte: refused
    by spelling at validation, before any resolution (ssl_core.paths checks containment later)."""
    return "\x00" in path or ".." in path.replace("\\", "/").split("/")
