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

Kernel design (written for the Pallas Triton lowering, also runs in interpret
mode on CPU):

* grid = (B, K, k_splits): one program per (sequence, kv head, slice of the
  block table); programs past a sequence's length exit at once.
* the G = N // K query heads sharing a kv head are processed together as the
  rows of one matrix of ``max(16, next_pow2(G))`` rows (a Triton dot needs at
  least 16): row r is query head ``k * G + r % G``, loaded straight from q (no
  padded copy), and only the G real rows are written back.
* the per-head pool is viewed as ``[P * S, H]`` token rows; a compute block of
  ``pages_per_compute_block * S`` tokens is gathered as ONE 2-D tile of rows
  ``block_table[page] * S + offset`` with masked loads (slots past the length are
  not read). A 2-D tile feeds both dots directly, so Triton's software pipeliner
  streams K and V through shared memory with ``cp.async`` (``num_stages``
  deep); the earlier 3-D ``[pages, S, H]`` page gather (``token_rows=False``)
  left V in registers and ran at about 55% of the bandwidth (H200, 2026-11-21).
* every program keeps an online softmax (output, running max m, running sum l)
  in float32 and base 2; with k_splits > 1 the partial states are merged by a
  second small Pallas kernel (or XLA ops), otherwise the kernel writes the
  normalised output itself.
* launch parameters per shape class come from :func:`default_config`
  (measured on an H200; see ``docs/benchmarks.md``).

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

try:  # Triton-specific compiler parameters (num_warps / num_stages).
    from jax.experimental.pallas import triton as _plgpu

    _TritonCompilerParams = getattr(_plgpu, "CompilerParams", None)
except ImportError:  # pragma: no cover - depends on the installed jax
    _TritonCompilerParams = None

from pallas_kernels.paged_attention_reference import paged_attention_reference

__all__ = ["default_config", "paged_attention", "paged_attention_reference", "write_to_kv_pages"]

# Initial running max: finite so that empty splits / padding rows merge without NaN.
_M_INIT = -1e30
_LOG2E = 1.4426950408889634
# Grid sizes the block table is split towards (an H200 has 132 SMs): about one program per
# SM for the deep-pipeline configuration, about four per SM for the short-block one.
_PROGRAMS_PER_WAVE_DEEP = 128
_PROGRAMS_PER_WAVE = 512


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _compact_rows(x, group: int):
    """[Gp, ...] with row r a copy of row r % group  ->  [group, ...] (rows 0..group-1).

    Triton cannot slice a register tile, so the copies are folded away with a reshape
    and an exact masked sum (every copy but the first contributes 0).
    """
    block_g = x.shape[0]
    if block_g == group:
        return x
    copies = block_g // group
    x = x.reshape(copies, group, *x.shape[1:])
    first = lax.broadcasted_iota(jnp.int32, x.shape, 0) == 0
    return jnp.where(first, x, 0).sum(axis=0)


