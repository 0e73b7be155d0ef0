"""Shared by the AWQ kernel tests: random checkpoint weights, their float64 reference, abstract weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.quantization.awq import dequantize_awq_numpy, from_checkpoint, pack_awq
from jaxllm.quantization.weights import QuantizedWeight


def checkpoint_weight(rng, k: int, n: int, group: int):
    """(device QuantizedWeight read from AutoAWQ tensors, the float64 dense [K, N])."""
    q = rng.integers(0, 16, (k, n))
    z = rng.integers(0, 16, (k // group, n))
    s = (0.001 + 0.01 * rng.random((k // group, n))).astype(np.float16)
    packed = (pack_awq(q), pack_awq(z), s)
    return jax.device_put(from_checkpoint("l", *packed, group)), dequantize_awq_numpy(*packed)


def abstract_weight(k: int, n: int, group: int = 128) -> QuantizedWeight:
    return QuantizedWeight(jax.ShapeDtypeStruct((k, n // 8), jnp.int32),
                           jax.ShapeDtypeStruct((k // group, 8, n // 8), jnp.float16),
                           jax.ShapeDtypeStruct((k // group, n // 8), jnp.int32),
                           kind="awq", group_size=group, shape=(k, n))


def rel_err(y, ref) -> float:
    y = np.asarray(jnp.asarray(y, jnp.float32), np.float64)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"
