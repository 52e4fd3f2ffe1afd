"""``backbone.safetensors``: the file a pretraining exports and an evaluation reads.

The backbone's weights alone (no optimizer, no method heads) plus string metadata saying how to
rebuild and feed it: the backbone spec, input channels and size, the normalisation mean/std, and
where it came from (method, epochs, dataset, the full pretraining spec). safetensors never
unpickles, so an evaluation job can read a file it did not write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ssl_core.backbones import build_backbone
from ssl_core.errors import PermanentError
from ssl_core.runtime import atomic_write
from ssl_core.specs import BackboneSpec
from ssl_core.weights_header import read_metadata

FORMAT = "pretextlab-backbone/1"


def backbone_metadata(spec_json: str, backbone: BackboneSpec, feature_dim: int, in_channels: int, image_size: int,
                      mean: Sequence[float], std: Sequence[float], method: str, epochs: int,
                      dataset: str) -> dict[str, str]:
    """String-valued safetensors metadata (JSON-encoded values) that :func:`load_backbone` parses."""
    return {
        "format": FORMAT, "spec": spec_json, "backbone": backbone.model_dump_json(),
        "feature_dim": str(int(feature_dim)), "in_channels": str(int(in_channels)), "image_size": str(int(image_size)),
        "mean": json.dumps([float(m) for m in mean]), "std": json.dumps([float(s) for s in std]),
        "method": json.dumps(method), "epochs": str(int(epochs)), "dataset": json.dumps(dataset),
    }


def export_backbone(path: Path, backbone: nn.Module, metadata: dict[str, str]) -> Path:
    """Write the backbone's weights and ``metadata`` to ``path`` atomically."""
    # channels_last weights are not contiguous in the default layout; safetensors stores that layout
    state = {k: v.detach().to("cpu").contiguous() for k, v in backbone.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_backbone(weights_path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a backbone from a ``backbone.safetensors`` file.

    Returns the module (eval mode) and the parsed metadata: spec (dict), backbone (dict),
    feature_dim, in_channels, image_size, mean, std, method, epochs, dataset.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise PermanentError(f"weights: no backbone file at {path}")
    try:
        raw = read_metadata(path)
        state = load_file(str(path), device=str(device))
    except Exception as e:  # a truncated or foreign file
        raise PermanentError(f"weights: {path} is not a readable safetensors file ({e})") from e
    if "backbone" not in raw:
        raise PermanentError(f"weights: {path} has no pretextlab backbone metadata")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            meta[key] = value
    spec = BackboneSpec.model_validate(meta["backbone"])
    module = build_backbone(spec, int(meta["in_channels"]), int(meta["image_size"]))
    module.load_state_dict(state)
    return module.to(device).eval(), meta
