"""AWQ matrix-vector product in Pallas (Triton lowering), for the few rows of a decode step.

At batch 1 a matmul is memory-bound: every 4-bit weight is read once and used once per row, so the
kernel must stream the packed words at close to the copy bandwidth and spend only a few instructions
per weight. On the repacked layout (`awq_layout.py`, seen as [K/PB, 8, R, N/8]) each program owns one
nibble position j, `bw` word columns c (output columns 8c + j) and one K slice (split-K), and walks
the slice `nb` blocks of PB input rows per loop step:

    words [nb, R, bw] int32                      nb * R * bw * 4 contiguous-row bytes per step
    for each nibble i (input rows b*PB + i*R + r):
        w_i = (q_i - z) * s                      exact float32, ~2 instructions (awq_unpack.py)
        acc[row] += x[row, b, i, :, None] * w_i  [nb, R, bw] float32 accumulators, elementwise

All eight nibbles of a word belong to the same output column, so they feed the same accumulator,
and the loop has no reduction across threads: the [nb, R, bw] accumulators are summed once, after
the loop. Triton does not software-pipeline a loop without a dot, so the loads in flight are one
step's (nb blocks) per resident program, plus the next step's with `prefetch` (held in registers,
which bounds how many programs fit an SM). The program writes its bw columns (stride 8) straight into
the [splits, M, N/8, 8] output, in the activation dtype when K is not split.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxllm.quantization import awq_unpack
from jaxllm.quantization.awq_layout import pack_block
from jaxllm.quantization.awq_unpack import NUM_SMS
from jaxllm.quantization.weights import QuantizedWeight

PROGRAMS_PER_SM = 4  # programs per SM the K split aims at (the H200 sweep)
MAX_ROWS = 8  # above this many rows the multiply-adds per weight outgrow the bytes saved


class AwqGemvConfig(NamedTuple):
    bw: int  # word columns per program (power of two, >= 16)
    nb: int  # blocks of PB input rows per loop step
    splits: int  # K slices, each a whole number of groups; summed by a small XLA epilogue
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = False  # load step t + 1's words while step t computes (register double-buffering)


def supported(m: int, k: int, n: int, group: int) -> bool:
    return 1 <= m <= MAX_ROWS and n % 128 == 0 and k % group == 0 and group % 8 == 0 and pack_block(group) >= 32


def valid(cfg: AwqGemvConfig, k: int, n: int, group: int) -> bool:
    pb = pack_block(group)
    blocks, gpb = k // pb, group // pb
    if (n // 8) % cfg.bw or cfg.splits not in awq_unpack.split_options(blocks, gpb):
        return False
    per_split = blocks // cfg.splits
    return per_split % cfg.nb == 0 and (gpb == 1 or gpb % cfg.nb == 0)


def default_config(m: int, k: int, n: int, group: int) -> AwqGemvConfig:
    """128-byte rows (bw 32) where N allows, four blocks a step, K split until there are at least
    PROGRAMS_PER_SM programs per SM, the float32 partial sums kept small (the fastest of the H200
    sweep on 4096 x 28672: docs/quantization.md)."""
    pb = pack_block(group)
    n8 = n // 8
    bw = 32 if n8 % 32 == 0 else 16
    programs = 8 * n8 // bw
    blocks, gpb = k // pb, group // pb
    target = PROGRAMS_PER_SM * NUM_SMS
    cap = max(1, k // (64 * awq_unpack.rows_pow2(m)))  # float32 partial sums at most 1/8 of the int4 bytes
    choice = None
    for nb in (4, 2, 1):  # four blocks a step unless that leaves too few programs
        options = [s for s in awq_unpack.split_options(blocks, gpb)
                   if (blocks // s) % nb == 0 and (gpb == 1 or gpb % nb == 0)]
        options = [s for s in options if s <= cap] or options[:1]
        if not options:
            continue
        reach = [s for s in options if programs * s >= target]
        if reach:
            choice = (nb, reach[0])
            break
        choice = choice or (nb, options[-1])  # the target is out of reach: the most blocks a step
    nb, splits = choice
    return AwqGemvConfig(bw=bw, nb=nb, splits=splits)


def _kernel(x_ref, qw_ref, z_ref, s_ref, o_ref, *, nb, rows, gpb, prefetch):
    """x_ref [Mp, Bs, 8, R], qw_ref [Bs, R, bw], z_ref/s_ref [Bs / gpb, bw], o_ref [Mp, bw]."""
    bs, r, bw = qw_ref.shape
    steps = bs // nb
    j = pl.program_id(1)

    def first(t):  # the first block of step t (a Python int when there is one step)
        return t * nb if isinstance(t, int) else pl.multiple_of(t * nb, nb)

    def load(t):
        b0 = first(t)
        words = qw_ref[pl.ds(b0, nb), :, :]  # [nb, R, bw]
        if gpb == 1:
            return words, s_ref[pl.ds(b0, nb), :], z_ref[pl.ds(b0, nb), :]  # [nb, bw]
        g = b0 // gpb  # the nb blocks lie in one group
        return words, s_ref[pl.ds(g, 1), :], z_ref[pl.ds(g, 1), :]  # [1, bw]

    def step(t, tile, accs):
        words, s, zw = tile
        b0 = first(t)
        consts = tuple(c[:, None, :] for c in awq_unpack.group_constants(s, awq_unpack.zero_nibble(zw, j)))
        accs = list(accs)
        for i, w in awq_unpack.nibbles(words, consts):
            for row in range(rows):
                xi = x_ref[row, pl.ds(b0, nb), i, :].astype(jnp.float32)  # [nb, R]
                accs[row] = accs[row] + xi[:, :, None] * w
        return tuple(accs)

    init = tuple(jnp.zeros((nb, r, bw), jnp.float32) for _ in range(rows))
    if steps == 1:
        accs = step(0, load(0), init)
    elif prefetch:
        def body(t, carry):
            tile, accs = carry
            nxt = load(jnp.minimum(t + 1, steps - 1))  # issued before this step's arithmetic
            return nxt, step(t, tile, accs)

        _, accs = lax.fori_loop(0, steps, body, (load(0), init))
    else:
        accs = lax.fori_loop(0, steps, lambda t, accs: step(t, load(t), accs), init)
    for row in range(rows):
        o_ref[row, :] = jnp.sum(jnp.sum(accs[row], axis=0), axis=0).astype(o_ref.dtype)


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
                         f"(M <= {MAX_ROWS}, N a multiple of 128, a group size with gcd(G, 128) >= 32).")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    cfg = config or default_config(m, k, n, group)
    if not valid(cfg, k, n, group):
        raise ValueError(f"awq_gemv_pallas: config {cfg} does not fit K={k}, N={n}, group={group}.")
    pb = pack_block(group)
    r, n8, gpb = pb // 8, n // 8, group // pb
    mp = awq_unpack.rows_pow2(m)
    xp = jnp.pad(x, ((0, mp - m), (0, 0))) if mp != m else x
    bs = k // pb // cfg.splits
    gs = bs // gpb
    out = pl.pallas_call(
        functools.partial(_kernel, nb=cfg.nb, rows=m, gpb=gpb, prefetch=cfg.prefetch),
        grid=(n8 // cfg.bw, 8, cfg.splits),
        in_specs=[
            pl.BlockSpec((mp, bs, 8, r), lambda c, j, s: (0, s, 0, 0)),
            pl.BlockSpec((bs, None, r, cfg.bw), lambda c, j, s: (s, j, 0, c)),
            pl.BlockSpec((gs, cfg.bw), lambda c, j, s: (s, c)),
            pl.BlockSpec((gs, None, cfg.bw), lambda c, j, s: (s, j, c)),
        ],
        out_specs=pl.BlockSpec((None, mp, cfg.bw, None), lambda c, j, s: (s, 0, c, j)),
        out_shape=awq_unpack.out_shape(cfg.splits, mp, n, x.dtype),
        interpret=interpret,
        **awq_unpack.triton_params(cfg.num_warps, cfg.num_stages, interpret),
    )(xp.reshape(mp, k // pb, 8, r), w.qweight.reshape(k // pb, 8, r, n8), w.zeros, w.scales)
    return awq_unpack.finish(out, m, x.dtype)
