"""Fused projections: q|k|v in one weight and gate|up in another, so a layer runs 4 matmuls, not 7.

At batch 1 a decode step is a chain of matrix-vector products that each stream a weight from HBM;
small ones (k and v are [D, K*H]: 8 MB for an 8B Llama) run well below the memory bandwidth and each
adds a kernel launch. Concatenating along the output dimension makes one product per group:

    wqkv      [D, N*H + 2*K*H]   = [wq | wk | wv]      (bqkv likewise, when the layer has biases)
    w_gate_up [D, 2*F]           = [w_gate | w_up]     (b_gate_up likewise)

The model code takes either layout (`layers.qkv_projection`, `layers.gate_up_projection`), so
checkpoints, converted checkpoints and the sharding table keep the separate names. The runner fuses
after loading when the weights are dense arrays on one device: under tensor parallelism each device
would need its own column range of each part (kept separate there), and quantized weights keep
their own per-group layout. JAXLLM_FUSE_PROJECTIONS=0 turns fusion off.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

GROUPS = (("qkv", ("q", "k", "v")), ("_gate_up", ("_gate", "_up")))


def fusion_enabled() -> bool:
    return os.environ.get("JAXLLM_FUSE_PROJECTIONS", "1").lower() not in ("0", "false", "no", "off")


@jax.jit
def _concat(parts):
    return jnp.concatenate(parts, axis=-1)


def _fusable(layer: dict, names: tuple[str, ...]) -> bool:
    weights = [layer.get("w" + n) for n in names]
    if not all(isinstance(w, jax.Array) and w.ndim == 2 for w in weights):
        return False  # absent, or quantized
    if len({w.dtype for w in weights}) != 1 or len({w.shape[0] for w in weights}) != 1:
        return False
    biases = [("b" + n) in layer for n in names]
    return all(biases) or not any(biases)


def fuse_layer(layer: dict) -> dict:
    """One layer's dict with its q/k/v and gate/up weights concatenated, in place (also inside a jitted
    function, where the loader builds a whole layer in one call)."""
    for fused, names in GROUPS:
        if not _fusable(layer, names):
            continue
        for prefix in ("w", "b"):
            if prefix + names[0] in layer:
                layer[prefix + fused] = _concat([layer.pop(prefix + n) for n in names])
    return layer


def fuse_projections(params: dict) -> dict:
    """The same tree with each layer's q/k/v and gate/up weights concatenated (one layer at a time,
    the separate arrays freed as it goes, so the extra memory is one layer's projections). Layers
    already fused (by the loader) are left as they are."""
    layers = params.get("layers", {})
    for layer in layers.values() if isinstance(layers, dict) else layers:
        fuse_layer(layer)
    return params
