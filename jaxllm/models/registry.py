"""Architecture name -> the module with its `name_table`, `forward` and `compute_logits`."""

from __future__ import annotations

import importlib
from types import ModuleType

from jaxllm.models.names import ARCHITECTURE_MODULES


def get_model_module(architecture: str) -> ModuleType:
    if architecture not in ARCHITECTURE_MODULES:
        raise ValueError(
            f"Unsupported architecture {architecture!r}. "
            f"Supported architectures: {', '.join(sorted(ARCHITECTURE_MODULES))}."
        )
    return importlib.import_module(f"jaxllm.models.{ARCHITECTURE_MODULES[architecture]}")
