"""AWQ matrix-vector product in Pallas, for the few rows of a decode step: x [M <= 8, K] @ W (4-bit).

At batch 1 a matmul is memory-bound: the weight is read once and every weight is used once per
row. The dot-based kernel (`awq_kernel.py`) pads M to 16 rows for the tensor cores and rebuilds a
float32 weight tile for them; here there is no dot. Each program owns `bw` int32 word columns (8 * bw
output columns) and one K slice, and walks it one group (G input rows) at a time:

    words [G, bw] int32;  for each nibble position j:
        q_j   = float((words >> shift_j) & 0xF)                 [G, bw]  (exact, no conversion op)
        acc_r += s_j * (sum_k x[r, k] * q_j[k, :] - z_j * sum_k x[r, k])     for every row r

The zero point and the scale are constant over a group, so they are applied once per group and
column after the sum over the group's rows, not once per weight: per weight that leaves the unpack
and one multiply-add per row. x comes in transposed ([K, M]) so each row is loaded as a [G, 1]
column that broadcasts against the tile. Outputs are written j-major per program into a float32
[splits, Mp, N] buffer; an XLA epilogue sums the splits and puts the columns back in order (8c + j).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxllm.quantization.awq_kernel import _MAGIC, NUM_SMS, gather_columns, triton_params
from jaxllm.quantization.weights import AWQ_SHIFTS, QuantizedWeight

MAX_ROWS = 8  # above this many rows the multiply-adds per weight outgrow the bytes saved


class AwqGemvConfig(NamedTuple):
    bw: int  # int32 word columns per program (power of two, >= 16)
    splits: int  # K slices, each a whole number of groups; summed by the epilogue
    num_warps: int = 4
    num_stages: int = 3


def supported(m: int, k: int, n: int, group: int) -> bool:
    return 1 <= m <= MAX_ROWS and (n // 8) % 16 == 0 and n % 8 == 0 and k % group == 0 and group % 16 == 0


def default_config(m: int, k: int, n: int, group: int) -> AwqGemvConfig:
    """Enough programs to keep every SM streaming (2-4 per SM), each a whole number of groups."""
    del m
    n8 = n // 8
    bw = 32 if n8 % 32 == 0 else 16
    cols = n8 // bw
    groups = k // group
    splits = 1
    for s in range(1, groups + 1):
        if groups % s == 0 and cols * s <= 4 * NUM_SMS:
            splits = s
    return AwqGemvConfig(bw=bw, splits=splits)


def _rows_pow2(m: int) -> int:
    p = 1
    while p < m:
        p *= 2
    return p


def _kernel(xt_ref, qw_ref, qz_ref, s_ref, o_ref, *, group, steps, rows):
    """xt_ref [Ks, Mp], qw_ref [Ks, bw], qz_ref [Ks/G, bw], s_ref [Ks/G, 8, bw], o_ref [Mp, 8 * bw]."""
    bw = qw_ref.shape[1]
    magic = jnp.float32(2.0**23)

    def body(i, accs):
        k0 = pl.multiple_of(i * group, group)
        words = qw_ref[pl.ds(k0, group), :]  # [G, bw]
        zwords = qz_ref[i, :]  # [bw]
        cols = [xt_ref[pl.ds(k0, group), pl.ds(r, 1)].astype(jnp.float32) for r in range(rows)]  # [G, 1] each
        sums = [jnp.sum(c) for c in cols]
        out = []
        for j, shift in enumerate(AWQ_SHIFTS):
            q = lax.bitcast_convert_type((lax.shift_right_logical(words, shift) & 0xF) | _MAGIC, jnp.float32) - magic
            z = lax.bitcast_convert_type((lax.shift_right_logical(zwords, shift) & 0xF) | _MAGIC, jnp.float32) - magic
            s = s_ref[i, j, :].astype(jnp.float32)  # [bw]
            for r in range(rows):
                dot = jnp.sum(cols[r] * q, axis=0)  # [bw]
                out.append(accs[j * rows + r] + s * (dot - z * sums[r]))
        return tuple(out)

    init = tuple(jnp.zeros((bw,), jnp.float32) for _ in range(8 * rows))
    accs = lax.fori_loop(0, steps, body, init)
    for j in range(8):
        for r in range(rows):
            o_ref[r, pl.ds(j * bw, bw)] = accs[j * rows + r]


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def awq_gemv_pallas(
    x: jax.Array, w: QuantizedWeight, config: AwqGemvConfig | None = None, interpret: bool | None = None
) -> jax.Array:
    """x [M, K] (M <= 8; fp16 / bf16 / fp32) @ the AWQ weight [K, N] -> [M, N] in x's dtype."""
    m, k = x.shape
    kw, n = w.shape
    group = w.group_size
    if k != kw:
        raise ValueError(f"awq_gemv_pallas: x has {k} columns, the weight {kw} rows.")
    if not supported(m, k, n, group):
        raise ValueError(f"awq_gemv_pallas: M={m}, K={k}, N={n}, group={group} is not supported "
                         f"(M <= {MAX_ROWS}, N/8 a multiple of 16, K a multiple of the group).")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    cfg = config or default_config(m, k, n, group)
    n8 = n // 8
    if n8 % cfg.bw or (k // group) % cfg.splits:
        raise ValueError(f"awq_gemv_pallas: config {cfg} does not fit K={k}, N={n}, group={group}.")
    mp = _rows_pow2(m)
    xt = jnp.pad(x, ((0, mp - m), (0, 0))).T if mp != m else x.T  # [K, Mp]
    ks = k // cfg.splits
    zrows = ks // group
    partial = pl.pallas_call(
        functools.partial(_kernel, group=group, steps=zrows, rows=m),
        grid=(n8 // cfg.bw, cfg.splits),
        in_specs=[
            pl.BlockSpec((ks, mp), lambda j, s: (s, 0)),
            pl.BlockSpec((ks, cfg.bw), lambda j, s: (s, j)),
            pl.BlockSpec((zrows, cfg.bw), lambda j, s: (s, j)),
            pl.BlockSpec((zrows, 8, cfg.bw), lambda j, s: (s, 0, j)),
        ],
        out_specs=pl.BlockSpec((None, mp, 8 * cfg.bw), lambda j, s: (s, 0, j)),
        out_shape=jax.ShapeDtypeStruct((cfg.splits, mp, n), jnp.float32),
        interpret=interpret,
        **triton_params(cfg, interpret),
    )(xt, w.qweight, w.zeros, w.scales)
    return gather_columns(partial, m, cfg.bw, x.dtype)
