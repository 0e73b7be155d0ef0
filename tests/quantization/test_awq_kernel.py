"""The AWQ tensor-core kernel (`awq_kernel.py`): interpret mode on CPU against float64 and XLA on odd
shapes, cross-lowered for CUDA at 8B shapes, and on the GPU when there is one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.quantization.awq import awq_matmul_xla
from jaxllm.quantization.awq_kernel import (
    AwqKernelConfig,
    awq_matmul_pallas,
    default_config,
    supported,
    valid,
)
from tests.quantization.awq_cases import abstract_weight, checkpoint_weight, on_gpu, rel_err
from tests.triton_export import export_for_cuda, triton_backend_available


@pytest.mark.parametrize(
    ("m", "k", "n", "group", "config"),
    [
        (1, 256, 256, 128, None),
        (20, 384, 128, 128, AwqKernelConfig(bm=16, bw=16, nb=1, splits=3)),  # two row tiles, three K slices
        (33, 512, 384, 256, AwqKernelConfig(bm=32, bw=16, nb=2, splits=2)),  # padded rows, two blocks a group
        (32, 256, 256, 128, AwqKernelConfig(bm=32, bw=32, nb=2, splits=1)),  # no padding, no split
        (20, 512, 128, 128, AwqKernelConfig(bm=16, bw=16, nb=1, splits=2, prefetch=True)),  # next step preloaded
    ],
)
def test_kernel_matches_float64_and_xla(m, k, n, group, config):
    rng = np.random.default_rng(m + k)
    w, dense = checkpoint_weight(rng, k, n, group)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    ref = np.asarray(x, np.float64) @ dense
    y = np.asarray(awq_matmul_pallas(x, w, config=config, interpret=True))
    assert y.shape == (m, n)
    assert rel_err(y, ref) < 1e-6
    np.testing.assert_allclose(y, np.asarray(awq_matmul_xla(x, w)), rtol=1e-4, atol=1e-5)


def test_kernel_bf16_weights_round_once():
    rng = np.random.default_rng(12)
    w, dense = checkpoint_weight(rng, 256, 128, 128)
    x = jnp.asarray(rng.standard_normal((17, 256)), jnp.bfloat16)
    y = awq_matmul_pallas(x, w, interpret=True)
    assert y.dtype == jnp.bfloat16 and rel_err(y, np.asarray(x, np.float64) @ dense) < 1e-2


def test_kernel_limits_and_default_config():
    assert supported(32, 4096, 4096, 128) and not supported(32, 4096, 4096, 64)
    for m in (1, 16, 32, 128):
        for k, n in ((4096, 4096), (14336, 4096), (4096, 28672)):
            assert valid(default_config(m, k, n, 128), k, n, 128)
    rng = np.random.default_rng(0)
    w, _ = checkpoint_weight(rng, 256, 128, 128)
    with pytest.raises(ValueError, match="does not fit"):
        awq_matmul_pallas(jnp.ones((1, 256)), w, config=AwqKernelConfig(bm=16, bw=32, nb=1, splits=1), interpret=True)


@pytest.mark.skipif(not triton_backend_available(), reason="jax has no Pallas Triton backend")
@pytest.mark.parametrize(("m", "k", "n"), [(16, 4096, 6144), (32, 14336, 4096), (128, 4096, 28672)])
def test_triton_lowering_without_gpu(m, k, n):
    x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
    mod = export_for_cuda(lambda x, w: awq_matmul_pallas(x, w, interpret=False), x, abstract_weight(k, n))
    assert "xla.gpu.triton" in mod


@pytest.mark.gpu
@pytest.mark.skipif(not on_gpu(), reason="needs a GPU")
@pytest.mark.parametrize(("m", "k", "n"), [(9, 4096, 4096), (32, 14336, 4096), (100, 4096, 6144)])
def test_kernel_on_gpu(m, k, n):
    rng = np.random.default_rng(m + k + n)
    w, dense = checkpoint_weight(rng, k, n, 128)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
    assert rel_err(awq_matmul_pallas(x, w), np.asarray(x, np.float64) @ dense) < 1e-2
