"""Method registry: a plain dict of name -> "module:Class", imported lazily.

Importing this module does not import torch; only ``method_class``/``build_method`` do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ssl_core.specs import PretrainSpec

METHODS: dict[str, str] = {
    "rotation": "ssl_core.methods.rotation:RotationPrediction",
    "exemplar": "ssl_core.methods.exemplar:ExemplarCNN",
    "relative_position": "ssl_core.methods.relative_position:RelativePosition",
    "jigsaw": "ssl_core.methods.jigsaw:Jigsaw",
    "simclr": "ssl_core.methods.simclr:SimCLR",
    "moco": "ssl_core.methods.moco:MoCo",
}


def method_class(name: str) -> Any:
    """The class registered for ``name`` (imports its module on first use)."""
    try:
        target = METHODS[name]
    except KeyError:
        raise ValueError(f"method.name: unknown method {name!r} (one of {sorted(METHODS)})") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(spec: "PretrainSpec") -> Any:
    """Instantiate the method of ``spec`` (an nn.Module with backbone, prepare_data, training_step)."""
    return method_class(spec.method.name)(spec)
