"""The metadata of a ``.safetensors`` file, read from its JSON header without torch.

The format opens with an 8-byte little-endian header length, then that many bytes of JSON whose
``__metadata__`` maps strings to strings. The API reads a backbone file's metadata through this (it
never loads torch) to check an evaluation's ``layers`` before queueing it, and
:func:`ssl_core.backbone_file.load_backbone` reads it the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

# safetensors refuses headers over 100 MB; a backbone's header is a few KB
MAX_HEADER_BYTES = 100_000_000


def read_metadata(path: Path | str) -> dict[str, str]:
    """The file's ``__metadata__`` ({} when it has none); ValueError when the header is malformed,
    OSError when the file cannot be read."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 2 <= size <= MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors file (header length {size})")
        raw = f.read(size)
    if len(raw) != size:
        raise ValueError(f"{path}: truncated safetensors header")
    header = json.loads(raw)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path}: safetensors metadata must map strings to strings")
    return meta
