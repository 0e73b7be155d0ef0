"""The AWQ packing, the dequantizing matmuls (XLA, Pallas in interpret mode, int8/fp8), and which
quantization configs are read or refused."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxllm.quantization import (
    QuantizedWeight,
    awq_layout,
    matmul,
    quantize_per_channel,
    resolve_quantization,
)
from jaxllm.quantization.awq import (
    dequantize_awq,
    dequantize_awq_numpy,
    from_checkpoint,
    pack_awq,
    unpack_awq,
)
from jaxllm.quantization.weights import quantize_per_channel_numpy
from tests.quantization.awq_writer import pack_columns, quantize_linear


def _awq(rng, k, n, group, scale_dtype=np.float16):
    q = rng.integers(0, 16, (k, n))
    z = rng.integers(0, 16, (k // group, n))
    s = (0.001 + 0.01 * rng.random((k // group, n))).astype(scale_dtype)
    return q, z, s


def test_pack_round_trip_and_nibble_order():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 16, (7, 64))
    words = pack_awq(values)
    assert words.dtype == np.int32 and words.shape == (7, 8)
    np.testing.assert_array_equal(unpack_awq(words), values)
    np.testing.assert_array_equal(words, pack_columns(values))  # the writer packs from the definition
    u = words.view(np.uint32)
    for r, c, j in [(0, 0, 0), (3, 5, 1), (6, 7, 7), (2, 4, 3)]:
        assert (int(u[r, c]) >> (4 * [0, 4, 1, 5, 2, 6, 3, 7][j])) & 0xF == values[r, 8 * c + j]
    # all sixteen values in every nibble position, sign bit included
    full = np.repeat(np.arange(16)[:, None], 8, axis=1)
    np.testing.assert_array_equal(unpack_awq(pack_awq(full)), full)
    with pytest.raises(ValueError):
        pack_awq(np.full((1, 8), 16))


@pytest.mark.parametrize(("k", "n", "group"), [(128, 64, 32), (256, 128, 64), (64, 32, -1)])
def test_dequantize_matches_float64_reference(k, n, group):
    rng = np.random.default_rng(k + n)
    g = k if group == -1 else group
    q, z, s = _awq(rng, k, n, g)
    qweight, qzeros = pack_awq(q), pack_awq(z)
    ref = (q - np.repeat(z, g, axis=0)) * np.repeat(s.astype(np.float64), g, axis=0)
    np.testing.assert_array_equal(dequantize_awq_numpy(qweight, qzeros, s), ref)
    w = from_checkpoint("layer", qweight, qzeros, s, group)
    assert w.shape == (k, n) and w.group_size == g and w.scales.shape == (k // g, 8, n // 8)
    dense = np.asarray(dequantize_awq(jax.device_put(w), jnp.float32))
    np.testing.assert_array_equal(dense, ref.astype(np.float32))  # exact: 4-bit ints times fp16 scales


def test_writer_quantization_round_trip():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((48, 128)).astype(np.float32)  # torch layout [N out, K in]
    qweight, qzeros, scales, dense = quantize_linear(weight, 32)
    assert qweight.shape == (128, 6) and qzeros.shape == (4, 6) and scales.shape == (4, 48)
    assert scales.dtype == np.float16
    np.testing.assert_allclose(dequantize_awq_numpy(qweight, qzeros, scales).T, dense, rtol=1e-6, atol=1e-7)
    # 4-bit with per-group ranges: every weight within half a step (plus fp16 scale rounding) of the original
    step = np.repeat(scales.astype(np.float32), 32, axis=0).T
    assert np.all(np.abs(dense - weight) <= 0.5 * step * 1.01 + 1e-6)


def test_checkpoint_shape_errors():
    rng = np.random.default_rng(2)
    q, z, s = _awq(rng, 128, 64, 32)
    with pytest.raises(ValueError, match="group size"):
        from_checkpoint("model.layers.0.mlp.up_proj", pack_awq(q), pack_awq(z), s, 64)
    with pytest.raises(ValueError, match="int32"):
        from_checkpoint("x", pack_awq(q).astype(np.int64), pack_awq(z), s, 32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_xla_matmul_matches_reference(dtype):
    rng = np.random.default_rng(3)
    k, n, g = 256, 128, 64
    q, z, s = _awq(rng, k, n, g)
    w = jax.device_put(from_checkpoint("l", pack_awq(q), pack_awq(z), s, g))
    x = jnp.asarray(rng.standard_normal((5, k)), dtype)
    ref = np.asarray(x, np.float64) @ dequantize_awq_numpy(pack_awq(q), pack_awq(z), s)
    y = matmul(x, w)
    assert y.dtype == dtype and y.shape == (5, n)
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    assert np.linalg.norm(np.asarray(y, np.float64) - ref) / np.linalg.norm(ref) < tol
    # leading dims are kept
    assert matmul(x.reshape(1, 5, k), w).shape == (1, 5, n)


def test_device_layout_is_k_major_inside_blocks():
    """Nibble i of word (b*PB + j*R + r, c) is q[b*PB + i*R + r, 8c + j] (awq_layout.py's definition)."""
    rng = np.random.default_rng(5)
    for k, n, group in [(256, 32, 128), (128, 16, 64), (96, 8, 96)]:
        pb = awq_layout.pack_block(group)
        r = pb // 8
        q = rng.integers(0, 16, (k, n))
        words = awq_layout.pack_weight(q, group)
        assert words.dtype == np.int32 and words.shape == (k, n // 8)
        u = words.view(np.uint32)
        for b, j, rr, c, i in [(0, 0, 0, 0, 0), (k // pb - 1, 7, r - 1, n // 8 - 1, 7), (0, 3, 1, 0, 5)]:
            assert (int(u[b * pb + j * r + rr, c]) >> (4 * i)) & 0xF == q[b * pb + i * r + rr, 8 * c + j]
        np.testing.assert_array_equal(np.asarray(awq_layout.unpack_weight(jnp.asarray(words), group)), q)
        z = rng.integers(0, 16, (k // group, n))
        np.testing.assert_array_equal(np.asarray(awq_layout.unpack_zeros(jnp.asarray(awq_layout.pack_zeros(z)))), z)
    with pytest.raises(ValueError, match="multiple of 8"):
        awq_layout.pack_block(12)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_per_channel_quantization(kind):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((96, 40)).astype(np.float32) * rng.random(40).astype(np.float32)
    w[:, 3] = 0.0  # a dead column gets scale 1 and zeros
    qw = quantize_per_channel(jnp.asarray(w), kind)
    q_ref, s_ref = quantize_per_channel_numpy(w, kind)
    assert qw.qweight.dtype == (jnp.int8 if kind == "int8" else jnp.float8_e4m3fn)
    assert qw.scales.shape == (40,) and qw.shape == (96, 40)
    np.testing.assert_allclose(np.asarray(qw.scales), s_ref, rtol=1e-6)
    got, want = np.asarray(qw.qweight).astype(np.float32), q_ref.astype(np.float32)
    assert np.mean(got != want) < 0.01  # float32 vs float64 division may flip a rare rounding tie
    assert np.all(got[:, 3] == 0) and float(qw.scales[3]) == 1.0
    rel = np.abs(np.asarray(qw.dequantize()) - w).max(axis=0) / np.maximum(np.abs(w).max(axis=0), 1e-9)
    assert rel.max() < (1 / 254 + 1e-6 if kind == "int8" else 1 / 16 + 1e-6)
    x = jnp.asarray(rng.standard_normal((3, 96)), jnp.float32)
    y = np.asarray(matmul(x, qw))
    np.testing.assert_allclose(y, np.asarray(x) @ np.asarray(qw.dequantize()), rtol=1e-5, atol=1e-5)


def test_quantized_weight_is_a_pytree():
    w = QuantizedWeight(jnp.zeros((4, 2), jnp.int32), jnp.ones((1, 8, 2)), jnp.zeros((1, 2), jnp.int32),
                        kind="awq", group_size=4, shape=(4, 16))
    leaves, tree = jax.tree_util.tree_flatten(w)
    assert len(leaves) == 3
    again = jax.tree_util.tree_unflatten(tree, leaves)
    assert again.kind == "awq" and again.shape == (4, 16) and again.group_size == 4
    assert w.nbytes == 4 * 2 * 4 + 16 * 4 + 2 * 4
    i8 = QuantizedWeight(jnp.zeros((4, 2), jnp.int8), jnp.ones((2,)), kind="int8", shape=(4, 2))
    assert len(jax.tree_util.tree_leaves(i8)) == 2
    out = jax.jit(lambda x, w: matmul(x, w))(jnp.ones((1, 4)), i8)
    assert out.shape == (1, 2)


# ---- which configs are read ---------------------------------------------------------------------------

AWQ_QC = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


def test_awq_config_detected_and_parsed(tmp_path):
    qc = resolve_quantization(None, str(tmp_path), {"quantization_config": AWQ_QC})
    assert qc.method == "awq" and qc.group_size == 128 and qc.from_checkpoint
    assert resolve_quantization("awq", str(tmp_path), {"quantization_config": AWQ_QC}).method == "awq"
    assert resolve_quantization("awq_marlin", str(tmp_path), {"quantization_config": AWQ_QC}).method == "awq"
    (tmp_path / "quant_config.json").write_text(
        json.dumps({"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"})
    )
    qc = resolve_quantization(None, str(tmp_path), {})
    assert qc.method == "awq" and qc.group_size == 64


def test_load_time_methods(tmp_path):
    assert resolve_quantization(None, str(tmp_path), {}) is None
    assert resolve_quantization("int8", str(tmp_path), {}).method == "int8"
    assert resolve_quantization("FP8", str(tmp_path), {}).method == "fp8"
    with pytest.raises(ValueError, match="needs an AWQ checkpoint"):
        resolve_quantization("awq", str(tmp_path), {})
    with pytest.raises(ValueError, match="already quantized with AWQ"):
        resolve_quantization("int8", str(tmp_path), {"quantization_config": AWQ_QC})
    with pytest.raises(ValueError, match="Unknown or unsupported quantization method 'squeeze'"):
        resolve_quantization("squeeze", str(tmp_path), {})
    with pytest.raises(ValueError, match="GPTQ"):
        resolve_quantization("gptq", str(tmp_path), {})


@pytest.mark.parametrize(
    ("qc", "match"),
    [
        ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}, "GPTQ"),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
        ({"load_in_8bit": True}, "bitsandbytes"),
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "FP8 checkpoints"),
        ({"quant_method": "compressed-tensors"}, "compressed-tensors"),
        (dict(AWQ_QC, version="gemv"), "version 'gemv'"),
        (dict(AWQ_QC, version="gemv_fast"), "version 'gemv_fast'"),
        (dict(AWQ_QC, bits=8), "8 bits"),
        (dict(AWQ_QC, zero_point=False), "without zero points"),
        ({"quant_method": "mystery"}, "'mystery' is not supported"),
    ],
)
def test_unsupported_checkpoint_formats_are_named(tmp_path, qc, match):
    with pytest.raises(ValueError, match=match):
        resolve_quantization(None, str(tmp_path), {"quantization_config": qc})


def test_gptq_quantize_config_file_is_refused(tmp_path):
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128, "desc_act": True}))
    with pytest.raises(ValueError, match="GPTQ"):
        resolve_quantization(None, str(tmp_path), {})


def test_fp8_values_are_e4m3():
    w = np.array([[448.0, -1.0], [1.0, 0.5], [0.0, 2.0]], np.float32)
    qw = quantize_per_channel(jnp.asarray(w), "fp8")
    assert np.asarray(qw.qweight).dtype == ml_dtypes.float8_e4m3fn
    np.testing.assert_allclose(np.asarray(qw.dequantize()), w, rtol=1 / 16)
