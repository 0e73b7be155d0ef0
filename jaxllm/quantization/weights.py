"""`QuantizedWeight`: a linear layer's weight [K in, N out] stored quantized, as one pytree leaf group.

Layouts (K input dim, N output dim, G group size, N8 = N / 8):

    kind "awq":  qweight int32 [K, N8]      8 four-bit values per word, repacked at load time so that
                                             the 8 nibbles of a word are 8 input rows of one output
                                             column (awq_layout.py draws it)
                 zeros   int32 [K/G, N8]    nibble j of word c: the zero point of column 8c + j
                 scales  dtype [K/G, 8, N8] scales[g, j, c] is the scale of column 8c + j
                 W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]
    kind "int8": qweight int8 [K, N],           scales float32 [N]    W = q * s
    kind "fp8":  qweight float8_e4m3fn [K, N],  scales float32 [N]    W = q * s

The AWQ scales are kept "j-major" (a transpose of the checkpoint's [K/G, N]) so that a kernel program
that owns one nibble position j reads its scales as one contiguous row. Every AWQ field keeps the
checkpoint's axes (input rows first, word columns last), so splitting N into contiguous column ranges
splits every field along its last axis, which is what tensor parallelism does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.quantization.awq_layout import dequantize as awq_dequantize

INT8_MAX = 127.0
FP8_MAX = 448.0  # largest finite float8_e4m3fn


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """A quantized [K, N] weight. Array fields are pytree children; kind, group_size, shape are static."""

    qweight: Any
    scales: Any
    zeros: Any = None
    kind: str = dataclasses.field(default="int8", metadata=dict(static=True))
    group_size: int = dataclasses.field(default=0, metadata=dict(static=True))  # AWQ only
    shape: tuple[int, int] = dataclasses.field(default=(0, 0), metadata=dict(static=True))  # (K, N)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.qweight, self.scales, self.zeros) if a is not None)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """The dense [K, N] weight (computed in float32, then cast)."""
        if self.kind == "awq":
            return awq_dequantize(self.qweight, self.zeros, self.scales, self.group_size, dtype)
        return (self.qweight.astype(jnp.float32) * self.scales.astype(jnp.float32)).astype(dtype)


def after_input(dense: jax.Array, x: jax.Array) -> jax.Array:
    """`dense` unchanged, but computed only once `x` exists.

    A weight dequantized from parameters alone has no data dependence on the layer's input, so XLA
    is free to dequantize every layer up front (and XLA drops optimization barriers on some
    backends); the whole model would then live in memory dense. Adding an exact zero derived from x
    orders each layer's dequantization after its input. nan_to_num keeps the zero a zero when x
    holds NaN or inf, so one bad row cannot touch the weight.
    """
    zero = jnp.nan_to_num(x.reshape(-1)[0].astype(jnp.float32)) * 0.0
    return dense + zero.astype(dense.dtype)


def is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedWeight)


# Parameter leaves (last path element) that are the input/output projections of OPT; every other
# quantizable leaf is a "w..." matrix inside params["layers"].
_EXTRA_LINEARS = frozenset({"proj_in", "proj_out"})


def is_linear_leaf(path: tuple, ndim: int) -> bool:
    """Whether the parameter at `path` is a linear layer's weight that quantization applies to.

    Every model stores its linear weights [in, out] as layer leaves named "w..." (wq, wk, wv, wo, wqkv,
    w_gate, w_up, w_down); embeddings, norms, biases and the LM head are never quantized.
    """
    name = path[-1]
    if not isinstance(name, str) or ndim != 2:
        return False
    return (path[0] == "layers" and name.startswith("w")) or name in _EXTRA_LINEARS


def quantize_per_channel(w: jax.Array, kind: str) -> QuantizedWeight:
    """Weight-only int8 or fp8 (e4m3) quantization of a dense [K, N] weight, one scale per output column.

    int8: s = max|W[:, n]| / 127, q = round(W / s) in [-127, 127]; fp8: s = max|W[:, n]| / 448, q = W / s
    rounded to the nearest float8_e4m3fn. Columns of zeros get s = 1. Traceable (runs under jit).
    """
    w32 = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=0)
    if kind == "int8":
        scales = jnp.where(amax > 0, amax / INT8_MAX, 1.0)
        q = jnp.clip(jnp.round(w32 / scales), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    elif kind == "fp8":
        scales = jnp.where(amax > 0, amax / FP8_MAX, 1.0)
        q = jnp.clip(w32 / scales, -FP8_MAX, FP8_MAX).astype(jnp.float8_e4m3fn)
    else:
        raise ValueError(f"Unknown per-channel quantization {kind!r}; expected 'int8' or 'fp8'.")
    return QuantizedWeight(q, scales.astype(jnp.float32), None, kind=kind, group_size=0, shape=tuple(w.shape))


def quantize_per_channel_numpy(w: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The same quantization in NumPy (float64 math): (q, scales). A reference for tests."""
    w64 = np.asarray(w, np.float64)
    amax = np.abs(w64).max(axis=0)
    top = INT8_MAX if kind == "int8" else FP8_MAX
    scales = np.where(amax > 0, amax / top, 1.0).astype(np.float32)
    if kind == "int8":
        return np.clip(np.rint(w64 / scales), -top, top).astype(np.int8), scales
    import ml_dtypes

    return np.clip(w64 / scales, -top, top).astype(np.float32).astype(ml_dtypes.float8_e4m3fn), scales


def dequantize_tree(params: Any, dtype=None) -> Any:
    """`params` with every QuantizedWeight replaced by its dense weight (in `dtype`, default float32)."""

    def dense(leaf):
        if is_quantized(leaf):
            return leaf.dequantize(dtype or jnp.float32)
        return leaf

    return jax.tree_util.tree_map(dense, params, is_leaf=is_quantized)


def tree_weight_bytes(params: Any) -> int:
    """Bytes of every array in `params`, quantized weights counted by their packed arrays."""
    return sum(int(leaf.nbytes) for leaf in jax.tree_util.tree_leaves(params))
