"""AWQ matmul in Pallas (Triton lowering) on the tensor cores, for more rows than `awq_gemv.py` takes.

Same repacked layout and grid as the matrix-vector kernel (`awq_layout.py`; one nibble position j,
`bw` word columns, one K slice per program), plus a row tile of `bm` rows. Per block of PB = 128
input rows (R = 16 word rows):

    words [16, bw] int32;  for each nibble i (input rows b*128 + 16 i .. + 15):
        w_i = (q_i - z) * s                          exact in float32, rounded once to x's dtype
        acc += x[:, b, i, :] [bm, 16] @ w_i [16, bw]  float32 accumulator [bm, bw]

All eight nibbles of a word belong to one output column, so the eight dots accumulate into one
[bm, bw] tile. The program writes its columns (stride 8) straight into the [splits, Mp, N/8, 8]
output, in the activation dtype when K is not split. Triton's dots need 16 rows at least, so x is
padded to a multiple of `bm` >= 16 rows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxllm.quantization import awq_unpack
from jaxllm.quantization.awq_unpack import NUM_SMS
from jaxllm.quantization.weights import QuantizedWeight

PROGRAMS_PER_SM = 6  # programs per SM the K split aims at (the H200 sweep)


class AwqKernelConfig(NamedTuple):
    bm: int  # rows of x per program (power of two, >= 16)
    bw: int  # word columns per program (power of two, >= 16)
    nb: int  # blocks of 128 input rows per loop step
    splits: int  # K slices, each a whole number of groups; summed by a small XLA epilogue
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = False  # load step t + 1's words while step t computes (register double-buffering)


def supported(m: int, k: int, n: int, group: int) -> bool:
    """Whether some configuration fits: N a multiple of 128 and groups of a multiple of 128 rows."""
    del m
    return n % 128 == 0 and k % group == 0 and group % 128 == 0


def valid(cfg: AwqKernelConfig, k: int, n: int, group: int) -> bool:
    blocks, gpb = k // 128, group // 128
    if (n // 8) % cfg.bw or cfg.bm < 16 or cfg.splits not in awq_unpack.split_options(blocks, gpb):
        return False
    return (blocks // cfg.splits) % cfg.nb == 0


def default_config(m: int, k: int, n: int, group: int) -> AwqKernelConfig:
    """A row tile covering M up to 64, 256-byte word rows (bw 64) where N allows, four blocks a step
    (two for 64-row tiles, whose staged tiles would outgrow shared memory), K split until there are
    PROGRAMS_PER_SM programs per SM, the float32 partial sums kept small (the fastest of the H200
    sweep on 4096 x 28672: docs/quantization.md)."""
    bm = min(awq_unpack.rows_pow2(m, 16), 64)
    n8 = n // 8
    bw = next(b for b in (64, 32, 16) if n8 % b == 0)
    programs = (-(-m // bm)) * 8 * (n8 // bw)
    blocks = k // 128
    target = PROGRAMS_PER_SM * NUM_SMS
    cap = max(1, k // (64 * -(-m // bm) * bm))  # float32 partial sums at most 1/8 of the int4 bytes
    choice = None
    for nb in (4, 2, 1) if bm < 64 else (2, 1):  # fewer blocks a step only if too few programs
        options = [s for s in awq_unpack.split_options(blocks, group // 128) if (blocks // s) % nb == 0]
        options = [s for s in options if s <= cap] or options[:1]
        if not options:
            continue
        reach = [s for s in options if programs * s >= target]
        if reach:
            choice = (nb, reach[0])
            break
        choice = choice or (nb, options[-1])  # the target is out of reach: the most blocks a step
    nb, splits = choice
    return AwqKernelConfig(bm=bm, bw=bw, nb=nb, splits=splits, num_warps=4 if bm <= 32 else 8)


def _kernel(x_ref, qw_ref, z_ref, s_ref, o_ref, *, nb, gpb, prefetch):
    """x_ref [bm, Bs, 8, 16], qw_ref [Bs, 16, bw], z_ref/s_ref [Bs / gpb, bw], o_ref [bm, bw]."""
    bm = x_ref.shape[0]
    bs, _, bw = qw_ref.shape
    steps = bs // nb
    j = pl.program_id(2)
    wdtype = x_ref.dtype

    def load(t):
        tiles = []
        for bb in range(nb):
            b = t * nb + bb
            g = b // gpb if gpb > 1 else b
            tiles.append((qw_ref[b, :, :], s_ref[pl.ds(g, 1), :], z_ref[pl.ds(g, 1), :]))  # [16, bw], [1, bw]
        return tuple(tiles)

    def step(t, tiles, acc):
        for bb, (words, s, zw) in enumerate(tiles):
            b = t * nb + bb
            consts = awq_unpack.group_constants(s, awq_unpack.zero_nibble(zw, j))
            for i, w in awq_unpack.nibbles(words, consts):
                xi = x_ref[:, b, i, :]  # [bm, 16]
                acc = acc + jnp.dot(xi, w.astype(wdtype), preferred_element_type=jnp.float32)
        return acc

    init = jnp.zeros((bm, bw), jnp.float32)
    if steps == 1:
        acc = step(0, load(0), init)
    elif prefetch:
        def body(t, carry):
            tiles, acc = carry
            nxt = load(jnp.minimum(t + 1, steps - 1))  # issued before this step's arithmetic
            return nxt, step(t, tiles, acc)

        _, acc = lax.fori_loop(0, steps, body, (load(0), init))
    else:
        acc = lax.fori_loop(0, steps, lambda t, acc: step(t, load(t), acc), init)
    o_ref[...] = acc.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def awq_matmul_pallas(
    x: jax.Array, w: QuantizedWeight, config: AwqKernelConfig | None = None, interpret: bool | None = None
) -> jax.Array:
    """x [M, K] (fp16 / bf16) @ the AWQ weight [K, N] -> [M, N] in x's dtype."""
    m, k = x.shape
    kw, n = w.shape
    group = w.group_size
    if k != kw:
        raise ValueError(f"awq_matmul_pallas: x has {k} columns, the weight {kw} rows.")
    if not supported(m, k, n, group):
        raise ValueError(f"awq_matmul_pallas: K={k}, N={n}, group={group} is not supported "
                         "(N a multiple of 128, the group size a multiple of 128).")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    cfg = config or default_config(m, k, n, group)
    if not valid(cfg, k, n, group):
        raise ValueError(f"awq_matmul_pallas: config {cfg} does not fit K={k}, N={n}, group={group}.")
    n8, gpb = n // 8, group // 128
    mp = -(-m // cfg.bm) * cfg.bm
    xp = jnp.pad(x, ((0, mp - m), (0, 0))) if mp != m else x
    bs = k // 128 // cfg.splits
    gs = bs // gpb
    out = pl.pallas_call(
        functools.partial(_kernel, nb=cfg.nb, gpb=gpb, prefetch=cfg.prefetch),
        grid=(mp // cfg.bm, n8 // cfg.bw, 8, cfg.splits),
        in_specs=[
            pl.BlockSpec((cfg.bm, bs, 8, 16), lambda i, c, j, s: (i, s, 0, 0)),
            pl.BlockSpec((bs, None, 16, cfg.bw), lambda i, c, j, s: (s, j, 0, c)),
            pl.BlockSpec((gs, cfg.bw), lambda i, c, j, s: (s, c)),
            pl.BlockSpec((gs, None, cfg.bw), lambda i, c, j, s: (s, j, c)),
        ],
        out_specs=pl.BlockSpec((None, cfg.bm, cfg.bw, None), lambda i, c, j, s: (s, i, c, j)),
        out_shape=awq_unpack.out_shape(cfg.splits, mp, n, x.dtype),
        interpret=interpret,
        **awq_unpack.triton_params(cfg.num_warps, cfg.num_stages, interpret),
    )(xp.reshape(mp, k // 128, 8, 16), w.qweight.reshape(k // 128, 8, 16, n8), w.zeros, w.scales)
    return awq_unpack.finish(out, m, x.dtype)
