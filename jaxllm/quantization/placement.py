"""Putting parameters on the mesh when the model is quantized (called by the runner for every leaf).

* a host QuantizedWeight (AWQ, from the checkpoint) goes up field by field, each with its sharding;
* with int8 / fp8, a linear weight goes up dense in its own sharding and is quantized there (one
  jitted pass on the device, the result created directly in its shards); the dense copy is freed;
* everything else (embeddings, norms, biases, the LM head) goes up as it is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import sharding
from jaxllm.quantization.awq import random_awq_weight, resolve_group_size
from jaxllm.quantization.config import QuantConfig
from jaxllm.quantization.weights import QuantizedWeight, is_linear_leaf, quantize_per_channel


def put_param(mesh, path: tuple, host, quant: QuantConfig):
    """One parameter leaf (host array or host QuantizedWeight) onto `mesh`, quantized as `quant` says."""
    name = path[-1]
    if isinstance(host, QuantizedWeight):
        return jax.device_put(host, sharding.leaf_sharding(mesh, name, host))
    dense = jax.device_put(host, sharding.param_sharding(mesh, name, host.shape))
    if quant.from_checkpoint or not is_linear_leaf(path, np.ndim(host)):
        return dense
    return quantize_on_device(mesh, name, dense, quant.method)


def quantize_on_device(mesh, name: str, dense: jax.Array, kind: str) -> QuantizedWeight:
    fn = functools.partial(quantize_per_channel, kind=kind)
    out = sharding.leaf_sharding(mesh, name, jax.eval_shape(fn, dense))
    return jax.jit(fn, out_shardings=out)(dense)


def dummy_param(mesh, path: tuple, shape: tuple[int, ...], seed: int, dtype, quant: QuantConfig):
    """A random quantized linear weight for load_format="dummy", or None for a leaf left dense."""
    if not is_linear_leaf(path, len(shape)):
        return None
    name = path[-1]
    key = jax.random.PRNGKey(seed)
    if quant.method == "awq":
        k, n = shape
        group = resolve_group_size(quant.group_size, k)
        if n % 8 or k % group:
            raise ValueError(f"Random AWQ weight {name} of shape {shape}: needs N % 8 == 0 and K % {group} == 0.")
        fn = functools.partial(random_awq_weight, k=k, n=n, group_size=group, dtype=jnp.float16)
    else:

        def fn(key):
            dense = (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
            return quantize_per_channel(dense, quant.method)

    out = sharding.leaf_sharding(mesh, name, jax.eval_shape(fn, key))
    return jax.jit(fn, out_shardings=out)(key)