def _decode_kernel(
    lengths_ref,  # [1]
    block_table_ref,  # [W]
    q_ref,  # [N, H]
    k_ref,  # one kv head's pool, [P * S, H] (token_rows) or [P, S, H]; interpret: all heads [K, ...]
    v_ref,  # same as k_ref
    *refs,  # ([N] alibi slopes,) then o [Go, H] (+ m [Go], l [Go] with split outputs)
    scale_log2: float,
    group: int,
    block_g: int,
    pages_per_compute_block: int,
    pages_per_split: int,
    use_alibi: bool,
    precision,
    whole_pool: bool,
    split_outputs: bool,
    compact: bool,
    page_size: int,
    token_rows: bool,
):
    """One (sequence b, kv head k, split) program.

    The ``block_g`` (>= 16, a power of two) query rows are the ``group`` query heads of kv
    head k repeated (row r is head ``k * group + r % group``), so no padded copy of q is
    needed; with ``compact`` the outputs keep only the first ``group`` rows.
    Logits are kept in base 2 (``scale_log2`` includes log2(e)), so m is a base-2 max.

    With ``token_rows`` the pool refs are viewed as ``[P * S, H]`` token rows and a compute
    block is gathered as one 2-D ``[block_k, H]`` tile of slot rows (``page * S + offset``);
    otherwise the refs are ``[P, S, H]`` and whole pages are gathered as ``[ppcb, S, H]``.
    """
    if use_alibi:
        slopes_ref, *out_refs = refs
    else:
        slopes_ref, out_refs = None, list(refs)
    head_dim = q_ref.shape[-1]
    width = block_table_ref.shape[0]
    ppcb = pages_per_compute_block
    block_k = ppcb * page_size

    head = pl.program_id(1)
    split = pl.program_id(2)
    length = lengths_ref[0]
    first_page = split * pages_per_split
    # Pages of this split that hold at least one valid token.
    valid_pages = jnp.clip(pl.cdiv(length, page_size) - first_page, 0, pages_per_split)
    num_blocks = pl.cdiv(valid_pages, ppcb)

    rows = head * group + lax.rem(jnp.arange(block_g, dtype=jnp.int32), group)  # [Gp]
    q = q_ref[rows].astype(k_ref.dtype)  # [Gp, H]
    if use_alibi:
        slopes = slopes_ref[rows].astype(jnp.float32) * _LOG2E  # [Gp]
    kv_dtype = k_ref.dtype

    def page_ids(i):
        # Clamped to the table: entries past the table (or past the length) are masked below.
        if token_rows:  # slot row of every token of the block
            t = jnp.arange(block_k, dtype=jnp.int32)
            idx = first_page + i * ppcb + t // page_size
            pages = block_table_ref[jnp.minimum(idx, width - 1)]  # [block_k]
            return pages * page_size + t % page_size  # [block_k]
        idx = first_page + i * ppcb + jnp.arange(ppcb, dtype=jnp.int32)
        return block_table_ref[jnp.minimum(idx, width - 1)]  # [ppcb]

    def positions(i):
        return (first_page + i * ppcb) * page_size + jnp.arange(block_k, dtype=jnp.int32)  # [block_k]

    def load_kv(ids, valid):
        # Masked loads: slots past the length are neither read nor trusted (they may hold NaN).
        if token_rows:
            mask = jnp.broadcast_to(valid[:, None], (block_k, head_dim))
        else:
            mask = jnp.broadcast_to(valid.reshape(ppcb, page_size, 1), (ppcb, page_size, head_dim))
        if whole_pool:
            # Interpret mode: refs are the whole [K, P, S, H] pool, index the head here. The
            # interpreter has no masked gather, so load and then select (same values).
            k = jnp.where(mask, k_ref[head, ids], 0)
            v = jnp.where(mask, v_ref[head, ids], 0)
        else:
            k = _plgpu.load(k_ref.at[ids], mask=mask, other=0)
            v = _plgpu.load(v_ref.at[ids], mask=mask, other=0)
        return k.reshape(block_k, head_dim), v.reshape(block_k, head_dim)

    def update(carry, k, v, pos):
        o_prev, m_prev, l_prev = carry
        valid = pos < length  # [block_k]
        s = lax.dot_general(
            q, k, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
        )  # [Gp, block_k]
        s = s * scale_log2
        if use_alibi:
            rel = (pos - (length - 1)).astype(jnp.float32)  # key_pos - query_pos
            s = s + slopes[:, None] * rel[None, :]
        s = jnp.where(valid[None, :], s, -jnp.inf)
        m_next = jnp.maximum(m_prev, s.max(axis=-1))  # [Gp]
        correction = jnp.exp2(m_prev - m_next)  # [Gp]
        p = jnp.exp2(s - m_next[:, None])  # [Gp, block_k]
        l_next = correction * l_prev + p.sum(axis=-1)
        pv = jnp.dot(p.astype(kv_dtype), v, precision=precision, preferred_element_type=jnp.float32)
        return correction[:, None] * o_prev + pv, m_next, l_next

    init = (
        jnp.zeros((block_g, head_dim), jnp.float32),
        jnp.full((block_g,), _M_INIT, jnp.float32),
        jnp.zeros((block_g,), jnp.float32),
    )

    def body(i, carry):
        pos = positions(i)
        k, v = load_kv(page_ids(i), pos < length)
        return update(carry, k, v, pos)

    o, m, l = lax.fori_loop(0, num_blocks, body, init)

    fold = (lambda x: _compact_rows(x, group)) if compact else (lambda x: x)
    if split_outputs:
        o_ref, m_ref, l_ref = out_refs
        o_ref[...] = fold(o)
        m_ref[...] = fold(m)
        l_ref[...] = fold(l)
    else:
        (o_ref,) = out_refs
        out = o / jnp.where(l > 0, l, 1.0)[:, None]
        o_ref[...] = fold(out).astype(o_ref.dtype)


def _combine_kernel(o_ref, m_ref, l_ref, out_ref):
    """Merge the split partial states of one (sequence, query head): o [KS, H], m/l [KS]."""
    m = m_ref[...]
    m_max = m.max(axis=0)
    alpha = jnp.exp2(m - m_max)  # [KS]
    l_sum = (l_ref[...] * alpha).sum(axis=0)
    o_sum = (o_ref[...] * alpha[:, None]).sum(axis=0)  # [H]
    out_ref[...] = (o_sum / jnp.where(l_sum > 0, l_sum, 1.0)).astype(out_ref.dtype)


