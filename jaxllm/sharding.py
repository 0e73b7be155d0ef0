"""Tensor parallelism as a table: parameter name -> logical axes -> mesh axis.

One Python process drives every local device through one `jax.sharding.Mesh` with a single axis
"tp". Column-parallel weights (q/k/v, gate/up) split their output dimension, row-parallel weights
(o, down) their input dimension, and the embedding and LM head the vocabulary; XLA inserts the
all-reduces. The KV pool splits on the kv-head axis; the Pallas kernel, which XLA cannot partition,
runs per shard under `shard_map` (see `models/layers.py`).

When there are fewer kv heads than devices (GQA/MQA with large tp), each kv head is repeated so
that every device holds the one its query heads need, as vLLM does.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.config import ModelConfig

logger = logging.getLogger(__name__)

TP = "tp"

# Parameter leaf name -> logical axis of each dimension (weights are stored [in, out]).
LOGICAL_AXES: dict[str, tuple[str | None, ...]] = {
    "embed": ("vocab", None),
    "lm_head": (None, "vocab"),
    "wq": (None, "heads"),
    "wk": (None, "kv_heads"),
    "wv": (None, "kv_heads"),
    "bq": ("heads",),
    "bk": ("kv_heads",),
    "bv": ("kv_heads",),
    "wo": ("heads", None),
    "w_gate": (None, "mlp"),
    "w_up": (None, "mlp"),
    "b_gate": ("mlp",),
    "b_up": ("mlp",),
    "w_down": ("mlp", None),
    "w_fc1": (None, "mlp"),
    "b_fc1": ("mlp",),
    "w_fc2": ("mlp", None),
}

# Logical axis -> mesh axis. Everything else is replicated.
RULES = {"vocab": TP, "heads": TP, "kv_heads": TP, "mlp": TP}


def maybe_initialize_distributed() -> None:
    """Join a multi-host job when the usual coordinator variables are set (one process per host)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def make_mesh(tensor_parallel_size: int) -> Mesh:
    devices = jax.devices()
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}.")
    if tensor_parallel_size > len(devices):
        raise ValueError(
            f"tensor_parallel_size={tensor_parallel_size} is larger than the {len(devices)} available "
            f"{devices[0].platform.upper()} device(s)."
        )
    return Mesh(np.array(devices[:tensor_parallel_size]), (TP,))


def check_tensor_parallel(cfg: ModelConfig, tp: int) -> None:
    """Raise a ValueError naming the dimension that `tp` cannot split."""
    if tp == 1:
        return
    if cfg.num_heads % tp:
        raise ValueError(
            f"Total number of attention heads ({cfg.num_heads}) must be divisible by tensor parallel size ({tp})."
        )
    k = cfg.num_kv_heads
    if k >= tp and k % tp:
        raise ValueError(
            f"Total number of kv heads ({k}) must be divisible by tensor parallel size ({tp})."
        )
    if k < tp and tp % k:
        raise ValueError(
            f"Tensor parallel size ({tp}) must be a multiple of the number of kv heads ({k}) to replicate them."
        )
    if cfg.intermediate_size % tp:
        raise ValueError(
            f"The MLP size ({cfg.intermediate_size}) must be divisible by tensor parallel size ({tp})."
        )


def sharded_config(cfg: ModelConfig, tp: int) -> ModelConfig:
    """The config the sharded model runs with: kv heads repeated up to `tp` when there are fewer."""
    if cfg.num_kv_heads >= tp:
        return cfg
    return dataclasses.replace(cfg, num_kv_heads=tp)


def kv_head_repeats(cfg: ModelConfig, tp: int) -> int:
    return max(1, tp // cfg.num_kv_heads)


def repeat_kv_heads(array: np.ndarray, repeats: int, head_dim: int) -> np.ndarray:
    """[..., K*H] -> [..., K*repeats*H], each head repeated in place (head k -> k*repeats ... )."""
    if repeats == 1:
        return array
    lead = array.shape[:-1]
    k = array.shape[-1] // head_dim
    heads = array.reshape(*lead, k, 1, head_dim)
    return np.broadcast_to(heads, (*lead, k, repeats, head_dim)).reshape(*lead, k * repeats * head_dim)


def partition_spec(name: str, shape: tuple[int, ...], tp: int) -> PartitionSpec:
    """Mesh placement of a parameter leaf; a dimension that does not divide evenly stays replicated."""
    axes = LOGICAL_AXES.get(name)
    if tp == 1 or axes is None or len(axes) != len(shape):
        return PartitionSpec()
    spec = []
    for logical, size in zip(axes, shape):
        mesh_axis = RULES.get(logical) if logical else None
        if mesh_axis and size % tp:
            logger.info("Replicating %s: dimension %d is not divisible by tp=%d", name, size, tp)
            mesh_axis = None
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


def param_sharding(mesh: Mesh, name: str, shape: tuple[int, ...]) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(name, shape, mesh.shape[TP]))


def kv_cache_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(TP))  # [K, P, S, H] split on K


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
