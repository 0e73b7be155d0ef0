"""The AWQ matrix-vector kernel (`awq_gemv.py`, Pallas interpret mode on CPU) against float64 and XLA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.quantization.awq import awq_matmul_xla, dequantize_awq_numpy, from_checkpoint, pack_awq
from jaxllm.quantization.awq_gemv import AwqGemvConfig, awq_gemv_pallas, default_config, supported
from jaxllm.quantization.awq_kernel import NUM_SMS
from tests.triton_export import export_for_cuda, triton_backend_available


def _weight(rng, k, n, group):
    q = rng.integers(0, 16, (k, n))
    z = rng.integers(0, 16, (k // group, n))
    s = (0.001 + 0.01 * rng.random((k // group, n))).astype(np.float16)
    packed = (pack_awq(q), pack_awq(z), s)
    return jax.device_put(from_checkpoint("l", *packed, group)), dequantize_awq_numpy(*packed)


@pytest.mark.parametrize(
    ("m", "k", "n", "group", "config"),
    [
        (1, 256, 256, 64, None),
        (3, 384, 128, 128, AwqGemvConfig(bw=16, splits=3)),  # rows padded to 4, three K slices
        (8, 256, 384, 32, AwqGemvConfig(bw=16, splits=2)),
        (5, 512, 256, 128, AwqGemvConfig(bw=32, splits=1)),  # one program walks four groups
    ],
)
def test_gemv_matches_float64_and_xla(m, k, n, group, config):
    rng = np.random.default_rng(m * 7 + k)
    w, dense = _weight(rng, k, n, group)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    ref = np.asarray(x, np.float64) @ dense
    y = np.asarray(awq_gemv_pallas(x, w, config=config, interpret=True))
    assert y.shape == (m, n)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-6
    np.testing.assert_allclose(y, np.asarray(awq_matmul_xla(x, w)), rtol=1e-4, atol=1e-5)


def test_gemv_half_precision_input():
    rng = np.random.default_rng(11)
    w, dense = _weight(rng, 256, 256, 64)
    x = jnp.asarray(rng.standard_normal((2, 256)), jnp.bfloat16)
    y = awq_gemv_pallas(x, w, interpret=True)
    assert y.dtype == jnp.bfloat16
    ref = np.asarray(x, np.float64) @ dense
    assert np.linalg.norm(np.asarray(y, np.float64) - ref) / np.linalg.norm(ref) < 1e-2


def test_gemv_limits_and_default_config():
    assert supported(1, 4096, 4096, 128) and supported(8, 14336, 4096, 128)
    assert not supported(9, 4096, 4096, 128) and not supported(1, 4096, 4100, 128)
    for k, n in ((4096, 4096), (4096, 14336), (14336, 4096), (4096, 6144)):
        cfg = default_config(1, k, n, 128)
        programs = (n // 8 // cfg.bw) * cfg.splits
        assert (k // 128) % cfg.splits == 0 and 2 * NUM_SMS <= programs <= 4 * NUM_SMS, (k, n, cfg)
    rng = np.random.default_rng(0)
    w, _ = _weight(rng, 256, 128, 64)
    with pytest.raises(ValueError, match="not supported"):
        awq_gemv_pallas(jnp.ones((9, 256)), w, interpret=True)
    with pytest.raises(ValueError, match="does not fit"):
        awq_gemv_pallas(jnp.ones((1, 256)), w, config=AwqGemvConfig(bw=32, splits=3), interpret=True)


@pytest.mark.skipif(not triton_backend_available(), reason="jax has no Pallas Triton backend")
@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 6144), (8, 14336, 4096), (3, 4096, 28672)])
def test_triton_lowering_without_gpu(m, k, n):
    """Cross-lower for CUDA at 8B shapes: every op must have a Triton rule and every tile a legal shape."""
    from jaxllm.quantization.weights import QuantizedWeight

    g = 128
    w = QuantizedWeight(jax.ShapeDtypeStruct((k, n // 8), jnp.int32), jax.ShapeDtypeStruct((k // g, 8, n // 8), jnp.float16),
                        jax.ShapeDtypeStruct((k // g, n // 8), jnp.int32), kind="awq", group_size=g, shape=(k, n))
    x = jax.ShapeDtypeStruct((m, k), jnp.float16)
    assert "xla.gpu.triton" in export_for_cuda(lambda x, w: awq_gemv_pallas(x, w, interpret=False), x, w)