def _combine_splits(o, m, l, *, G: int, dtype, interpret: bool):
    """o [B, K, KS, Go, H], m/l [B, K, KS, Go] (KS a power of two) -> [B, K, G, H] in dtype."""
    B, K, KS, _, H = o.shape
    compiler_params = None
    if not interpret and jax.default_backend() != "tpu":
        compiler_params = _TritonCompilerParams(num_warps=4, num_stages=1)
    return pl.pallas_call(
        _combine_kernel,
        grid=(B, K, G),
        in_specs=[
            pl.BlockSpec((None, None, KS, None, H), lambda b, k, g: (b, k, 0, g, 0)),
            pl.BlockSpec((None, None, KS, None), lambda b, k, g: (b, k, 0, g)),
            pl.BlockSpec((None, None, KS, None), lambda b, k, g: (b, k, 0, g)),
        ],
        out_specs=pl.BlockSpec((None, None, None, H), lambda b, k, g: (b, k, g, 0)),
        out_shape=jax.ShapeDtypeStruct((B, K, G, H), dtype),
        interpret=interpret,
        compiler_params=compiler_params,
        name="paged_attention_combine",
    )(o, m, l)


def default_config(
    batch: int, num_kv_heads: int, width: int, page_size: int, head_dim: int = 128, itemsize: int = 2
) -> dict:
    """Launch parameters of the GPU kernel for one shape class (measured on an H200).

    Two regimes, both sized by the bytes of one compute block (K + V tiles):

    * long slices (>= 4096 tokens per program once the grid has ~one program per SM):
      128-token blocks (64 KiB of K+V at d=128 bf16) and a 5-stage pipeline, about one
      program per SM (the smem of the pipeline allows no more);
    * otherwise 64-token blocks with 3 stages (~5 programs per SM), and the block table
      split until the grid has ~512 programs (one wave), keeping >= 2 blocks per split.

    Returns ``pages_per_compute_block``, ``k_splits``, ``num_warps``, ``num_stages`` and
    ``token_rows`` for ``batch`` sequences whose block tables have ``width`` pages.
    """
    # Token counts below are for d=128 bf16 (256 bytes per token and head); other head
    # sizes / dtypes keep the same bytes.
    bytes_per_token = head_dim * itemsize

    def tokens(n):
        return max(16, _next_pow2(max(1, n * 256 // bytes_per_token)))

    def ppcb_for(n):
        return max(1, min(tokens(n) // page_size, _next_pow2(width)))

    programs = batch * num_kv_heads
    k_splits = 1
    while programs * k_splits < _PROGRAMS_PER_WAVE_DEEP and width >= 2 * k_splits:
        k_splits *= 2
    if pl.cdiv(width, k_splits) * page_size >= tokens(4096):
        ppcb = ppcb_for(128)
        return {
            "pages_per_compute_block": ppcb,
            "k_splits": k_splits,
            "num_warps": 4,
            "num_stages": 5,
            "token_rows": True,
        }
    ppcb = ppcb_for(64)
    k_splits = 1
    while programs * k_splits < _PROGRAMS_PER_WAVE and pl.cdiv(width, 2 * k_splits) >= 2 * ppcb:
        k_splits *= 2
    return {
        "pages_per_compute_block": ppcb,
        "k_splits": k_splits,
        "num_warps": 4,
        "num_stages": 3,
        "token_rows": True,
    }


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
    pages_per_compute_block=None,
    k_splits=None,
    num_warps=None,
    num_stages=None,
    token_rows=None,
    compact=None,
    combine=None,
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

    defaults = default_config(B, K, W, S, H, jnp.dtype(k_pages.dtype).itemsize)
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
    precision = lax.Precision.HIGHEST if k_pages.dtype == jnp.float32 else None
    kernel = functools.partial(
        _decode_kernel,
        scale_log2=float(scale) * _LOG2E,
        group=G,
        block_g=block_g,
        pages_per_compute_block=pages_per_compute_block,
        pages_per_split=pages_per_split,
        use_alibi=alibi_slopes is not None,
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


def write_to_kv_pages(k_pages, v_pages, k, v, slot_mapping):
    """Scatter new K/V tokens into the paged pool.

    ::

        k_pages, v_pages [K, P, S, H]  viewed as  [K, P*S, H]
        slot = page_id * S + offset          k, v [T, K, H] -> [K, T, H]
        pool[:, slot_mapping[t], :] = k[t]   for every token t

    Args:
      k_pages, v_pages: ``[K, P, S, H]`` pools (may be donated by the caller's jit).
      k, v: ``[T, K, H]`` new keys / values.
      slot_mapping: int32 ``[T]`` flat slots ``page_id * S + offset``. Padding tokens point
        into the null page 0 (slots ``0 .. S-1``); writing there is harmless.

    Returns:
      The updated ``(k_pages, v_pages)``.
    """
    K, P, S, H = k_pages.shape
    slots = slot_mapping.astype(jnp.int32)  # [T]

    def scatter(pages, new):
        flat = pages.reshape(K, P * S, H)  # [K, P*S, H]
        new = jnp.swapaxes(new, 0, 1).astype(pages.dtype)  # [K, T, H]
        return flat.at[:, slots].set(new, mode="promise_in_bounds").reshape(K, P, S, H)

    return scatter(k_pages, k), scatter(v_pages, v)
