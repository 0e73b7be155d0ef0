"""Tests of the Pallas paged-attention decode kernel (interpret mode on CPU)."""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.paged_attention import (
    paged_attention,
    paged_attention_reference,
    write_to_kv_pages,
)
from tests.triton_export import export_for_cuda, triton_backend_available


def _make_case(seed, *, B, N, K, H, S, W, lengths, P=None, dtype=jnp.float32, alibi=False):
    """Random pool + shuffled block tables.

    Every page not owned by a sequence, and every slot past a sequence's length, holds
    garbage (NaN or huge values); block-table entries past the length are random page ids.
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int32)
    assert lengths.shape == (B,) and lengths.max() <= W * S
    needed = [-(-int(n) // S) for n in lengths]
    if P is None:
        P = 1 + sum(needed) + 3
    perm = rng.permutation(np.arange(1, P))  # page 0 is the null page
    block_tables = rng.integers(0, P, (B, W)).astype(np.int32)
    k_pages = np.full((K, P, S, H), np.nan, np.float32)
    v_pages = np.full((K, P, S, H), np.nan, np.float32)
    k_pages[:, ::2] = 1e4  # mix NaN and huge finite garbage
    nxt = 0
    for b, n in enumerate(lengths):
        for i in range(needed[b]):
            page = perm[nxt]
            nxt += 1
            block_tables[b, i] = page
            valid = min(S, int(n) - i * S)
            k_pages[:, page, :valid] = rng.standard_normal((K, valid, H))
            v_pages[:, page, :valid] = rng.standard_normal((K, valid, H))
    q = rng.standard_normal((B, N, H)).astype(np.float32)
    slopes = rng.uniform(0.05, 1.0, (N,)).astype(np.float32) if alibi else None
    as_jnp = lambda x: None if x is None else jnp.asarray(x)
    return {
        "q": jnp.asarray(q, dtype),
        "k_pages": jnp.asarray(k_pages, dtype),
        "v_pages": jnp.asarray(v_pages, dtype),
        "block_tables": jnp.asarray(block_tables),
        "lengths": jnp.asarray(lengths),
        "alibi_slopes": as_jnp(slopes),
    }


def _dense_numpy(q, k_pages, v_pages, block_tables, lengths, alibi_slopes=None, scale=None):
    """Direct softmax attention on the gathered valid tokens, in float64 numpy."""
    q, k_pages, v_pages = (np.asarray(x, np.float64) for x in (q, k_pages, v_pages))
    block_tables, lengths = np.asarray(block_tables), np.asarray(lengths)
    B, N, H = q.shape
    K, _, S, _ = k_pages.shape
    G = N // K
    scale = H**-0.5 if scale is None else scale
    out = np.zeros((B, N, H))
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        pos = np.arange(n)
        pages, offs = block_tables[b, pos // S], pos % S
        for h in range(N):
            kv = h // G
            keys, values = k_pages[kv, pages, offs], v_pages[kv, pages, offs]  # [n, H]
            logits = keys @ q[b, h] * scale
            if alibi_slopes is not None:
                logits = logits + float(alibi_slopes[h]) * (pos - (n - 1))
            w = np.exp(logits - logits.max())
            out[b, h] = (w / w.sum()) @ values
    return out


KERNEL_CASES = {
    # name: (shape kwargs, lengths, kernel kwargs)
    "mha_small_pages": (
        {"N": 4, "K": 4, "H": 16, "S": 4, "W": 5},
        [1, 17, 0, 20],
        {"pages_per_compute_block": 2},
    ),
    "gqa4_w_lt_block": (
        {"N": 8, "K": 2, "H": 32, "S": 8, "W": 3},
        [24, 9, 1],
        {"pages_per_compute_block": 8},
    ),
    "gqa8_ksplits_ragged_w": (
        {"N": 16, "K": 2, "H": 16, "S": 4, "W": 7},
        [28, 5, 13, 0],
        {"pages_per_compute_block": 2, "k_splits": 3},
    ),
    "gqa4_alibi_splits": (
        {"N": 8, "K": 2, "H": 16, "S": 4, "W": 6, "alibi": True},
        [23, 1, 0, 8],
        {"pages_per_compute_block": 4, "k_splits": 2},
    ),
    "gqa32_defaults": ({"N": 32, "K": 1, "H": 16, "S": 16, "W": 3}, [33, 48, 16], {}),
    "mha_alibi_more_splits_than_pages": (
        {"N": 2, "K": 2, "H": 16, "S": 8, "W": 2, "alibi": True},
        [9, 3],
        {"pages_per_compute_block": 1, "k_splits": 4},
    ),
}


@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
def test_kernel_matches_reference(name):
    shape, lengths, knobs = KERNEL_CASES[name]
    shape = dict(shape)
    case = _make_case(zlib.crc32(name.encode()), B=len(lengths), lengths=lengths, **shape)
    out = paged_attention(**case, **knobs)
    ref = paged_attention_reference(**case)
    assert out.shape == case["q"].shape and out.dtype == case["q"].dtype
    out, ref = np.asarray(out), np.asarray(ref)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    for b, n in enumerate(lengths):
        if n == 0:
            assert (out[b] == 0).all()


def test_kernel_bfloat16():
    case = _make_case(7, B=3, N=8, K=2, H=32, S=8, W=4, lengths=[30, 1, 12], dtype=jnp.bfloat16, alibi=True)
    out = paged_attention(**case, pages_per_compute_block=2, k_splits=2)
    assert out.dtype == jnp.bfloat16
    ref = paged_attention_reference(**case)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2, rtol=2e-2)


def test_kernel_custom_scale_and_padding_rows_only():
    case = _make_case(3, B=2, N=4, K=2, H=16, S=4, W=2, lengths=[0, 0])
    out = paged_attention(**case, scale=0.3)
    assert (np.asarray(out) == 0).all()
    case = _make_case(4, B=2, N=4, K=2, H=16, S=4, W=2, lengths=[5, 0])
    out = np.asarray(paged_attention(**case, scale=0.3))
    np.testing.assert_allclose(out, np.asarray(paged_attention_reference(**case, scale=0.3)), atol=1e-5)
    np.testing.assert_allclose(out, _dense_numpy(**case, scale=0.3), atol=1e-5)


@pytest.mark.parametrize("alibi", [False, True])
def test_reference_matches_dense_numpy(alibi):
    lengths = [1, 11, 0, 16, 6]
    case = _make_case(11, B=5, N=8, K=2, H=16, S=4, W=5, lengths=lengths, alibi=alibi)
    ref = np.asarray(paged_attention_reference(**case))
    np.testing.assert_allclose(ref, _dense_numpy(**case), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_write_to_kv_pages_follows_block_table(impl):
    rng = np.random.default_rng(5)
    K, P, S, H = 2, 9, 4, 16
    lengths = [6, 3, 9]
    block_tables = np.zeros((3, 3), np.int32)
    pages = rng.permutation(np.arange(1, P))
    nxt = 0
    for b, n in enumerate(lengths):
        for i in range(-(-n // S)):
            block_tables[b, i] = pages[nxt]
            nxt += 1
    seq, pos = zip(*[(b, j) for b, n in enumerate(lengths) for j in range(n)])
    seq, pos = np.asarray(seq), np.asarray(pos)
    slots = block_tables[seq, pos // S] * S + pos % S
    slots = np.concatenate([slots, [0, 1, 0]]).astype(np.int32)  # three padding tokens
    T = len(slots)
    k = rng.standard_normal((T, K, H)).astype(np.float32)
    v = rng.standard_normal((T, K, H)).astype(np.float32)
    k_pages = jnp.full((K, P, S, H), -7.0, jnp.float32)
    v_pages = jnp.full((K, P, S, H), -7.0, jnp.float32)

    write = jax.jit(functools.partial(write_to_kv_pages, impl=impl), donate_argnums=(0, 1))
    k_pages, v_pages = write(k_pages, v_pages, jnp.asarray(k), jnp.asarray(v), jnp.asarray(slots))
    kp, vp = np.asarray(k_pages), np.asarray(v_pages)
    written = np.zeros((P, S), bool)
    for t, (b, j) in enumerate(zip(seq, pos)):
        page, off = block_tables[b, j // S], j % S
        np.testing.assert_array_equal(kp[:, page, off], k[t])
        np.testing.assert_array_equal(vp[:, page, off], v[t])
        written[page, off] = True
    written[0] = True  # null page: padding writes land there
    assert (kp[:, ~written] == -7.0).all() and (vp[:, ~written] == -7.0).all()

    # Attention over the written pool equals dense attention over the tokens in order.
    q = jnp.asarray(rng.standard_normal((3, 4, H)), jnp.float32)
    args = (q, k_pages, v_pages, jnp.asarray(block_tables), jnp.asarray(lengths, jnp.int32))
    np.testing.assert_allclose(np.asarray(paged_attention(*args)), _dense_numpy(*args), atol=1e-5)


def test_invalid_shapes_raise():
    case = _make_case(0, B=1, N=6, K=4, H=16, S=4, W=2, lengths=[3])
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(**case)
    # The compiled (Triton) path needs power-of-two page sizes; checked before lowering.
    case = _make_case(0, B=1, N=4, K=2, H=16, S=3, W=2, lengths=[3])
    with pytest.raises(ValueError, match="power-of-two"):
        paged_attention(**case, interpret=False)


@pytest.mark.skipif(not triton_backend_available(), reason="jax has no Pallas Triton backend")
@pytest.mark.parametrize(
    ("dtype", "alibi", "knobs"),
    [
        (jnp.bfloat16, True, {}),
        (jnp.float32, False, {"k_splits": 3, "pages_per_compute_block": 2, "num_warps": 8, "num_stages": 3}),
    ],
)
def test_triton_lowering_without_gpu(dtype, alibi, knobs):
    """Cross-lower for CUDA: every op of the kernel must have a Triton lowering rule."""
    B, N, K, H, P, S, W = 3, 32, 4, 128, 40, 4, 9
    args = [
        jax.ShapeDtypeStruct((B, N, H), dtype),
        jax.ShapeDtypeStruct((K, P, S, H), dtype),
        jax.ShapeDtypeStruct((K, P, S, H), dtype),
        jax.ShapeDtypeStruct((B, W), jnp.int32),
        jax.ShapeDtypeStruct((B,), jnp.int32),
    ]
    if alibi:
        args.append(jax.ShapeDtypeStruct((N,), jnp.float32))

    def fn(q, k_pages, v_pages, block_tables, lengths, slopes=None):
        return paged_attention(
            q, k_pages, v_pages, block_tables, lengths, alibi_slopes=slopes, interpret=False, **knobs
        )

    assert "xla.gpu.triton" in export_for_cuda(fn, *args)


# Launch variants of the kernel: each must compute the same function.
VARIANT_KNOBS = {
    "page_tiles": {"token_rows": False, "pages_per_compute_block": 2, "k_splits": 3},
    "padded_rows": {"compact": False, "pages_per_compute_block": 4, "k_splits": 2},
}


@pytest.mark.parametrize("variant", sorted(VARIANT_KNOBS))
def test_kernel_variants_match_reference(variant):
    lengths = [23, 0, 1, 17]
    case = _make_case(21, B=4, N=8, K=2, H=16, S=4, W=7, lengths=lengths, alibi=True)
    out = np.asarray(paged_attention(**case, **VARIANT_KNOBS[variant]))
    np.testing.assert_allclose(out, _dense_numpy(**case), atol=1e-5, rtol=1e-5)
    assert (out[1] == 0).all()


def test_default_config_fills_the_gpu():
    from pallas_kernels.paged_attention import default_config

    for batch, width in [(1, 32), (1, 512), (1, 2048), (8, 512), (64, 128), (256, 32), (3, 37), (2, 2048)]:
        cfg = default_config(batch, 8, width, 16)
        ppcb, splits = cfg["pages_per_compute_block"], cfg["k_splits"]
        assert ppcb * 16 in (64, 128) and splits & (splits - 1) == 0
        pages_per_split = -(-width // splits)
        # Either the grid has enough programs, or the splits are already short.
        assert batch * 8 * splits >= 128 or pages_per_split < 4 * ppcb
    # Long slices at a small batch: deep pipeline, about one program per SM.
    assert default_config(8, 8, 512, 16) == {
        "pages_per_compute_block": 8,
        "k_splits": 2,
        "num_warps": 4,
        "num_stages": 5,
        "token_rows": True,
    }
    assert default_config(64, 8, 128, 16)["k_splits"] == 1
    assert default_config(1, 8, 512, 16)["k_splits"] == 64
    # Other head sizes / dtypes keep the tile bytes: 32 f32 tokens of d=128.
    assert default_config(64, 8, 64, 16, head_dim=128, itemsize=4)["pages_per_compute_block"] == 2


GPU_CASES = {
    # name: (shape kwargs, dtype, kernel kwargs)
    "defaults_bf16_gqa4": ({"N": 32, "K": 8}, jnp.bfloat16, {}),
    "defaults_bf16_gqa8_alibi": ({"N": 64, "K": 8, "alibi": True}, jnp.bfloat16, {}),
    "f32_splits": (
        {"N": 32, "K": 8, "alibi": True},
        jnp.float32,
        {"k_splits": 3, "pages_per_compute_block": 2, "num_warps": 8, "num_stages": 3},
    ),
    "deep_pipeline_s5": (
        {"N": 32, "K": 8},
        jnp.bfloat16,
        {"pages_per_compute_block": 8, "num_warps": 4, "num_stages": 5, "k_splits": 2},
    ),
    "xla_combine": ({"N": 32, "K": 8}, jnp.bfloat16, {"k_splits": 4, "combine": "xla"}),
    "page_tiles": ({"N": 32, "K": 8}, jnp.bfloat16, {"token_rows": False, "k_splits": 2}),
    "deep_pipeline": (
        {"N": 32, "K": 8},
        jnp.bfloat16,
        {"pages_per_compute_block": 16, "num_warps": 8, "num_stages": 3, "k_splits": 2},
    ),
    "gqa6_padded_rows": ({"N": 24, "K": 4, "alibi": True}, jnp.bfloat16, {}),
    "many_splits": ({"N": 32, "K": 8}, jnp.bfloat16, {"k_splits": 16, "pages_per_compute_block": 1}),
}


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_triton_kernel_on_gpu(name):
    shape, dtype, knobs = GPU_CASES[name]
    # W = 37 is no multiple of anything; a zero-length padding row and a full row included.
    lengths = [1, 130, 0, 77, 37 * 16, 301]
    case = _make_case(
        zlib.crc32(name.encode()), B=len(lengths), H=128, S=16, W=37, lengths=lengths, dtype=dtype, **shape
    )
    out = np.asarray(paged_attention(**case, **knobs), np.float32)
    ref = np.asarray(paged_attention_reference(**case), np.float32)
    assert np.isfinite(out).all()
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(out, ref, atol=tol, rtol=tol)
    assert (out[2] == 0).all()


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize(("batch", "width", "lengths"), [(2, 2048, [32768, 20001]), (1, 600, [9000])])
def test_default_configs_on_gpu_long_context(batch, width, lengths):
    """Default launch configs of long tables (deep pipeline, many splits) against the reference."""
    from pallas_kernels.paged_attention import default_config

    case = _make_case(5, B=batch, N=32, K=8, H=128, S=16, W=width, lengths=lengths, dtype=jnp.bfloat16)
    cfg = default_config(batch, 8, width, 16)
    assert cfg["k_splits"] > 1
    out = np.asarray(paged_attention(**case), np.float32)
    ref = np.asarray(paged_attention_reference(**case), np.float32)
    np.testing.assert_allclose(out, ref, atol=2e-2, rtol=2e-2)
