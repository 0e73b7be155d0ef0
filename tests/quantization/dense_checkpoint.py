"""The dense twin of an AWQ checkpoint: the tensors it stands for, saved as an ordinary float32 model."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np


def write_dense_checkpoint(src: str, dst: str, tensors: dict[str, np.ndarray]) -> None:
    """`tensors` as an ordinary float32 checkpoint with `src`'s config (minus any quantization)."""
    from safetensors.numpy import save_file

    os.makedirs(dst, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    _copy_tokenizer(src, dst)


def _copy_tokenizer(src: str, dst: str) -> None:
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens", "generation_config", "vocab", "merges")):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
