"""The AWQ matrix-vector kernel (`awq_gemv.py`): interpret mode on CPU against float64 and XLA on odd
shapes, cross-lowered for CUDA at 8B shapes, and on the GPU when there is one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.quantization.awq import awq_matmul_xla
from jaxllm.quantization.awq_gemv import (
    PROGRAMS_PER_SM,
    AwqGemvConfig,
    awq_gemv_pallas,
    default_config,
    supported,
    valid,
)
from jaxllm.quantization.awq_unpack import NUM_SMS
from tests.quantization.awq_cases import abstract_weight, checkpoint_weight, on_gpu, rel_err
from tests.triton_export import export_for_cuda, triton_backend_available


@pytest.mark.parametrize(
    ("m", "k", "n", "group", "config"),
    [
        (1, 256, 256, 64, None),
        (3, 384, 128, 128, AwqGemvConfig(bw=16, nb=1, splits=3)),  # rows padded to 4, three K slices
        (7, 256, 384, 32, AwqGemvConfig(bw=16, nb=2, splits=2)),  # four-row blocks, N not a power of two
        (5, 512, 256, 128, AwqGemvConfig(bw=32, nb=2, splits=1)),  # one program walks four groups
        (2, 512, 128, 512, AwqGemvConfig(bw=16, nb=2, splits=1)),  # one group over many blocks
        (1, 256, 1024, 128, AwqGemvConfig(bw=128, nb=1, splits=1, prefetch=True)),  # 512-byte rows, prefetch
    ],
)
def test_gemv_matches_float64_and_xla(m, k, n, group, config):
    rng = np.random.default_rng(m * 7 + k)
    w, dense = checkpoint_weight(rng, k, n, group)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    ref = np.asarray(x, np.float64) @ dense
    y = np.asarray(awq_gemv_pallas(x, w, config=config, interpret=True))
    assert y.shape == (m, n)
    assert rel_err(y, ref) < 1e-6
    np.testing.assert_allclose(y, np.asarray(awq_matmul_xla(x, w)), rtol=1e-4, atol=1e-5)


def test_gemv_bf16_input():
    rng = np.random.default_rng(11)
    w, dense = checkpoint_weight(rng, 256, 256, 128)
    x = jnp.asarray(rng.standard_normal((2, 256)), jnp.bfloat16)
    y = awq_gemv_pallas(x, w, interpret=True)
    assert y.dtype == jnp.bfloat16
    assert rel_err(y, np.asarray(x, np.float64) @ dense) < 1e-2


def test_gemv_limits_and_default_config():
    assert supported(1, 4096, 4096, 128) and supported(8, 14336, 4096, 128)
    assert not supported(9, 4096, 4096, 128) and not supported(1, 4096, 4104, 128)
    for k, n in ((4096, 4096), (4096, 14336), (14336, 4096), (4096, 6144), (4096, 1024)):
        cfg = default_config(1, k, n, 128)
        assert valid(cfg, k, n, 128), (k, n, cfg)
        assert 8 * (n // 8 // cfg.bw) * cfg.splits >= min(PROGRAMS_PER_SM * NUM_SMS, 8 * (n // 8 // cfg.bw) * k // 128)
    rng = np.random.default_rng(0)
    w, _ = checkpoint_weight(rng, 256, 128, 64)
    with pytest.raises(ValueError, match="not supported"):
        awq_gemv_pallas(jnp.ones((9, 256)), w, interpret=True)
    with pytest.raises(ValueError, match="does not fit"):
        awq_gemv_pallas(jnp.ones((1, 256)), w, config=AwqGemvConfig(bw=32, nb=1, splits=3), interpret=True)


@pytest.mark.skipif(not triton_backend_available(), reason="jax has no Pallas Triton backend")
@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 6144), (8, 14336, 4096), (3, 4096, 28672)])
def test_triton_lowering_without_gpu(m, k, n):
    """Cross-lower for CUDA at 8B shapes: every op must have a Triton rule and every tile a legal shape."""
    x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
    mod = export_for_cuda(lambda x, w: awq_gemv_pallas(x, w, interpret=False), x, abstract_weight(k, n))
    assert "xla.gpu.triton" in mod


@pytest.mark.gpu
@pytest.mark.skipif(not on_gpu(), reason="needs a GPU")
@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 4096), (4, 14336, 4096), (8, 4096, 6144)])
def test_gemv_on_gpu(m, k, n):
    rng = np.random.default_rng(m + k + n)
    w, dense = checkpoint_weight(rng, k, n, 128)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
    ref = np.asarray(x, np.float64) @ dense
    assert rel_err(awq_gemv_pallas(x, w), ref) < 1e-2
