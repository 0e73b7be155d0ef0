"""Paged-attention decode kernel in Pallas (one query token per sequence).

KV pool layout (head-major, shared by every sequence of the batch)::

    k_pages, v_pages : [K, P, S, H]

      kv head 0 --+-- page 0 (null page)  [S token slots x H]
                  +-- page 1              [S token slots x H]
                  +-- ...
                  +-- page P-1
      kv head 1 --+-- page 0 ...
      ...

    block_tables : [B, W]  int32, logical page i of sequence b lives in
                           physical page block_tables[b, i]
    lengths      : [B]     int32, number of valid KV tokens of sequence b

    sequence b, token j  ->  k_pages[:, block_tables[b, j // S], j % S, :]
    flat slot            ->  block_tables[b, j // S] * S + j % S

The Pallas programs (and the kernel design) are in
:mod:`pallas_kernels.paged_attention_kernel`, the launch parameters per shape class in
:mod:`pallas_kernels.paged_attention_config` (:func:`default_config`, measured on an H200;
see ``docs/benchmarks.md``), the K/V page writes in :mod:`pallas_kernels.kv_pages`.

Triton constraints: every loaded tile must have a power-of-two number of
elements and dots need dimensions >= 16, so on GPU S, H and
pages_per_compute_block must be powers of two, H >= 16 and
pages_per_compute_block * S >= 16 (``ValueError`` otherwise). Pools over 4 GiB are
addressed with 64-bit offsets by the lowering.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.kv_pages import write_to_kv_pages
from pallas_kernels.kv_quant import kernel_scales
from pallas_kernels.paged_attention_config import _is_pow2, _next_pow2, default_config
from pallas_kernels.paged_attention_kernel import (
    _LOG2E,
    _combine_splits,
    _decode_kernel,
    _TritonCompilerParams,
)
from pallas_kernels.paged_attention_reference import paged_attention_reference

__all__ = ["default_config", "paged_attention", "paged_attention_reference", "write_to_kv_pages"]


@functools.partial(
    jax.jit,
    static_argnames=(
        "scale",
        "pages_per_compute_block",
        "k_splits",
        "num_warps",
        "num_stages",
        "token_rows",
        "compact",
        "combine",
        "compute_dtype",
        "interpret",
    ),
)
def paged_attention(
    q,
    k_pages,
    v_pages,
    block_tables,
    lengths,
    *,
    alibi_slopes=None,
    scale=None,
    k_scale=None,
    v_scale=None,
    pages_per_compute_block=None,
    k_splits=None,
    num_warps=None,
    num_stages=None,
    token_rows=None,
    compact=None,
    combine=None,
    compute_dtype=None,
    interpret=None,
) -> jax.Array:
    """Decode attention of one query token per sequence over a paged KV pool.

    Pool layout (see the module docstring for the full sketch)::

        k_pages, v_pages [K, P, S, H]           block_tables [B, W]         lengths [B]
        +--------- kv head k ---------+         row b: [7, 2, 9, 0, 0]      row b: 19
        | page 0 | page 1 | ... | P-1 |         (logical page i -> physical page)
        +-----------------------------+
        token j of sequence b -> page block_tables[b, j // S], slot j % S

    Args:
      q: ``[B, N, H]`` query of the current token of each sequence.
      k_pages, v_pages: ``[K, P, S, H]`` pools; N % K == 0 (G = N // K query heads per kv head).
      block_tables: int32 ``[B, W]`` physical page ids, all in ``[0, P)``; entries past a
        sequence's length are ignored (0, the null page, by convention). W is arbitrary.
      lengths: int32 ``[B]`` valid KV tokens per sequence (including the current token).
        A row with length 0 returns zeros.
      alibi_slopes: optional float32 ``[N]``; adds ``slope[n] * (j - (length - 1))`` to the
        logit of key position j.
      scale: logit scale, default ``H ** -0.5``.
      k_scale, v_scale: float8 pools only (``float8_e4m3fn`` / ``float8_e5m2``): the float32
        scalars the pages were divided by when written (default 1.0). Tiles are widened to q's dtype
        in registers; both dots run in q's dtype with float32 accumulation.
      pages_per_compute_block: pages gathered per inner step (a power of two; default from
        :func:`default_config`, clamped to the block-table width).
      k_splits: number of slices of the block table processed in parallel, merged by a small
        XLA epilogue (default: 1 in interpret mode, from :func:`default_config` on GPU).
      num_warps, num_stages: Triton compiler parameters.
      token_rows: gather a compute block as one 2-D tile of token rows of the pool viewed as
        ``[K, P * S, H]`` (instead of a 3-D tile of whole pages).
      compact: write only the G real query rows of each kv head (default: when G is a power
        of two); otherwise the padded rows are written and sliced off in XLA.
      combine: how split partial results are merged: ``"pallas"`` (one small kernel, the
        default) or ``"xla"`` (plain jnp ops).
      compute_dtype: float8 pools only: the dtype the tiles are widened to and both dots take (default
        ``float16``, ``float32`` for float32 queries). ``float16`` widens with one conversion per pair
        of values (e4m3 and e5m2 are exact in it); queries are rounded to it (|q| must stay below
        65504). ``bfloat16`` keeps q's 8-bit mantissa and its range. ``float8_e4m3fn`` (e4m3 pools) widens
        nothing: the queries (scaled per row) and the probabilities are rounded to e4m3 and both dots
        take float8 operands, as FlashAttention-3's float8 path does; less accurate.
      interpret: run the Pallas interpreter; default True when the default backend is CPU.

    Returns:
      ``[B, N, H]`` attention output in ``q.dtype`` (float32 accumulation).
    """
    B, N, H = q.shape
    K, P, S, Hk = k_pages.shape
    W = block_tables.shape[1]
    if v_pages.shape != k_pages.shape:
        raise ValueError(f"k_pages {k_pages.shape} and v_pages {v_pages.shape} differ")
    if Hk != H:
        raise ValueError(f"head dim of q ({H}) and of the pools ({Hk}) differ")
    if N % K:
        raise ValueError(f"number of query heads {N} is not a multiple of kv heads {K}")
    if block_tables.shape[0] != B or lengths.shape != (B,):
        raise ValueError(
            f"batch mismatch: q {q.shape}, block_tables {block_tables.shape}, lengths {lengths.shape}"
        )
    if alibi_slopes is not None and alibi_slopes.shape != (N,):
        raise ValueError(f"alibi_slopes must have shape ({N},), got {alibi_slopes.shape}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    if scale is None:
        scale = H**-0.5
    G = N // K
    block_g = max(16, _next_pow2(G))

    scales = kernel_scales(k_pages, k_scale, v_scale)  # [2] float32, or None
    # float8 pages widen to float16 (exact for both formats, one conversion per pair of values; 8% more
    # output tokens/s than bfloat16 in the 8B 1024/1024 run, docs/benchmarks.md), float32 queries to float32.
    if compute_dtype is not None and scales is None:
        raise ValueError(f"compute_dtype is for float8 pools; these pages are {k_pages.dtype}")
    if compute_dtype is None:
        if scales is None:
            compute_dtype = k_pages.dtype
        else:
            compute_dtype = jnp.float32 if q.dtype == jnp.float32 else jnp.float16
    compute_dtype = jnp.dtype(compute_dtype)
    e4m3 = jnp.dtype(jnp.float8_e4m3fn)
    if compute_dtype not in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), e4m3):
        raise ValueError(f"compute_dtype must be float16, bfloat16, float32 or float8_e4m3fn, got {compute_dtype}")
    if compute_dtype == e4m3 and k_pages.dtype != e4m3:
        raise ValueError(f"float8 dots need float8_e4m3fn pages, got {k_pages.dtype}")
    # The launch table is kept per token of a 2-byte dtype for float8 pages whatever they are computed in.
    defaults = default_config(B, K, W, S, H, max(2, compute_dtype.itemsize), fp8_pages=scales is not None)
    if interpret:
        defaults.update(k_splits=1)
    if k_splits is None:
        k_splits = defaults["k_splits"]
    if pages_per_compute_block is None:
        pages_per_compute_block = defaults["pages_per_compute_block"]
    if token_rows is None:
        token_rows = defaults["token_rows"]
    if combine is None:
        combine = "pallas"
    if combine not in ("pallas", "xla"):
        raise ValueError(f"combine must be 'pallas' or 'xla', got {combine!r}")
    if compact is None:
        compact = _is_pow2(G)
    elif compact and not _is_pow2(G):
        raise ValueError(f"compact outputs need a power-of-two group size, got G={G}")
    k_splits = max(1, int(k_splits))
    pages_per_split = pl.cdiv(W, k_splits)
    pages_per_compute_block = max(1, min(int(pages_per_compute_block), _next_pow2(pages_per_split)))
    if not interpret:
        for name, value in (
            ("S (page size)", S),
            ("H (head dim)", H),
            ("pages_per_compute_block", pages_per_compute_block),
        ):
            if not _is_pow2(value):
                raise ValueError(f"the Triton kernel needs a power-of-two {name}, got {value}")
        if H < 16:
            raise ValueError(f"the Triton kernel needs H >= 16, got {H}")
        while pages_per_compute_block * S < 16:
            pages_per_compute_block *= 2
    pages_per_split = pl.cdiv(pages_per_split, pages_per_compute_block) * pages_per_compute_block
    k_splits = pl.cdiv(W, pages_per_split)  # drop splits that would start past the table
    split_outputs = k_splits > 1
    if split_outputs and combine == "pallas":
        # The combine kernel loads all splits of a row at once: a power-of-two count (the
        # extra splits start past the table and exit at once).
        k_splits = _next_pow2(k_splits)
    g_out = G if compact else block_g

    block_tables = block_tables.astype(jnp.int32)
    lengths = lengths.astype(jnp.int32)
    precision = lax.Precision.HIGHEST if compute_dtype == jnp.float32 else None
    kernel = functools.partial(
        _decode_kernel,
        scale_log2=float(scale) * _LOG2E,
        group=G,
        block_g=block_g,
        pages_per_compute_block=pages_per_compute_block,
        pages_per_split=pages_per_split,
        use_alibi=alibi_slopes is not None,
        use_scales=scales is not None,
        compute_dtype=compute_dtype,
        precision=precision,
        whole_pool=interpret,
        split_outputs=split_outputs,
        compact=compact,
        page_size=S,
        token_rows=bool(token_rows),
    )
    pool_block = (P * S, H) if token_rows else (P, S, H)
    if token_rows:  # free: a row-major view of the same buffer
        k_pages = k_pages.reshape(K, P * S, H)
        v_pages = v_pages.reshape(K, P * S, H)
    if interpret:
        # The interpreter would copy a per-head block of the whole pool for every program; leaving
        # the pool unblocked lets each program gather only the pages it reads.
        pool_spec = pl.BlockSpec(memory_space=pl.ANY)
    else:
        # Under Triton a block is a pointer offset: one kv head's pool, no copy.
        pool_spec = pl.BlockSpec((None, *pool_block), lambda b, h, s: (h,) + (0,) * len(pool_block))
    in_specs = [
        pl.BlockSpec((1,), lambda b, h, s: (b,)),  # lengths
        pl.BlockSpec((None, W), lambda b, h, s: (b, 0)),  # block-table row
        pl.BlockSpec((None, N, H), lambda b, h, s: (b, 0, 0)),  # q row (all heads)
        pool_spec,  # k pool
        pool_spec,  # v pool
    ]
    args = [lengths, block_tables, q, k_pages, v_pages]
    if alibi_slopes is not None:
        in_specs.append(pl.BlockSpec((N,), lambda b, h, s: (0,)))
        args.append(alibi_slopes)
    if scales is not None:
        in_specs.append(pl.BlockSpec((2,), lambda b, h, s: (0,)))
        args.append(scales)
    if split_outputs:
        out_specs = [
            pl.BlockSpec((None, None, None, g_out, H), lambda b, h, s: (b, h, s, 0, 0)),  # o
            pl.BlockSpec((None, None, None, g_out), lambda b, h, s: (b, h, s, 0)),  # m
            pl.BlockSpec((None, None, None, g_out), lambda b, h, s: (b, h, s, 0)),  # l
        ]
        out_shape = [
            jax.ShapeDtypeStruct((B, K, k_splits, g_out, H), jnp.float32),
            jax.ShapeDtypeStruct((B, K, k_splits, g_out), jnp.float32),
            jax.ShapeDtypeStruct((B, K, k_splits, g_out), jnp.float32),
        ]
    else:
        out_specs = [pl.BlockSpec((None, None, g_out, H), lambda b, h, s: (b, h, 0, 0))]
        out_shape = [jax.ShapeDtypeStruct((B, K, g_out, H), q.dtype)]
    compiler_params = None
    if not interpret and jax.default_backend() != "tpu":
        # Explicit Triton parameters select the Triton backend (without them a GPU
        # pallas_call may be routed to Mosaic GPU, which this kernel is not written for).
        if _TritonCompilerParams is None:
            raise RuntimeError("this jax build has no Pallas Triton backend: run with interpret=True")
        compiler_params = _TritonCompilerParams(
            num_warps=defaults["num_warps"] if num_warps is None else num_warps,
            num_stages=defaults["num_stages"] if num_stages is None else num_stages,
        )
    outs = pl.pallas_call(
        kernel,
        grid=(B, K, k_splits),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=compiler_params,
        name=f"paged_attention_g{block_g}_p{pages_per_compute_block}",
    )(*args)

    if split_outputs and combine == "pallas":
        out = _combine_splits(*outs, G=G, dtype=q.dtype, interpret=interpret)
    elif split_outputs:
        # Merge the split-K partial softmax states (m is a base-2 running max).
        o, m, l = outs
        m_max = m.max(axis=2, keepdims=True)  # [B, K, 1, Go]
        alpha = jnp.exp2(m - m_max)  # [B, K, k_splits, Go]
        l_sum = (l * alpha).sum(axis=2)  # [B, K, Go]
        o_sum = (o * alpha[..., None]).sum(axis=2)  # [B, K, Go, H]
        out = o_sum / jnp.where(l_sum > 0, l_sum, 1.0)[..., None]
    else:
        (out,) = outs
    return out[:, :, :G].reshape(B, N, H).astype(q.dtype)  # [B, N, H]
