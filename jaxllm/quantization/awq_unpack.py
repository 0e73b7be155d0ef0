"""Inside the AWQ kernels: repacked int32 words -> exact float32 weights, and the launch plumbing both
kernels share (Triton compiler parameters, the output buffer and its epilogue).

Unpacking without an int -> float conversion. A 4-bit value q placed in bits 12..15 of the float32
1.0f (0x3F800000) reads as v = 1 + q / 2**11; in bits 16..19 as v = 1 + q / 2**7. Then

    v * (2**11 s) - (2**11 + z) s  =  (q - z) s          (bits 12..15)
    v * (2**7 s)  - (2**7 + z) s   =  (q - z) s          (bits 16..19)

is one multiply-add, exact for an fp16 or bf16 scale s whether or not the compiler fuses it (every
product fits the 24-bit float32 mantissa), and the zero point costs nothing per weight. A word holds
nibbles 3 and 4 in those bits already; one shift each brings 5 and 6 (>> 8), 1 and 2 (<< 8), 7 and 0
(a rotation by 16) there: eight weights cost four shifts, eight AND-ORs (one LOP3 each) and eight FMAs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

try:  # Triton-specific compiler parameters.
    from jax.experimental.pallas import triton as _plgpu

    _TritonCompilerParams = getattr(_plgpu, "CompilerParams", None) or getattr(_plgpu, "TritonCompilerParams", None)
except ImportError:  # pragma: no cover - depends on the installed jax
    _TritonCompilerParams = None

NUM_SMS = 132  # H200; sizes the split-K grid

_ONE = 0x3F800000  # float32 bits of 1.0
_LO_MASK, _HI_MASK = 0x0000F000, 0x000F0000
LO_SCALE, HI_SCALE = 2.0**11, 2.0**7

# (how a word is shifted, nibble landing in bits 12..15, nibble landing in bits 16..19)
_PAIRS = (("none", 3, 4), ("right8", 5, 6), ("left8", 1, 2), ("rotate16", 7, 0))


def _shifted(words, how: str):
    if how == "none":
        return words
    if how == "right8":
        return lax.shift_right_logical(words, jnp.int32(8))
    if how == "left8":
        return lax.shift_left(words, jnp.int32(8))
    return lax.shift_right_logical(words, jnp.int32(16)) | lax.shift_left(words, jnp.int32(16))


def group_constants(scales, zeros):
    """float32 (scales, zero points) of one nibble position -> (S_lo, Z_lo, S_hi, Z_hi) for `nibbles`."""
    s = scales.astype(jnp.float32)
    z = zeros.astype(jnp.float32)
    return s * LO_SCALE, (z + LO_SCALE) * s, s * HI_SCALE, (z + HI_SCALE) * s


def nibbles(words, consts):
    """Yield (i, (q_i - z) * s as float32) for the eight nibbles i of int32 `words` (any shape);
    `consts` from `group_constants`, broadcastable against `words`."""
    s_lo, z_lo, s_hi, z_hi = consts
    for how, lo, hi in _PAIRS:
        t = _shifted(words, how)
        v_lo = lax.bitcast_convert_type((t & _LO_MASK) | _ONE, jnp.float32)
        yield lo, v_lo * s_lo - z_lo
        v_hi = lax.bitcast_convert_type((t & _HI_MASK) | _ONE, jnp.float32)
        yield hi, v_hi * s_hi - z_hi


def zero_nibble(zero_words, j):
    """Zero points of nibble position j (a traced program id) from int32 zero words."""
    return lax.shift_right_logical(zero_words, (4 * j).astype(jnp.int32)) & 0xF


def triton_params(num_warps: int, num_stages: int, interpret: bool) -> dict:
    """The pallas_call keyword for the launch configuration's warps and stages (none when interpreted)."""
    if interpret:
        return {}
    if _TritonCompilerParams is None:  # pragma: no cover
        raise RuntimeError("This jax has no Pallas Triton backend (jax.experimental.pallas.triton).")
    return {"compiler_params": _TritonCompilerParams(num_warps=num_warps, num_stages=num_stages)}


def rows_pow2(m: int, lo: int = 1) -> int:
    p = lo
    while p < m:
        p *= 2
    return p


def out_shape(splits: int, mp: int, n: int, dtype):
    """The kernels' output [splits, Mp, N/8, 8]: column 8c + j at [.., c, j], so no reordering is left;
    float32 partial sums when K is split, else the activation dtype directly."""
    return jax.ShapeDtypeStruct((splits, mp, n // 8, 8), jnp.float32 if splits > 1 else dtype)


def finish(out: jax.Array, m: int, dtype) -> jax.Array:
    """[splits, Mp, N/8, 8] -> [M, N]: the deterministic sum of the K splits (none when there is one)."""
    splits, mp, n8, _ = out.shape
    y = out[0] if splits == 1 else out.sum(axis=0)
    y = y.reshape(mp, 8 * n8)
    return (y if mp == m else y[:m]).astype(dtype)


def split_options(blocks: int, blocks_per_group: int) -> list[int]:
    """K split counts S that leave every split a whole number of groups (and of blocks)."""
    groups = blocks // blocks_per_group
    return [s for s in range(1, groups + 1) if groups % s == 0]
