"""Fused projections: q|k|v in one weight and gate|up in another, so a layer runs 4 matmuls, not 7.

At batch 1 a decode step is a chain of matrix-vector products that each stream a weight from HBM;
small ones (k and v are [D, K*H]: 8 MB for an 8B Llama) run well below the memory bandwidth and each
adds a kernel launch. Concatenating along the output dimension makes one product per group:

    w_qkv     [D, N*H + 2*K*H]   = [wq | wk | wv]      (b_qkv likewise, when the layer has biases)
    w_gate_up [D, 2*F]           = [w_gate | w_up]     (b_gate_up likewise)

Under tensor parallelism over `shards` devices the parts are fused shard by shard, so that the
column range each device holds (the sharding table splits w_qkv like wq) is its own q|k|v:

    w_qkv [D, shards * (N + 2K)/shards * H] = [wq_0 | wk_0 | wv_0 | wq_1 | wk_1 | wv_1 | ...]

The model code takes either layout (`layers.qkv_projection`, `layers.gate_up_projection`) with the
head counts it sees (a shard's own inside a per-shard block), so checkpoints and converted checkpoints
keep the separate names. The runner fuses weights after loading. Quantized weights (AWQ, int8, fp8) of
one kind fuse field by field on one device (each field's last axis runs over the output columns); under
tensor parallelism they stay separate. JAXLLM_FUSE_PROJECTIONS=0 turns fusion off.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from jaxllm.quantization.weights import QuantizedWeight

GROUPS = (("_qkv", ("q", "k", "v")), ("_gate_up", ("_gate", "_up")))


def fusion_enabled() -> bool:
    return os.environ.get("JAXLLM_FUSE_PROJECTIONS", "1").lower() not in ("0", "false", "no", "off")


@functools.partial(jax.jit, static_argnums=(1,))
def _concat(parts, shards: int):
    """Concatenate on the last axis, shard by shard: [..., c_i] -> [..., shards * sum(c_i / shards)]."""
    lead = parts[0].shape[:-1]
    split = [x.reshape(*lead, shards, x.shape[-1] // shards) for x in parts]
    return jnp.concatenate(split, axis=-1).reshape(*lead, -1)


def _quantized_fusable(weights: list, shards: int) -> bool:
    """Quantized parts of one kind and group size over the same input width (one device only: the fused
    fields would need the per-shard placement of each)."""
    if shards != 1 or not all(isinstance(w, QuantizedWeight) for w in weights):
        return False
    first = weights[0]
    return all(w.kind == first.kind and w.group_size == first.group_size and w.shape[0] == first.shape[0]
               and (w.zeros is None) == (first.zeros is None) for w in weights)


def _fuse_quantized(parts: list) -> QuantizedWeight:
    """Every field of a quantized weight runs over the output columns on its last axis (AWQ's eight to a
    word, see quantization/awq_layout.py), so the fused weight is each field concatenated there."""
    first = parts[0]
    zeros = None if first.zeros is None else _concat([w.zeros for w in parts], 1)
    return QuantizedWeight(_concat([w.qweight for w in parts], 1), _concat([w.scales for w in parts], 1), zeros,
                           kind=first.kind, group_size=first.group_size,
                           shape=(first.shape[0], sum(w.shape[1] for w in parts)))


def _fusable(layer: dict, names: tuple[str, ...], shards: int) -> bool:
    weights = [layer.get("w" + n) for n in names]
    if _quantized_fusable(weights, shards):
        biases = [("b" + n) in layer for n in names]
        return all(biases) or not any(biases)
    if not all(isinstance(w, jax.Array) and w.ndim == 2 for w in weights):
        return False  # absent, or quantized in different ways
    if len({w.dtype for w in weights}) != 1 or len({w.shape[0] for w in weights}) != 1:
        return False
    if any(w.shape[-1] % shards for w in weights):
        return False
    biases = [("b" + n) in layer for n in names]
    return all(biases) or not any(biases)


def fuse_layer(layer: dict, shards: int = 1) -> dict:
    """One layer's dict with its q/k/v and gate/up weights concatenated (shard by shard), in place (also
    inside a jitted function, where the loader builds a whole layer in one call)."""
    for fused, names in GROUPS:
        if not _fusable(layer, names, shards):
            continue
        for prefix in ("w", "b"):
            if prefix + names[0] in layer:
                parts = [layer.pop(prefix + n) for n in names]
                quantized = isinstance(parts[0], QuantizedWeight)
                layer[prefix + fused] = _fuse_quantized(parts) if quantized else _concat(parts, shards)
    return layer


def fuse_projections(params: dict, shards: int = 1) -> dict:
    """The same tree with each layer's q/k/v and gate/up weights concatenated (one layer at a time,
    the separate arrays freed as it goes, so the extra memory is one layer's projections). Layers
    already fused (by the loader) are left as they are."""
    layers = params.get("layers", {})
    for layer in layers.values() if isinstance(layers, dict) else layers:
        fuse_layer(layer, shards)
    return params
