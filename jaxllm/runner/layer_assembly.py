"""A decoder layer's weights from its raw checkpoint bytes, on the device, in one jitted call.

The loader reads a layer's tensors into one host buffer and sends it in one transfer; this call cuts
the buffer into tensors, reinterprets their bytes (bf16 pairs, f32 quads), casts to the model dtype,
transposes the linear weights to [in, out] and fuses q|k|v and gate|up when the runner runs fused:

    uint8 [bytes of the layer] --slice, bitcast--> wq [N*H, D] ... --astype, .T--> wq [D, N*H] --fuse--> w_qkv

Every layer of a model has the same layout, so this compiles once per model (and comes from the
persistent compilation cache on later starts).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxllm.models.fusion import fuse_layer


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def assemble_layer(raw: jax.Array, layout: tuple, dtype: str, fuse: bool) -> dict:
    """raw: the layer's bytes (uint8); layout: (leaf, start, stored dtype, stored shape, transpose?) per tensor."""
    layer = {}
    for leaf, start, stored, shape, transpose in layout:
        itemsize = jnp.dtype(stored).itemsize
        count = math.prod(shape)
        chunk = jax.lax.slice(raw, (start,), (start + count * itemsize,))
        if itemsize > 1:
            chunk = chunk.reshape(count, itemsize)
        x = jax.lax.bitcast_convert_type(chunk, jnp.dtype(stored)).reshape(shape).astype(dtype)
        layer[leaf] = x.T if transpose else x
    return fuse_layer(layer) if fuse else layer
