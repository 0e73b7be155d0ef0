"""The chunked-prefill kernel against its plain-jnp reference and a numpy dense attention."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.ragged_paged_attention import (
    query_blocks,
    ragged_paged_attention,
    ragged_paged_attention_reference,
)
from tests.triton_export import export_for_cuda, triton_backend_available


def _case(rng, chunks, kv_heads, groups, page=4, head_dim=16, pages=64, width=12):
    """chunks: per sequence (cached prefix length, chunk length)."""
    n = kv_heads * groups
    k_pages = rng.normal(size=(kv_heads, pages, page, head_dim)).astype(np.float32)
    v_pages = rng.normal(size=(kv_heads, pages, page, head_dim)).astype(np.float32)
    perm = rng.permutation(np.arange(1, pages))
    tables = np.zeros((len(chunks), width), np.int32)
    q, pos, seg, starts, lens = [], [], [], [], []
    used = 0
    for r, (prefix, chunk) in enumerate(chunks):
        need = -(-(prefix + chunk) // page)
        tables[r, :need] = perm[used : used + need]
        used += need
        starts.append(len(pos))
        lens.append(chunk)
        pos += list(range(prefix, prefix + chunk))
        seg += [r] * chunk
    t = len(pos) + 3  # padding tokens at the end
    q = rng.normal(size=(t, n, head_dim)).astype(np.float32)
    pos = np.array(pos + [0] * 3, np.int32)
    seg = np.array(seg + [-1] * 3, np.int32)
    return q, k_pages, v_pages, pos, seg, tables, np.array(starts), np.array(lens)


def _numpy_attention(q, k_pages, v_pages, pos, seg, tables):
    t, n, h = q.shape
    kh, _, page, _ = k_pages.shape
    out = np.zeros_like(q)
    for i in range(t):
        if seg[i] < 0:
            continue
        length = pos[i] + 1
        ids = tables[seg[i]][: -(-length // page)]
        k = k_pages[:, ids].reshape(kh, -1, h)[:, :length]
        v = v_pages[:, ids].reshape(kh, -1, h)[:, :length]
        for head in range(n):
            kv = head // (n // kh)
            s = k[kv] @ q[i, head] / np.sqrt(h)
            p = np.exp(s - s.max())
            out[i, head] = (p / p.sum()) @ v[kv]
    return out


@pytest.mark.parametrize("groups", [2, 3])
def test_alibi_matches_reference(groups):
    rng = np.random.default_rng(3)
    q, kp, vp, pos, seg, tables, starts, lens = _case(rng, [(5, 6), (0, 9)], kv_heads=2, groups=groups)
    slopes = jnp.asarray(rng.uniform(0.05, 0.5, size=2 * groups).astype(np.float32))
    rows, bstarts, blens = query_blocks(starts, lens, 4, num_blocks=8)
    args = [jnp.asarray(x) for x in (q, kp, vp, pos)]
    got = ragged_paged_attention(*args, jnp.asarray(tables), rows, bstarts, blens, alibi_slopes=slopes, qb=4)
    ref = ragged_paged_attention_reference(*args, jnp.asarray(seg), jnp.asarray(tables), alibi_slopes=slopes)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 4, 6])  # 6 (Qwen2.5-1.5B) is padded to a power of two
@pytest.mark.parametrize("qb", [4, 16])
def test_kernel_matches_reference_and_numpy(groups, qb):
    rng = np.random.default_rng(groups * 10 + qb)
    chunks = [(0, 7), (9, 5), (13, 1), (0, 1), (3, 18)]  # fresh prompts, cached prefixes, decode-like rows
    q, kp, vp, pos, seg, tables, starts, lens = _case(rng, chunks, kv_heads=2, groups=groups)
    rows, bstarts, blens = query_blocks(starts, lens, qb, num_blocks=16)
    got = np.asarray(ragged_paged_attention(jnp.asarray(q), jnp.asarray(kp), jnp.asarray(vp), jnp.asarray(pos),
                                            jnp.asarray(tables), rows, bstarts, blens, qb=qb))
    ref = np.asarray(ragged_paged_attention_reference(jnp.asarray(q), jnp.asarray(kp), jnp.asarray(vp),
                                                      jnp.asarray(pos), jnp.asarray(seg), jnp.asarray(tables)))
    dense = _numpy_attention(q, kp, vp, pos, seg, tables)
    np.testing.assert_allclose(ref, dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-5)
    assert not np.any(got[-3:])  # padding tokens are zeros


@pytest.mark.parametrize(("qb", "pages_per_step"), [(32, 2), (64, 16), (8, 1)])
def test_other_launches_match_numpy(qb, pages_per_step):
    """Launches the benchmark sweeps (larger query blocks, other page steps) give the same attention."""
    rng = np.random.default_rng(qb + pages_per_step)
    chunks = [(0, 37), (5, 70), (0, 1), (11, 3)]
    q, kp, vp, pos, seg, tables, starts, lens = _case(rng, chunks, kv_heads=2, groups=4, width=24, pages=80)
    rows, bstarts, blens = query_blocks(starts, lens, qb, num_blocks=20)
    got = np.asarray(ragged_paged_attention(jnp.asarray(q), jnp.asarray(kp), jnp.asarray(vp), jnp.asarray(pos),
                                            jnp.asarray(tables), rows, bstarts, blens, qb=qb,
                                            pages_per_step=pages_per_step))
    np.testing.assert_allclose(got, _numpy_attention(q, kp, vp, pos, seg, tables), rtol=1e-5, atol=1e-5)


def test_pages_per_step_must_be_a_power_of_two():
    rng = np.random.default_rng(0)
    q, kp, vp, pos, seg, tables, starts, lens = _case(rng, [(0, 5)], kv_heads=1, groups=2)
    rows, bstarts, blens = query_blocks(starts, lens, 4, num_blocks=4)
    with pytest.raises(ValueError, match="power of two"):
        ragged_paged_attention(jnp.asarray(q), jnp.asarray(kp), jnp.asarray(vp), jnp.asarray(pos),
                               jnp.asarray(tables), rows, bstarts, blens, qb=4, pages_per_step=3)


def test_query_blocks_never_span_two_sequences():
    rows, starts, lens = query_blocks(np.array([0, 5, 6]), np.array([5, 1, 9]), 4, num_blocks=8)
    assert rows.tolist() == [0, 0, 1, 2, 2, 2, 0, 0]
    assert starts.tolist() == [0, 4, 5, 6, 10, 14, 0, 0]
    assert lens.tolist() == [4, 1, 1, 4, 4, 1, 0, 0]


@pytest.mark.skipif(not triton_backend_available(), reason="jax has no Pallas Triton backend")
@pytest.mark.parametrize(("heads", "kv_heads", "width"), [(32, 8, 128), (12, 2, 5), (71, 1, 3)])
def test_triton_lowering_without_gpu(heads, kv_heads, width):
    """Cross-lower for CUDA: Triton needs power-of-two tiles, whatever the model's query group
    (Llama-3-8B 4, Qwen2.5-1.5B 6, falcon-7b 71) or the table width."""
    import jax

    t, h, pages, page = 64, 128, 40, 16
    args = [
        jax.ShapeDtypeStruct((t, heads, h), jnp.bfloat16),
        jax.ShapeDtypeStruct((kv_heads, pages, page, h), jnp.bfloat16),
        jax.ShapeDtypeStruct((kv_heads, pages, page, h), jnp.bfloat16),
        jax.ShapeDtypeStruct((t,), jnp.int32),
        jax.ShapeDtypeStruct((4, width), jnp.int32),
    ] + [jax.ShapeDtypeStruct((8,), jnp.int32)] * 3

    assert "xla.gpu.triton" in export_for_cuda(lambda *a: ragged_paged_attention(*a, qb=16, interpret=False), *args)


@pytest.mark.skipif(not triton_backend_available(), reason="jax has no Pallas Triton backend")
@pytest.mark.parametrize(("qb", "pages_per_step", "num_warps", "num_stages"), [(32, 4, 8, 2), (64, 2, 4, 4)])
def test_swept_launches_lower_for_cuda(qb, pages_per_step, num_warps, num_stages):
    import jax

    t, h, pages, page = 256, 128, 40, 16
    args = [
        jax.ShapeDtypeStruct((t, 32, h), jnp.bfloat16),
        jax.ShapeDtypeStruct((8, pages, page, h), jnp.bfloat16),
        jax.ShapeDtypeStruct((8, pages, page, h), jnp.bfloat16),
        jax.ShapeDtypeStruct((t,), jnp.int32),
        jax.ShapeDtypeStruct((4, 16), jnp.int32),
    ] + [jax.ShapeDtypeStruct((12,), jnp.int32)] * 3
    launch = dict(qb=qb, pages_per_step=pages_per_step, num_warps=num_warps, num_stages=num_stages, interpret=False)
    assert "xla.gpu.triton" in export_for_cuda(lambda *a: ragged_paged_attention(*a, **launch), *args)
