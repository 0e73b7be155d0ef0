"""A stack of quantized layers never holds more than about one layer's dequantized weight.

The XLA formulations dequantize a weight that depends only on parameters; unless it is tied to the
layer's input, XLA may dequantize every layer first (a dense copy of the whole model: an 8B AWQ
model then needs 16-32 GB of scratch and fails). Checked through XLA's own memory analysis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.quantization import matmul, quantize_per_channel
from jaxllm.quantization.awq import random_awq_weight

K = 512
LAYERS = 8


def _weights(kind: str):
    keys = jax.random.split(jax.random.PRNGKey(0), LAYERS)
    if kind == "awq":
        return [random_awq_weight(k, K, K, 128, jnp.float16) for k in keys]
    return [quantize_per_channel(0.05 * jax.random.normal(k, (K, K)), kind) for k in keys]


def _stack(x, ws):
    for w in ws:
        x = jnp.tanh(matmul(x, w))
    return x


@pytest.mark.parametrize("kind", ["awq", "int8", "fp8"])
def test_scratch_memory_is_one_layer_not_the_model(kind):
    ws = _weights(kind)
    x = jnp.ones((4, K), jnp.float32)
    compiled = jax.jit(_stack).lower(x, ws).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    one_layer = K * K * 4  # a dense float32 weight
    assert temp < 2.5 * one_layer, f"{temp / one_layer:.1f} layers of dense weights held at once"
    y = np.asarray(compiled(x, ws))
    assert np.isfinite(y).all() and np.abs(y).max() > 0


def test_a_nan_row_leaves_the_other_rows_alone():
    ws = _weights("int8")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, K)), jnp.float32)
    clean = np.asarray(_stack(x, ws))
    y = np.asarray(_stack(x.at[0, 0].set(jnp.nan), ws))
    assert np.isnan(y[0]).all() and np.array_equal(y[1:], clean[1:])
