"""Where the per-layer K/V scales of a float8 KV pool start.

As vLLM: with `calculate_kv_scales` every scale starts at 0 and the first step that writes K/V sets it
(see pallas_kernels/kv_quant.py); otherwise the scales a checkpoint carries are used, and 1.0 for the
layers it has none for. Checkpoint names read (per layer, anywhere in the name after the layer index)::

    ...layers.7.self_attn.k_scale / v_scale                 one scalar each
    ...layers.7.self_attn.k_proj.output_scale / v_proj...   the same, in the compressed-tensors spelling
    ...layers.7.self_attn.kv_scale                          one scalar for both
"""

from __future__ import annotations

import logging
import re

import numpy as np

from jaxllm.checkpoint_reader import read_safetensors_header
from jaxllm.config import CacheConfig, ModelConfig
from jaxllm.model_loader import safetensors_files

logger = logging.getLogger(__name__)

_SCALE_NAME = re.compile(r"(?:^|\.)(\d+)\.(?:.*\.)?(k_scale|v_scale|kv_scale|k_proj\.output_scale|v_proj\.output_scale)$")
_WHICH = {"k_scale": (0,), "k_proj.output_scale": (0,), "v_scale": (1,), "v_proj.output_scale": (1,), "kv_scale": (0, 1)}


def checkpoint_kv_scales(path: str, num_layers: int) -> np.ndarray | None:
    """`[L, 2]` float32 (k_scale, v_scale) from the checkpoint's scale tensors, NaN where a layer has none;
    None when the checkpoint carries no scales (or there are no weight files)."""
    try:
        files = safetensors_files(path)
    except (ValueError, OSError):
        return None
    scales = np.full((num_layers, 2), np.nan, np.float32)
    found = False
    for file in files:
        header, start = read_safetensors_header(file)
        for name, info in header.items():
            match = _SCALE_NAME.search(name)
            if match is None or int(match.group(1)) >= num_layers:
                continue
            value = _read_scalar(file, start, info)
            for column in _WHICH[match.group(2)]:
                scales[int(match.group(1)), column] = value
            found = True
    return scales if found else None


def _read_scalar(file: str, start: int, info: dict) -> float:
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": None}
    if info["dtype"] not in dtypes:
        raise ValueError(f"{file}: KV scale of dtype {info['dtype']} is not read (F32, F16, BF16, F64 are)")
    begin, end = info["data_offsets"]
    with open(file, "rb") as f:
        f.seek(start + begin)
        raw = f.read(end - begin)
    if info["dtype"] == "BF16":  # the upper half of a float32
        values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, dtypes[info["dtype"]]).astype(np.float32)
    if values.size == 0:
        raise ValueError(f"{file}: an empty KV scale tensor")
    return float(values.max())  # a per-head vector is reduced to one per-tensor scale that covers it


def initial_kv_scales(model: ModelConfig, cache: CacheConfig) -> np.ndarray | None:
    """`[L, 2]` float32 (k_scale, v_scale) per layer for a float8 pool (0: calibrate), None otherwise."""
    if not cache.is_fp8:
        return None
    if cache.calculate_kv_scales:
        return np.zeros((model.num_layers, 2), np.float32)
    scales = checkpoint_kv_scales(model.path, model.num_layers) if model.path else None
    if scales is None:
        return np.ones((model.num_layers, 2), np.float32)
    missing = int(np.isnan(scales).any(axis=1).sum())
    if missing:
        logger.warning("The checkpoint has no K/V scales for %d of %d layers: 1.0 there", missing, model.num_layers)
    bad = ~(np.isfinite(scales) & (scales > 0)) & ~np.isnan(scales)
    if bad.any():
        raise ValueError(f"The checkpoint's K/V scales must be positive and finite; layers {sorted(set(np.nonzero(bad)[0]))}")
    logger.info("K/V scales of the float8 KV pool read from the checkpoint")
    return np.where(np.isnan(scales), 1.0, scales).astype(np.float32)
