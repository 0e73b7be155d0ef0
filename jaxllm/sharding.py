"""Tensor parallelism as a table: parameter name -> logical axes -> mesh axis.

One Python process per host drives its devices; one `jax.sharding.Mesh` with a single axis "tp"
spans them all. Column-parallel weights (q/k/v, gate/up) split their output dimension, row-parallel
weights (o, down) their input dimension, and the embedding and LM head the vocabulary. The models run
each layer's attention and MLP per shard under `shard_map` with one explicit all-reduce after each
(`models/tensor_parallel.py`); the in-specs of those blocks come from this table. The KV pool splits
on the kv-head axis.

When there are fewer kv heads than devices (GQA/MQA with large tp), each kv head is repeated so
that every device holds the one its query heads need, as vLLM does.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.config import ModelConfig
from jaxllm.quantization.weights import QuantizedWeight

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
    # Fused by the runner (models/fusion.py) shard by shard, so each device's columns hold its q|k|v.
    "w_qkv": (None, "heads"),
    "b_qkv": ("heads",),
    "w_gate_up": (None, "mlp"),
    "b_gate_up": ("mlp",),
    "lm_head_bias": ("vocab",),
}

# Logical axis -> mesh axis. Everything else is replicated.
RULES = {"vocab": TP, "heads": TP, "kv_heads": TP, "mlp": TP}


def make_mesh(tensor_parallel_size: int) -> Mesh:
    devices = jax.devices()
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}.")
    if tensor_parallel_size > len(devices):
        raise ValueError(
            f"tensor_parallel_size={tensor_parallel_size} is larger than the {len(devices)} available "
            f"{devices[0].platform.upper()} device(s)."
        )
    if jax.process_count() > 1 and tensor_parallel_size != len(devices):
        raise ValueError(
            f"With {jax.process_count()} processes the model is split over all {len(devices)} devices of the "
            f"job: tensor_parallel_size must be {len(devices)}, got {tensor_parallel_size}."
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


def repeat_kv_heads(array, repeats: int, head_dim: int):
    """[..., K*H] -> [..., K*repeats*H], each head repeated in place (head k -> k*repeats ... ).

    A QuantizedWeight repeats every field along its output axis: AWQ's packed fields hold H/8 words
    per head (the last axis of qweight, zeros and the j-major scales), int8 / fp8 hold H columns.
    """
    if repeats == 1:
        return array
    if isinstance(array, QuantizedWeight):
        per_head = head_dim // 8 if array.kind == "awq" else head_dim
        if array.kind == "awq" and head_dim % 8:
            raise ValueError(f"AWQ kv heads of head_dim {head_dim} (not a multiple of 8) cannot be repeated.")
        k, n = array.shape
        return dataclasses.replace(
            array,
            qweight=repeat_kv_heads(array.qweight, repeats, per_head),
            scales=repeat_kv_heads(array.scales, repeats, per_head),
            zeros=None if array.zeros is None else repeat_kv_heads(array.zeros, repeats, per_head),
            shape=(k, n * repeats),
        )
    lead = array.shape[:-1]
    k = array.shape[-1] // head_dim
    heads = array.reshape(*lead, k, 1, head_dim)
    return np.broadcast_to(heads, (*lead, k, repeats, head_dim)).reshape(*lead, k * repeats * head_dim)


def active_mesh():
    """The mesh of the enclosing `jax.set_mesh` when it splits a "tp" axis not yet mapped by a
    `shard_map` (inside a per-shard block the axis is manual and arrays are already local), else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or TP not in mesh.axis_names or mesh.shape[TP] == 1:
        return None
    return None if TP in mesh.manual_axes else mesh


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


def _field_spec(name: str, axes: tuple, shape: tuple[int, ...], tp: int, uneven: bool = False) -> PartitionSpec:
    spec = []
    for logical, size in zip(axes, shape):
        mesh_axis = RULES.get(logical) if logical else None
        if mesh_axis and size % tp and not uneven:
            logger.info("Replicating a dimension of quantized %s: %d is not divisible by tp=%d", name, size, tp)
            mesh_axis = None
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


def quantized_specs(name: str, weight: QuantizedWeight, tp: int, uneven: bool = False) -> QuantizedWeight:
    """PartitionSpecs of a QuantizedWeight's fields (a QuantizedWeight of specs).

    Each field is split along the logical axes of the dense weight it stands for: the input axis is
    axis 0 of qweight (and of the per-group zeros/scales, one row per group), the output axis their
    last axis. AWQ packs the output dim by 8, so a column split needs N/8 divisible by tp, and a row
    split K/G; a dimension that does not divide stays replicated (still correct: XLA moves the data)
    unless `uneven` asks for the split the table wants regardless.
    """
    in_axis, out_axis = LOGICAL_AXES.get(name, (None, None)) if tp > 1 else (None, None)

    def put(axes, array):
        return None if array is None else _field_spec(name, axes, array.shape, tp, uneven)

    if weight.kind == "awq":
        return dataclasses.replace(
            weight,
            qweight=put((in_axis, out_axis), weight.qweight),
            zeros=put((in_axis, out_axis), weight.zeros),
            scales=put((in_axis, None, out_axis), weight.scales),
        )
    return dataclasses.replace(
        weight, qweight=put((in_axis, out_axis), weight.qweight), scales=put((out_axis,), weight.scales)
    )


def quantized_sharding(mesh: Mesh, name: str, weight: QuantizedWeight) -> QuantizedWeight:
    """Shardings of a QuantizedWeight's fields (a QuantizedWeight of NamedShardings), see `quantized_specs`."""
    specs = quantized_specs(name, weight, mesh.shape[TP])
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def leaf_spec(name: str, leaf, tp: int):
    """The PartitionSpec of one parameter leaf (a QuantizedWeight of them for a quantized weight)."""
    if isinstance(leaf, QuantizedWeight):
        return quantized_specs(name, leaf, tp)
    return partition_spec(name, leaf.shape, tp)


def splits_evenly(name: str, leaf, tp: int) -> bool:
    """Whether every dimension the table splits for `name` is split (none fell back to replication)."""
    if tp == 1 or name not in LOGICAL_AXES:
        return True
    if isinstance(leaf, QuantizedWeight):
        return quantized_specs(name, leaf, tp) == quantized_specs(name, leaf, tp, uneven=True)
    axes = LOGICAL_AXES[name]
    return len(axes) == len(leaf.shape) and all(
        size % tp == 0 for logical, size in zip(axes, leaf.shape) if RULES.get(logical)
    )


def leaf_sharding(mesh: Mesh, name: str, leaf):
    """The sharding of one parameter leaf: a NamedSharding, or a QuantizedWeight of them."""
    if isinstance(leaf, QuantizedWeight):
        return quantized_sharding(mesh, name, leaf)
    return param_sharding(mesh, name, leaf.shape)


def kv_cache_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(TP))  # [K, P, S, H] split on K


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
