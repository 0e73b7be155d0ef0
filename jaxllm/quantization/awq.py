"""AutoAWQ GEMM checkpoints: the on-disk format, its conversion to `QuantizedWeight`, the XLA formulation.

On disk, per linear layer `X` (torch `Linear`, so X.weight would be [N out, K in]):

    X.qweight  int32 [K, N/8]     eight 4-bit weights per word
    X.qzeros   int32 [K/G, N/8]   eight 4-bit zero points per word
    X.scales   fp16  [K/G, N]
    (X.bias    fp16  [N], when the layer has one: stored as usual)

Output column 8c + j of word column c is the nibble `(word >> (4 * AWQ_ORDER[j])) & 0xF` with
AWQ_ORDER = 0, 4, 1, 5, 2, 6, 3, 7, and W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]. The input
dim comes first, so unlike `X.weight` nothing is transposed. `from_checkpoint` repacks the words
once, on the host, into the device layout of `awq_layout.py`; the checkpoint itself is read as it is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.quantization import awq_layout
from jaxllm.quantization.weights import QuantizedWeight, after_input

# Output column 8c + j of a checkpoint word column c is the nibble at bit offset 4 * AWQ_ORDER[j].
AWQ_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
AWQ_SHIFTS = tuple(4 * i for i in AWQ_ORDER)
AWQ_SUFFIXES = ("qweight", "qzeros", "scales")


# ---- the packing, in NumPy ----------------------------------------------------------------------------


def pack_awq(values: np.ndarray) -> np.ndarray:
    """[R, N] integers in 0..15 -> int32 [R, N/8] in AutoAWQ's nibble order."""
    values = np.asarray(values)
    rows, n = values.shape
    if n % 8:
        raise ValueError(f"AWQ packs 8 values per int32: the last dimension ({n}) must be a multiple of 8.")
    if values.min(initial=0) < 0 or values.max(initial=0) > 15:
        raise ValueError("AWQ values must lie in 0..15.")
    v = values.astype(np.uint32).reshape(rows, n // 8, 8)
    words = np.zeros((rows, n // 8), np.uint32)
    for j, shift in enumerate(AWQ_SHIFTS):
        words |= v[:, :, j] << np.uint32(shift)
    return words.view(np.int32)


def unpack_awq(words: np.ndarray) -> np.ndarray:
    """int32 [R, N/8] -> uint8 [R, N]: the inverse of `pack_awq`."""
    w = np.asarray(words).view(np.uint32)
    shifts = np.asarray(AWQ_SHIFTS, np.uint32)
    return ((w[:, :, None] >> shifts) & np.uint32(0xF)).astype(np.uint8).reshape(w.shape[0], -1)


def dequantize_awq_numpy(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The checkpoint's dense weight [K, N] in float64: (q - z) * s, groups of G = K / (K/G) rows."""
    q = unpack_awq(qweight).astype(np.float64)
    z = unpack_awq(qzeros).astype(np.float64)
    s = np.asarray(scales, np.float64)
    group = q.shape[0] // s.shape[0]
    return (q - np.repeat(z, group, axis=0)) * np.repeat(s, group, axis=0)


# ---- checkpoint tensors -> QuantizedWeight -------------------------------------------------------------


def resolve_group_size(group_size: int, in_features: int) -> int:
    return in_features if group_size == -1 else group_size


def from_checkpoint(
    name: str, qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int, dtype=None
) -> QuantizedWeight:
    """Host QuantizedWeight from one layer's three AWQ tensors; `name` is for error messages.

    The words and zero points are repacked into the device layout (`awq_layout.py`, still 4 bits a
    value); the scales become [K/G, 8, N/8], in their own dtype (fp16 in AutoAWQ checkpoints) unless
    `dtype` is given: the kernels compute the dequantized weight in float32 from them, so an fp16
    scale keeps its precision under a bf16 model.
    """
    if qweight.dtype != np.int32 or qzeros.dtype != np.int32:
        raise ValueError(f"{name}: AWQ qweight and qzeros must be int32, got {qweight.dtype} and {qzeros.dtype}.")
    if qweight.ndim != 2 or qzeros.ndim != 2 or scales.ndim != 2:
        raise ValueError(f"{name}: AWQ qweight, qzeros and scales must be 2-D.")
    k, n8 = qweight.shape
    n = 8 * n8
    group = resolve_group_size(group_size, k)
    if k % group:
        raise ValueError(f"{name}: the input dimension {k} is not a multiple of the AWQ group size {group}.")
    if scales.shape != (k // group, n):
        raise ValueError(
            f"{name}: AWQ scales have shape {tuple(scales.shape)}, expected {(k // group, n)} for qweight "
            f"{tuple(qweight.shape)} and group size {group} (is the config's group_size right?)."
        )
    if qzeros.shape != (k // group, n8):
        raise ValueError(f"{name}: AWQ qzeros have shape {tuple(qzeros.shape)}, expected {(k // group, n8)}.")
    if group % 8:
        raise ValueError(f"{name}: AWQ group size {group} is not a multiple of 8.")
    s = np.asarray(scales)
    s = np.ascontiguousarray(s.reshape(k // group, n8, 8).transpose(0, 2, 1)).astype(dtype or s.dtype)
    words = awq_layout.pack_weight(unpack_awq(qweight), group)
    zeros = awq_layout.pack_zeros(unpack_awq(qzeros))
    return QuantizedWeight(words, s, zeros, kind="awq", group_size=group, shape=(k, n))


class AwqCollector:
    """Gathers each layer's qweight / qzeros / scales as the checkpoint streams by, in any order.

    `add(name, array)` returns (base weight name, QuantizedWeight) once all three tensors of a layer are
    in, None otherwise; the base name is the `X.weight` the dense checkpoint would have, so the model's
    name table gives the place in the parameter tree.
    """

    def __init__(self, group_size: int, scales_dtype=None):
        self.group_size = group_size
        self.dtype = scales_dtype
        self.pending: dict[str, dict[str, np.ndarray]] = {}

    @staticmethod
    def base_name(name: str) -> str | None:
        stem, _, suffix = name.rpartition(".")
        return f"{stem}.weight" if stem and suffix in AWQ_SUFFIXES else None

    def add(self, name: str, array: np.ndarray) -> tuple[str, QuantizedWeight] | None:
        base = self.base_name(name)
        parts = self.pending.setdefault(base, {})
        parts[name.rpartition(".")[2]] = array
        if len(parts) < len(AWQ_SUFFIXES):
            return None
        del self.pending[base]
        return base, from_checkpoint(
            base[: -len(".weight")], parts["qweight"], parts["qzeros"], parts["scales"], self.group_size, self.dtype
        )

    def incomplete(self) -> list[str]:
        """Names of the tensors still missing (layers with some but not all three tensors)."""
        out = []
        for base, parts in sorted(self.pending.items()):
            stem = base[: -len(".weight")]
            out += [f"{stem}.{s}" for s in AWQ_SUFFIXES if s not in parts]
        return out


# ---- on device -----------------------------------------------------------------------------------------


def dequantize_awq(w: QuantizedWeight, dtype) -> jax.Array:
    """Dense [K, N] in `dtype`: (q - z) * s computed exactly in float32, rounded once to `dtype`."""
    return awq_layout.dequantize(w.qweight, w.zeros, w.scales, w.group_size, dtype)


def awq_matmul_xla(x: jax.Array, w: QuantizedWeight) -> jax.Array:
    """x [M, K] @ W: dequantize in XLA (fused into the consumer where XLA can), then one dense dot.

    The dequantized weight is made to depend on x (`after_input`): otherwise it depends only on
    parameters, and XLA schedules every layer's dequantization first and holds a dense copy of the
    whole model at once.
    """
    return jnp.dot(x, after_input(dequantize_awq(w, x.dtype), x))


def random_awq_weight(key: jax.Array, k: int, n: int, group_size: int, dtype, std: float = 0.02) -> QuantizedWeight:
    """Random AWQ weight of about N(0, std) entries (for load_format="dummy"); traceable."""
    g = resolve_group_size(group_size, k)
    bits = jax.random.bits(key, (k, n // 8), jnp.uint32)
    qweight = jax.lax.bitcast_convert_type(bits, jnp.int32)
    # Zero points 7 or 8 at random: q - z (q uniform in 0..15) then has mean 0 and std ~4.6. A fixed
    # zero point would give every weight the same sign of bias, which grows through the layers.
    flips = jax.random.bits(jax.random.fold_in(key, 1), (k // g, n // 8), jnp.uint32) & 0x11111111
    zeros = jax.lax.bitcast_convert_type(jnp.uint32(0x77777777) + flips, jnp.int32)
    scales = jnp.full((k // g, 8, n // 8), std / 4.6, dtype)
    return QuantizedWeight(qweight, scales, zeros, kind="awq", group_size=g, shape=(k, n))
