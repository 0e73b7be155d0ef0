"""The device layout of an AWQ weight: 4-bit values repacked K-major at load time, for the kernels.

AutoAWQ packs eight neighbouring *output columns* of one input row into an int32 word. The kernels
want the eight nibbles of a word to belong to one output column (then all eight feed the same
accumulator), so at load time every block of PB = gcd(G, 128) input rows is repacked. With
R = PB / 8, word column c (output columns 8c .. 8c + 7, as in the checkpoint) and j = 0..7:

    qweight int32 [K, N/8]:   word (b*PB + j*R + r, c), nibble i (bits 4i .. 4i + 3, unsigned)
                              = q[b*PB + i*R + r, 8c + j]

    rows of one block b, one word column c:      nibble i of those words -> input rows
        j = 0:  r = 0 .. R-1   (R words)          i*R + r  of output column 8c + 0
        j = 1:  r = 0 .. R-1                      i*R + r  of output column 8c + 1
        ...
        j = 7                                     i*R + r  of output column 8c + 7

    zeros   int32 [K/G, N/8]   nibble j (bits 4j) is the zero point of output column 8c + j
    scales  [K/G, 8, N/8]      scales[g, j, c] is the scale of output column 8c + j
    W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]

Seen as [K/PB, 8, R, N/8] (a free reshape), qweight[b, j] is the [R, N/8] tile of words whose
nibbles are column 8c + j of block b: a kernel program that owns one j and a range of c streams
R-row tiles of contiguous words and unpacks each nibble into the same [R, c] accumulator.

The repacking stays inside blocks of PB input rows and inside word column c, so the shapes and the
meaning of each axis are the checkpoint's: splitting K into whole blocks (row-parallel tensor
parallelism), splitting or repeating word columns (column-parallel, kv heads) work as before.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

PACK_ROWS = 128  # the largest repacking block


def pack_block(group: int) -> int:
    """PB, the input rows a repacking block spans: gcd(G, 128) (G is a multiple of 8)."""
    if group % 8:
        raise ValueError(f"AWQ group size {group} is not a multiple of 8.")
    return math.gcd(group, PACK_ROWS)


def pack_weight(q: np.ndarray, group: int) -> np.ndarray:
    """uint [K, N] values 0..15 -> int32 [K, N/8] in the layout above."""
    k, n = q.shape
    pb = pack_block(group)
    r = pb // 8
    v = np.asarray(q, np.uint32).reshape(k // pb, 8, r, n // 8, 8)  # [b, i, r, c, j]
    v = v.transpose(0, 4, 2, 3, 1)  # [b, j, r, c, i]
    shifts = (4 * np.arange(8, dtype=np.uint32))
    words = np.bitwise_or.reduce(v << shifts, axis=-1)
    return np.ascontiguousarray(words.reshape(k, n // 8)).view(np.int32)


def pack_zeros(z: np.ndarray) -> np.ndarray:
    """uint [K/G, N] zero points 0..15 -> int32 [K/G, N/8], nibble j = column 8c + j."""
    rows, n = z.shape
    v = np.asarray(z, np.uint32).reshape(rows, n // 8, 8)
    words = np.bitwise_or.reduce(v << (4 * np.arange(8, dtype=np.uint32)), axis=-1)
    return np.ascontiguousarray(words).view(np.int32)


def unpack_weight(qweight: jax.Array, group: int) -> jax.Array:
    """int32 [K, N/8] -> int32 [K, N] values 0..15 (traceable; the inverse of `pack_weight`)."""
    k, n8 = qweight.shape
    pb = pack_block(group)
    r = pb // 8
    shifts = 4 * jnp.arange(8, dtype=jnp.int32)
    v = jnp.right_shift(qweight[..., None], shifts) & 0xF  # [K, N8, i]
    v = v.reshape(k // pb, 8, r, n8, 8)  # [b, j, r, c, i]
    return v.transpose(0, 4, 2, 3, 1).reshape(k, 8 * n8)


def unpack_zeros(zeros: jax.Array) -> jax.Array:
    """int32 [K/G, N/8] -> int32 [K/G, N]."""
    shifts = 4 * jnp.arange(8, dtype=jnp.int32)
    v = jnp.right_shift(zeros[..., None], shifts) & 0xF
    return v.reshape(zeros.shape[0], -1)


def dense_scales(scales: jax.Array) -> jax.Array:
    """[K/G, 8, N/8] (j-major) -> [K/G, N] in column order."""
    return jnp.swapaxes(scales, 1, 2).reshape(scales.shape[0], -1)


def dequantize(qweight, zeros, scales, group: int, dtype) -> jax.Array:
    """Dense [K, N] in `dtype`: (q - z) * s computed exactly in float32, rounded once to `dtype`."""
    q = unpack_weight(qweight, group)
    k, n = q.shape
    z = unpack_zeros(zeros)[:, None]  # [K/G, 1, N]
    s = dense_scales(scales)[:, None].astype(jnp.float32)
    w = (q.reshape(k // group, group, n) - z).astype(jnp.float32) * s
    return w.astype(dtype).reshape(k, n)
