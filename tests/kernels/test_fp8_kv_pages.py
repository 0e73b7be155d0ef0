"""float8 KV pages: saturating writes, calibration, and both attention kernels against their references.

The references dequantize the gathered pages to float32 and attend; a float64 NumPy attention over the
dequantized values checks the references themselves. Every case draws fresh random inputs, ragged
lengths and sizes that are not powers of two (interpret mode on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pallas_kernels.kv_pages import write_to_kv_pages
from pallas_kernels.kv_quant import calibrated_scales, quantize
from pallas_kernels.paged_attention import paged_attention, paged_attention_reference
from pallas_kernels.ragged_paged_attention import (
    query_blocks,
    ragged_paged_attention,
    ragged_paged_attention_reference,
)
from pallas_kernels.ragged_paged_attention_xla import ragged_paged_attention_xla
from tests.triton_export import export_for_cuda, triton_backend_available

FP8 = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}
NP_FP8 = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}


def _fp8_pool(rng, shape, fmt, spread=3.0):
    """Random float8 pages whose values span the format (garbage NaN pages included where it has NaN)."""
    x = rng.standard_normal(shape) * spread
    pool = x.astype(NP_FP8[fmt])
    pool[:, 1::5] = np.nan  # unused pages: never read by a correct kernel
    return pool


def _decode_case(seed, fmt, *, B, N, K, H, S, W, q_dtype):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, W * S + 1, B).astype(np.int32)
    lengths[0] = W * S  # one full table
    P = 1 + B * W + 4
    k_pages = _fp8_pool(rng, (K, P, S, H), fmt)
    v_pages = _fp8_pool(rng, (K, P, S, H), fmt)
    valid_pages = np.array([p for p in range(1, P) if p % 5 != 1])
    tables = rng.choice(valid_pages, (B, W)).astype(np.int32)
    for b in range(B):  # past the length: pages full of NaN
        tables[b, -(-int(lengths[b]) // S):] = 1
    return {
        "q": jnp.asarray(rng.standard_normal((B, N, H)), q_dtype),
        "k_pages": jnp.asarray(k_pages),
        "v_pages": jnp.asarray(v_pages),
        "block_tables": jnp.asarray(tables),
        "lengths": jnp.asarray(lengths),
        "k_scale": jnp.float32(rng.uniform(0.01, 2.0)),
        "v_scale": jnp.float32(rng.uniform(0.01, 2.0)),
    }


def _numpy_decode(q, k_pages, v_pages, block_tables, lengths, k_scale, v_scale):
    """float64 attention over the dequantized valid tokens."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k_pages).astype(np.float64) * float(k_scale)
    v = np.asarray(v_pages).astype(np.float64) * float(v_scale)
    B, N, H = q.shape
    K, _, S, _ = k.shape
    out = np.zeros((B, N, H))
    for b in range(B):
        n = int(lengths[b])
        pos = np.arange(n)
        pages, offs = np.asarray(block_tables)[b, pos // S], pos % S
        for h in range(N * (n > 0)):
            keys, values = k[h // (N // K), pages, offs], v[h // (N // K), pages, offs]
            logits = keys @ q[b, h] * H**-0.5
            w = np.exp(logits - logits.max())
            out[b, h] = w @ values / w.sum()
    return out


@pytest.mark.parametrize("fmt", sorted(FP8))
def test_quantize_saturates_and_rounds_like_ml_dtypes(fmt):
    rng = np.random.default_rng()
    limit = float(ml_dtypes.finfo(NP_FP8[fmt]).max)
    x = np.concatenate([rng.standard_normal(500) * limit / 4, [3 * limit, -7 * limit, np.inf, -np.inf, np.nan]])
    scale = 0.37
    got = np.asarray(quantize(jnp.asarray(x, jnp.float32), scale, FP8[fmt])).astype(np.float64)
    y = (x.astype(np.float32) / np.float32(scale)).astype(np.float32)
    expected = np.clip(y, -limit, limit).astype(NP_FP8[fmt]).astype(np.float64)
    np.testing.assert_array_equal(got, expected)
    assert got[500] == limit and got[501] == -limit and got[502] == limit and got[503] == -limit
    assert np.isnan(got[504])


@pytest.mark.parametrize("fmt", sorted(FP8))
def test_write_quantizes_into_the_slots(fmt):
    rng = np.random.default_rng()
    K, P, S, H, T = 3, 9, 4, 24, 11
    k_pages = jnp.zeros((K, P, S, H), FP8[fmt])
    slots = rng.choice(np.arange(S, P * S), T, replace=False).astype(np.int32)
    k = rng.standard_normal((T, K, H)).astype(np.float32) * 50
    v = rng.standard_normal((T, K, H)).astype(np.float32)
    kp, vp = write_to_kv_pages(k_pages, k_pages, jnp.asarray(k), jnp.asarray(v), jnp.asarray(slots),
                               k_scale=jnp.float32(0.5), v_scale=jnp.float32(0.01))
    flat_k = np.asarray(kp).reshape(K, P * S, H)[:, slots].astype(np.float32)  # [K, T, H]
    flat_v = np.asarray(vp).reshape(K, P * S, H)[:, slots].astype(np.float32)
    limit = float(ml_dtypes.finfo(NP_FP8[fmt]).max)
    want_k = np.clip(k / 0.5, -limit, limit).astype(NP_FP8[fmt]).astype(np.float32).swapaxes(0, 1)
    want_v = np.clip(v / np.float32(0.01), -limit, limit).astype(NP_FP8[fmt]).astype(np.float32).swapaxes(0, 1)
    np.testing.assert_array_equal(flat_k, want_k)
    np.testing.assert_array_equal(flat_v, want_v)
    untouched = np.setdiff1d(np.arange(P * S), slots)
    assert (np.asarray(kp).reshape(K, P * S, H)[:, untouched].astype(np.float32) == 0).all()


def test_write_refuses_scales_for_unquantized_pages():
    pages = jnp.zeros((1, 2, 4, 8), jnp.bfloat16)
    x = jnp.ones((1, 1, 8))
    with pytest.raises(ValueError, match="float8"):
        write_to_kv_pages(pages, pages, x, x, jnp.zeros(1, jnp.int32), k_scale=jnp.float32(1.0))


def test_calibration_sets_only_unset_scales_from_finite_values():
    rng = np.random.default_rng()
    k = rng.standard_normal((7, 2, 16)).astype(np.float32)
    v = rng.standard_normal((7, 2, 16)).astype(np.float32)
    k[3, 1, 5] = np.nan
    v[0, 0, 0] = -np.inf
    ks, vs = calibrated_scales(jnp.asarray(k), jnp.asarray(v), jnp.float32(0), jnp.float32(0))
    np.testing.assert_allclose(float(ks), np.nanmax(np.abs(k)) / 200, rtol=1e-6)
    finite_v = np.abs(v[np.isfinite(v)])
    np.testing.assert_allclose(float(vs), finite_v.max() / 100, rtol=1e-6)
    kept = calibrated_scales(jnp.asarray(k), jnp.asarray(v), jnp.float32(0.25), jnp.float32(3.0))
    assert (float(kept[0]), float(kept[1])) == (0.25, 3.0)
    zeros = calibrated_scales(jnp.zeros((2, 1, 4)), jnp.zeros((2, 1, 4)), jnp.float32(0), jnp.float32(0))
    assert (float(zeros[0]), float(zeros[1])) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("fmt", "q_dtype", "shape"),
    [
        ("e4m3", jnp.float32, {"B": 5, "N": 6, "K": 2, "H": 24, "S": 4, "W": 7}),
        ("e5m2", jnp.float32, {"B": 3, "N": 4, "K": 4, "H": 16, "S": 8, "W": 5}),
        ("e4m3", jnp.bfloat16, {"B": 4, "N": 8, "K": 2, "H": 32, "S": 4, "W": 9}),
    ],
)
def test_decode_kernel_matches_references(fmt, q_dtype, shape):
    case = _decode_case(np.random.SeedSequence().entropy % 2**32, fmt, q_dtype=q_dtype, **shape)
    out = np.asarray(paged_attention(**case, k_splits=2, pages_per_compute_block=2).astype(jnp.float32))
    ref = np.asarray(paged_attention_reference(**case).astype(jnp.float32))
    exact = _numpy_decode(**case)
    assert np.isfinite(out).all()
    tol = 1e-5 if q_dtype == jnp.float32 else 2e-2  # bf16: q and the probabilities are rounded to 8 bits
    np.testing.assert_allclose(ref, exact, atol=tol, rtol=tol)
    np.testing.assert_allclose(out, exact, atol=tol, rtol=tol)
    assert (out[np.asarray(case["lengths"]) == 0] == 0).all()


@pytest.mark.parametrize("fmt", sorted(FP8))
def test_decode_kernel_computes_in_float16_on_request(fmt):
    """compute_dtype=float16: the tiles widen to float16 (exact for both formats), q is rounded to 11 bits."""
    case = _decode_case(np.random.SeedSequence().entropy % 2**32, fmt, q_dtype=jnp.bfloat16,
                        B=5, N=6, K=3, H=32, S=4, W=6)
    out = paged_attention(**case, k_splits=2, pages_per_compute_block=2, compute_dtype=jnp.float16)
    assert out.dtype == jnp.bfloat16
    exact = _numpy_decode(**case)
    np.testing.assert_allclose(np.asarray(out, np.float32), exact, atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="compute_dtype must be"):
        paged_attention(**case, compute_dtype=jnp.int8)
    widened = {**case, "k_pages": case["k_pages"].astype(jnp.bfloat16), "v_pages": case["v_pages"].astype(jnp.bfloat16)}
    del widened["k_scale"], widened["v_scale"]
    with pytest.raises(ValueError, match="for float8 pools"):
        paged_attention(**widened, compute_dtype=jnp.float16)


def test_decode_kernel_widens_float8_pages_to_float16_by_default():
    """bfloat16 queries over float8 pages: the default is the float16 path; bfloat16 stays on request."""
    case = _decode_case(np.random.SeedSequence().entropy % 2**32, "e4m3", q_dtype=jnp.bfloat16,
                        B=3, N=8, K=2, H=32, S=4, W=5)
    default = np.asarray(paged_attention(**case, k_splits=2, pages_per_compute_block=2), np.float32)
    f16 = np.asarray(paged_attention(**case, k_splits=2, pages_per_compute_block=2, compute_dtype=jnp.float16),
                     np.float32)
    bf16 = np.asarray(paged_attention(**case, k_splits=2, pages_per_compute_block=2, compute_dtype=jnp.bfloat16),
                      np.float32)
    np.testing.assert_array_equal(default, f16)
    exact = _numpy_decode(**case)
    assert np.abs(f16 - exact).max() <= np.abs(bf16 - exact).max() + 1e-3  # 11-bit tiles: never worse


def test_decode_kernel_float8_dots():
    """compute_dtype=float8_e4m3fn: against float64 attention whose queries are rounded as the kernel
    rounds them (per-row scale to e4m3's largest value); what is left is the probabilities' rounding to
    e4m3 (relative step 2**-4 per probability, averaged over the keys)."""
    case = _decode_case(np.random.SeedSequence().entropy % 2**32, "e4m3", q_dtype=jnp.bfloat16,
                        B=5, N=8, K=2, H=64, S=4, W=9)
    q = np.asarray(case["q"], np.float32)
    q_scale = np.maximum(np.abs(q).max(-1, keepdims=True), 1e-30) / 448
    rounded = (q / q_scale).astype(NP_FP8["e4m3"]).astype(np.float32) * q_scale
    exact = _numpy_decode(**{**case, "q": jnp.asarray(rounded)})
    out = np.asarray(paged_attention(**case, k_splits=2, pages_per_compute_block=2,
                                     compute_dtype=jnp.float8_e4m3fn), np.float32)
    assert np.isfinite(out).all()
    assert np.abs(out - exact).max() <= 0.05 * np.abs(exact).max()
    assert (out[np.asarray(case["lengths"]) == 0] == 0).all()
    e5m2 = _decode_case(1, "e5m2", q_dtype=jnp.bfloat16, B=2, N=4, K=2, H=16, S=4, W=3)
    with pytest.raises(ValueError, match="float8_e4m3fn pages"):
        paged_attention(**e5m2, compute_dtype=jnp.float8_e4m3fn)


def test_decode_kernel_fp8_close_to_unquantized_pages():
    """Quantizing random unit-scale pages moves the output by about the format's relative step (2**-4)."""
    rng = np.random.default_rng()
    K, P, S, H, B, N, W = 2, 30, 4, 32, 3, 4, 6
    k = rng.standard_normal((K, P, S, H)).astype(np.float32)
    v = rng.standard_normal((K, P, S, H)).astype(np.float32)
    tables = jnp.asarray(rng.choice(np.arange(1, P), (B, W), replace=False).astype(np.int32))
    lengths = jnp.asarray([W * S, 13, 1], jnp.int32)
    q = jnp.asarray(rng.standard_normal((B, N, H)), jnp.float32)
    ks, vs = np.abs(k).max() / 200, np.abs(v).max() / 100
    k8, v8 = quantize(jnp.asarray(k), ks, jnp.float8_e4m3fn), quantize(jnp.asarray(v), vs, jnp.float8_e4m3fn)
    exact = np.asarray(paged_attention(q, jnp.asarray(k), jnp.asarray(v), tables, lengths))
    got = np.asarray(paged_attention(q, k8, v8, tables, lengths, k_scale=ks, v_scale=vs))
    err = np.abs(got - exact).max() / np.abs(exact).max()
    assert 1e-4 < err < 0.1


def _ragged_case(rng, fmt, chunks, K, G, S, H, width):
    """chunks: (cached prefix, chunk length) per sequence; returns kernel and reference arguments."""
    P = 1 + len(chunks) * width + 3
    k_pages = _fp8_pool(rng, (K, P, S, H), fmt)
    v_pages = _fp8_pool(rng, (K, P, S, H), fmt)
    valid_pages = rng.permutation([p for p in range(1, P) if p % 5 != 1])
    tables = np.ones((len(chunks), width), np.int32)  # NaN page past every sequence
    pos, seg, starts, lens, used = [], [], [], [], 0
    for r, (prefix, chunk) in enumerate(chunks):
        need = -(-(prefix + chunk) // S)
        tables[r, :need] = valid_pages[used : used + need]
        used += need
        starts.append(len(pos))
        lens.append(chunk)
        pos += range(prefix, prefix + chunk)
        seg += [r] * chunk
    t = len(pos) + 2  # padding tokens
    return {
        "q": jnp.asarray(rng.standard_normal((t, K * G, H)), jnp.float32),
        "k_pages": jnp.asarray(k_pages),
        "v_pages": jnp.asarray(v_pages),
        "positions": jnp.asarray(pos + [0, 0], jnp.int32),
        "segment_rows": np.asarray(seg + [-1, -1], np.int32),
        "block_tables": jnp.asarray(tables),
        "starts": np.asarray(starts),
        "lens": np.asarray(lens),
        "k_scale": jnp.float32(rng.uniform(0.01, 2.0)),
        "v_scale": jnp.float32(rng.uniform(0.01, 2.0)),
    }


@pytest.mark.parametrize(("fmt", "groups", "qb"), [("e4m3", 3, 4), ("e5m2", 2, 8)])
def test_ragged_kernel_matches_reference(fmt, groups, qb):
    rng = np.random.default_rng()
    chunks = [(int(rng.integers(0, 20)), int(rng.integers(1, 12))) for _ in range(3)]
    c = _ragged_case(rng, fmt, chunks, K=2, G=groups, S=4, H=24, width=9)
    rows, starts, lens = query_blocks(c["starts"], c["lens"], qb, 16)
    scales = {"k_scale": c["k_scale"], "v_scale": c["v_scale"]}
    out = ragged_paged_attention(c["q"], c["k_pages"], c["v_pages"], c["positions"], c["block_tables"],
                                 jnp.asarray(rows), jnp.asarray(starts), jnp.asarray(lens), qb=qb, **scales)
    ref = ragged_paged_attention_reference(c["q"], c["k_pages"], c["v_pages"], c["positions"],
                                           jnp.asarray(c["segment_rows"]), c["block_tables"], **scales)
    real = c["segment_rows"] >= 0
    assert np.isfinite(np.asarray(out)[real]).all()
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=1e-4, rtol=1e-4)
    # The XLA formulation (the CPU's engine path) too.
    xla = ragged_paged_attention_xla(c["q"], c["k_pages"], c["v_pages"], c["positions"], c["block_tables"],
                                     jnp.asarray(rows), jnp.asarray(starts), jnp.asarray(lens), qb=qb, **scales)
    np.testing.assert_allclose(np.asarray(xla)[real], np.asarray(ref)[real], atol=1e-4, rtol=1e-4)
    # The reference itself: decode attention of each token over its own prefix, in float64.
    for i in np.flatnonzero(real):
        one = {"q": c["q"][i : i + 1], "k_pages": c["k_pages"], "v_pages": c["v_pages"],
               "block_tables": c["block_tables"][c["segment_rows"][i]][None],
               "lengths": c["positions"][i : i + 1] + 1, **scales}
        np.testing.assert_allclose(np.asarray(ref)[i], _numpy_decode(**one)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not triton_backend_available(), reason="jax has no Pallas Triton backend")
@pytest.mark.parametrize("fmt", sorted(FP8))
def test_fp8_kernels_lower_to_triton(fmt):
    """Cross-lowered for CUDA: float8 tile loads and their widening have Triton lowering rules."""
    B, N, K, H, P, S, W, T = 4, 16, 2, 128, 40, 16, 8, 32
    pool = jax.ShapeDtypeStruct((K, P, S, H), FP8[fmt])
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    f32 = jax.ShapeDtypeStruct((), jnp.float32)

    def decode(q, kp, vp, bt, lens, ks, vs):
        return paged_attention(q, kp, vp, bt, lens, k_scale=ks, v_scale=vs, interpret=False)

    q = jax.ShapeDtypeStruct((B, N, H), jnp.bfloat16)
    assert "xla.gpu.triton" in export_for_cuda(decode, q, pool, pool, i32(B, W), i32(B), f32, f32)

    def decode_f16(q, kp, vp, bt, lens, ks, vs):
        return paged_attention(q, kp, vp, bt, lens, k_scale=ks, v_scale=vs, compute_dtype=jnp.float16,
                               interpret=False)

    assert "xla.gpu.triton" in export_for_cuda(decode_f16, q, pool, pool, i32(B, W), i32(B), f32, f32)
    if fmt == "e4m3":
        def decode_fp8_dots(q, kp, vp, bt, lens, ks, vs):
            return paged_attention(q, kp, vp, bt, lens, k_scale=ks, v_scale=vs, compute_dtype=jnp.float8_e4m3fn,
                                   interpret=False)

        assert "xla.gpu.triton" in export_for_cuda(decode_fp8_dots, q, pool, pool, i32(B, W), i32(B), f32, f32)

    def ragged(q, kp, vp, pos, bt, rows, starts, lens, ks, vs):
        return ragged_paged_attention(q, kp, vp, pos, bt, rows, starts, lens, k_scale=ks, v_scale=vs,
                                      interpret=False)

    qt = jax.ShapeDtypeStruct((T, N, H), jnp.bfloat16)
    args = (qt, pool, pool, i32(T), i32(B, W), i32(4), i32(4), i32(4), f32, f32)
    assert "xla.gpu.triton" in export_for_cuda(ragged, *args)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize(("fmt", "knobs"), [("e4m3", {}), ("e5m2", {"k_splits": 4, "pages_per_compute_block": 2}),
                                           ("e4m3", {"compute_dtype": jnp.float16})])
def test_fp8_kernels_on_gpu(fmt, knobs):
    """The Triton kernels on float8 pages against the references: decode (default and split launches) and
    chunks after a cached prefix, at the kernels' real tile sizes."""
    case = _decode_case(7, fmt, B=6, N=32, K=8, H=128, S=16, W=37, q_dtype=jnp.bfloat16)
    out = np.asarray(paged_attention(**case, **knobs), np.float32)
    ref = np.asarray(paged_attention_reference(**case), np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=2e-2, rtol=2e-2)
    rng = np.random.default_rng(11)
    c = _ragged_case(rng, fmt, [(300, 40), (0, 17), (129, 1)], K=8, G=4, S=16, H=128, width=40)
    c["q"] = c["q"].astype(jnp.bfloat16)
    rows, starts, lens = query_blocks(c["starts"], c["lens"], 16, 8)
    scales = {"k_scale": c["k_scale"], "v_scale": c["v_scale"]}
    got = ragged_paged_attention(c["q"], c["k_pages"], c["v_pages"], c["positions"], c["block_tables"],
                                 jnp.asarray(rows), jnp.asarray(starts), jnp.asarray(lens), **scales)
    want = ragged_paged_attention_reference(c["q"], c["k_pages"], c["v_pages"], c["positions"],
                                            jnp.asarray(c["segment_rows"]), c["block_tables"], **scales)
    real = c["segment_rows"] >= 0
    got, want = np.asarray(got, np.float32)[real], np.asarray(want, np.float32)[real]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_fp8_dots_on_gpu():
    """The Triton decode kernel with float8 dots, at the kernel's real tile sizes, against float64 attention
    over queries rounded as the kernel rounds them."""
    case = _decode_case(5, "e4m3", B=6, N=32, K=8, H=128, S=16, W=37, q_dtype=jnp.bfloat16)
    q = np.asarray(case["q"], np.float32)
    q_scale = np.maximum(np.abs(q).max(-1, keepdims=True), 1e-30) / 448
    rounded = (q / q_scale).astype(NP_FP8["e4m3"]).astype(np.float32) * q_scale
    exact = _numpy_decode(**{**case, "q": jnp.asarray(rounded)})
    for knobs in ({}, {"k_splits": 4, "pages_per_compute_block": 2}):
        out = np.asarray(paged_attention(**case, compute_dtype=jnp.float8_e4m3fn, **knobs), np.float32)
        assert np.isfinite(out).all()
        assert np.abs(out - exact).max() <= 0.05 * np.abs(exact).max()
