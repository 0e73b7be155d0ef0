"""The Pallas K/V page write against XLA's scatter: odd shapes, padding rows, float8 pools, CUDA lowering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.kv_pages import _pallas_write, write_to_kv_pages
from tests.triton_export import export_for_cuda, triton_backend_available


def _case(seed, K, P, S, H, T, dtype, padding=0):
    rng = np.random.default_rng(seed)
    pools = [jnp.asarray(rng.normal(size=(K, P, S, H)), dtype) for _ in range(2)]
    k, v = (jnp.asarray(rng.normal(size=(T + padding, K, H)) * 3, jnp.float32) for _ in range(2))
    slots = rng.choice(np.arange(S, P * S), T, replace=False)
    # Padding rows of a bucket point into the null page (slots 0 .. S-1), several at the same slot.
    slots = np.concatenate([slots, rng.integers(0, S, padding)]).astype(np.int32)
    return pools, k, v, jnp.asarray(slots)


@pytest.mark.parametrize(
    "K,P,S,H,T,padding", [(1, 5, 4, 16, 1, 0), (3, 11, 8, 64, 13, 3), (8, 7, 16, 128, 37, 0), (2, 40, 16, 128, 256, 5)],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float8_e4m3fn])
def test_pallas_write_equals_the_scatter(K, P, S, H, T, padding, dtype):
    (kp, vp), k, v, slots = _case(K * T, K, P, S, H, T, dtype, padding)
    scales = dict(k_scale=jnp.float32(0.5), v_scale=jnp.float32(2.0)) if dtype == jnp.float8_e4m3fn else {}
    want = write_to_kv_pages(kp, vp, k, v, slots, impl="xla", **scales)
    got = write_to_kv_pages(kp, vp, k, v, slots, impl="pallas", **scales)
    real = np.asarray(slots[:T])
    for w, g, before in zip(want, got, (kp, vp)):
        w, g, before = (np.asarray(x.astype(jnp.float32)).reshape(K, P * S, H) for x in (w, g, before))
        np.testing.assert_array_equal(g[:, real], w[:, real])  # every real token's rows
        rest = np.ones(P * S, bool)
        rest[real] = False
        rest[:S] = False  # the null page takes the padding rows, in any order
        np.testing.assert_array_equal(g[:, rest], before[:, rest])  # nothing else moved


def test_pallas_write_blocks_cover_every_token():
    (kp, vp), k, v, slots = _case(3, 2, 30, 8, 32, 45, jnp.float32)
    want = write_to_kv_pages(kp, vp, k, v, slots, impl="xla")
    for block in (1, 4, 16, 64):
        got = _pallas_write(kp, vp, k, v, slots, block=block)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.skipif(not triton_backend_available(), reason="jax has no Pallas Triton backend")
@pytest.mark.parametrize("K,H,dtype", [(2, 128, jnp.bfloat16), (8, 128, jnp.float8_e4m3fn), (3, 64, jnp.float16)])
def test_pallas_write_lowers_for_cuda(K, H, dtype):
    pool = jax.ShapeDtypeStruct((K, 1000, 16, H), dtype)
    new = jax.ShapeDtypeStruct((77, K, H), dtype)
    slots = jax.ShapeDtypeStruct((77,), jnp.int32)
    module = export_for_cuda(lambda *a: _pallas_write(*a, interpret=False), pool, pool, new, new, slots)
    assert "xla.gpu.triton" in str(module)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float8_e4m3fn])
def test_pallas_write_on_gpu(dtype):
    (kp, vp), k, v, slots = _case(1, 8, 4000, 16, 128, 300, dtype, padding=20)
    want = write_to_kv_pages(kp, vp, k, v, slots, impl="xla")
    got = write_to_kv_pages(kp, vp, k, v, slots, impl="pallas")
    real = np.asarray(slots[:300])
    for w, g in zip(want, got):
        w, g = (np.asarray(x.astype(jnp.float32)).reshape(8, -1, 128) for x in (w, g))
        np.testing.assert_array_equal(g[:, real], w[:, real])
