"""AWQ matmul in Pallas (Triton lowering): x [M, K] @ W with W read as packed 4-bit words.

Each program owns `bm` rows of x, `bw` word columns of W (8 * bw output columns) and one slice of K
(split-K). Per step of `bk` input rows (bk divides the group size, so one step sees one group):

    words  [bk, bw] int32     -> for each nibble position j (output columns 8c + j):
        w_j = ((words >> shift_j) & 0xF - z_j) * s_j          [bk, bw] float32 (exact)
        acc_j += x_tile [bm, bk] @ w_j                        float32 accumulators, 8 of [bm, bw]

so the 4-bit weights are unpacked in registers and never written back. Each program stores its 8
accumulators side by side (j-major) into its 8 * bw columns of a float32 [splits, Mp, N] buffer (rows
past M masked off); a small XLA epilogue sums the K splits and puts the columns back in order
(column 8c + j), fused with the cast.
Triton needs dot dims of at least 16, so x is padded to a multiple of `bm` >= 16 rows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxllm.quantization.weights import AWQ_SHIFTS, QuantizedWeight

try:  # Triton-specific compiler parameters and masked stores.
    from jax.experimental.pallas import triton as _plgpu

    _TritonCompilerParams = getattr(_plgpu, "CompilerParams", None)
except ImportError:  # pragma: no cover - depends on the installed jax
    _plgpu = None
    _TritonCompilerParams = None

NUM_SMS = 132  # H200; only used to size the split-K grid


class AwqKernelConfig(NamedTuple):
    bm: int  # rows of x per program (power of two, >= 16)
    bw: int  # int32 word columns per program (8 * bw output columns; power of two, >= 16)
    bk: int  # input rows per step (divides the group size; power of two, >= 16)
    splits: int  # K slices (split-K), summed by the epilogue
    num_warps: int = 4
    num_stages: int = 3


def _pow2_at_least(x: int, lo: int) -> int:
    p = lo
    while p < x:
        p *= 2
    return p


def supported(m: int, k: int, n: int, group: int) -> bool:
    """Whether some configuration fits: N/8 a multiple of 16 and a power-of-two step dividing the group."""
    del m
    return (n // 8) % 16 == 0 and k % group == 0 and _step_rows(group) is not None


def _step_rows(group: int) -> int | None:
    for bk in (128, 64, 32, 16):
        if group % bk == 0:
            return bk
    return None


def default_config(m: int, k: int, n: int, group: int) -> AwqKernelConfig:
    """A launch configuration: split K until there are up to two programs per SM (a guess to be tuned
    with scripts/bench_awq_matmul.py --sweep)."""
    n8 = n // 8
    bm = min(_pow2_at_least(m, 16), 64)
    bw = 32 if n8 % 32 == 0 else 16
    bk = _step_rows(group)
    tiles = (-(-m // bm)) * (n8 // bw)
    splits = 1
    while tiles * splits * 2 <= 2 * NUM_SMS and _valid_split(k, group, bk, splits * 2):
        splits *= 2
    return AwqKernelConfig(bm=bm, bw=bw, bk=bk, splits=splits, num_warps=4 if bm <= 32 else 8)


def _valid_split(k: int, group: int, bk: int, splits: int) -> bool:
    if k % splits:
        return False
    ks = k // splits
    return ks % bk == 0 and ks >= bk and (ks % group == 0 or group % ks == 0)


_MAGIC = 0x4B000000  # float32 bits of 2**23: (bits | q) read as float32 is 2**23 + q, exactly


def _kernel(x_ref, qw_ref, qz_ref, s_ref, o_ref, *, bk, group, steps, rows, masked, tf32):
    """x_ref [bm, Ks], qw_ref [Ks, bw], qz_ref/s_ref one row per group of this slice, o_ref [bm, 8 * bw].

    The nibbles become float32 without a conversion instruction (conversions are the slow path on
    the GPU): OR-ing a 4-bit value into the mantissa of 2**23 and reading the bits as float32 gives
    2**23 + q; subtracting 2**23 + z is exact, and so is the product with the (fp16 / bf16) scale. The
    dot then takes the float32 weight tile directly: TF32 inputs (a 10-bit mantissa, finer than bf16's
    7), or full float32 when the model runs in float32.
    """
    bm, bw = x_ref.shape[0], qw_ref.shape[1]
    ks = steps * bk
    precision = None if tf32 else lax.Precision.HIGHEST

    def body(i, accs):
        k0 = pl.multiple_of(i * bk, bk)
        x = x_ref[:, pl.ds(k0, bk)].astype(jnp.float32)
        words = qw_ref[pl.ds(k0, bk), :]
        g = k0 // group if ks >= group else 0
        zwords = qz_ref[pl.ds(g, 1), :]  # [1, bw]
        out = []
        for j, shift in enumerate(AWQ_SHIFTS):
            q = (lax.shift_right_logical(words, shift) & 0xF) | _MAGIC
            z = (lax.shift_right_logical(zwords, shift) & 0xF) | _MAGIC
            s = s_ref[pl.ds(g, 1), j, :].astype(jnp.float32)  # [1, bw]
            w = (lax.bitcast_convert_type(q, jnp.float32) - lax.bitcast_convert_type(z, jnp.float32)) * s
            out.append(accs[j] + jnp.dot(x, w, preferred_element_type=jnp.float32, precision=precision))
        return tuple(out)

    init = tuple(jnp.zeros((bm, bw), jnp.float32) for _ in range(8))
    accs = lax.fori_loop(0, steps, body, init)
    # Nibble position j goes to columns [j * bw, (j + 1) * bw) of this program's 8 * bw output columns.
    if masked:
        row = pl.program_id(0) * bm + lax.broadcasted_iota(jnp.int32, (bm, bw), 0)
        mask = row < rows
        for j in range(8):
            _plgpu.store(o_ref.at[:, pl.ds(j * bw, bw)], accs[j], mask=mask)
    else:
        for j in range(8):
            o_ref[:, pl.ds(j * bw, bw)] = accs[j]


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def awq_matmul_pallas(
    x: jax.Array, w: QuantizedWeight, config: AwqKernelConfig | None = None, interpret: bool | None = None
) -> jax.Array:
    """x [M, K] (fp16 / bf16 / fp32) @ the AWQ weight [K, N] -> [M, N] in x's dtype."""
    m, k = x.shape
    kw, n = w.shape
    if k != kw:
        raise ValueError(f"awq_matmul_pallas: x has {k} columns, the weight {kw} rows.")
    group = w.group_size
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    cfg = config or default_config(m, k, n, group)
    bm, bw, bk, splits = cfg.bm, cfg.bw, cfg.bk, cfg.splits
    n8 = n // 8
    if n8 % bw or group % bk or not _valid_split(k, group, bk, splits):
        raise ValueError(f"awq_matmul_pallas: config {cfg} does not fit K={k}, N={n}, group={group}.")
    mp = -(-m // bm) * bm
    xp = jnp.pad(x, ((0, mp - m), (0, 0))) if mp != m else x
    ks = k // splits
    if ks >= group:
        zrows, zindex = ks // group, (lambda i, j, s: (s, j))
        sindex = lambda i, j, s: (s, 0, j)
    else:  # one group spans several slices
        zrows = 1
        zindex = lambda i, j, s: ((s * ks) // group, j)
        sindex = lambda i, j, s: ((s * ks) // group, 0, j)
    masked = mp != m and _plgpu is not None
    kernel = functools.partial(
        _kernel, bk=bk, group=group, steps=ks // bk, rows=m, masked=masked, tf32=x.dtype != jnp.float32
    )
    partial = pl.pallas_call(
        kernel,
        grid=(mp // bm, n8 // bw, splits),
        in_specs=[
            pl.BlockSpec((bm, ks), lambda i, j, s: (i, s)),
            pl.BlockSpec((ks, bw), lambda i, j, s: (s, j)),
            pl.BlockSpec((zrows, bw), zindex),
            pl.BlockSpec((zrows, 8, bw), sindex),
        ],
        out_specs=pl.BlockSpec((None, bm, 8 * bw), lambda i, j, s: (s, i, j)),
        out_shape=jax.ShapeDtypeStruct((splits, mp, n), jnp.float32),
        interpret=interpret,
        **triton_params(cfg, interpret),
    )(xp, w.qweight, w.zeros, w.scales)
    return gather_columns(partial, m, bw, x.dtype)


def triton_params(cfg, interpret: bool) -> dict:
    """The pallas_call keyword for the launch configuration's warps and stages (none when interpreted)."""
    if interpret or jax.default_backend() == "tpu":
        return {}
    if _TritonCompilerParams is None:  # pragma: no cover
        raise RuntimeError("This jax has no Pallas Triton backend (jax.experimental.pallas.triton).")
    return {"compiler_params": _TritonCompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)}


def gather_columns(partial: jax.Array, m: int, bw: int, dtype) -> jax.Array:
    """Epilogue of both AWQ kernels: sum the K splits of a float32 [splits, Mp, N] buffer whose programs
    wrote their 8 * bw columns nibble-position-major, and put the columns back in order (8c + j)."""
    splits, _, n = partial.shape
    y = partial[:, :m].sum(axis=0) if splits > 1 else partial[0, :m]
    y = jnp.swapaxes(y.reshape(m, n // 8 // bw, 8, bw), 2, 3)
    return y.reshape(m, n).astype(dtype)
