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
  block table).
* the G = N // K query heads sharing a kv head are processed together as the
  rows of one matrix, padded to ``max(16, next_pow2(G))`` rows because a
  Triton dot needs at least 16 rows.
* the whole per-head pool ``[P, S, H]`` is visible to each program; a compute
  block gathers ``pages_per_compute_block`` pages with a vector of page ids
  taken from the block table (``k_ref[page_ids]``).
* every program keeps an online softmax (output, running max m, running sum l)
  in float32; the k_splits partial results are merged by a small XLA epilogue.

Triton constraints: every loaded tile must have a power-of-two number of
elements and dots need dimensions >= 16, so on GPU S, H and
pages_per_compute_block must be powers of two, H >= 16 and
pages_per_compute_block * S >= 16 (``ValueError`` otherwise). Pointer offsets are
int32, so one pool may hold at most 2**31 - 1 elements.
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

__all__ = ["paged_attention", "paged_attention_reference", "write_to_kv_pages"]

# Initial running max: finite so that empty splits / padding rows merge without NaN.
_M_INIT = -1e30


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _decode_kernel(
    lengths_ref,  # [1]
    block_table_ref,  # [pages_per_split]
    q_ref,  # [Gp, H]
    k_ref,  # [P, S, H]
    v_ref,  # [P, S, H]
    *refs,  # ([Gp] alibi slopes,) then outputs o [Gp, H], m [Gp], l [Gp]
    scale: float,
    pages_per_compute_block: int,
    use_alibi: bool,
    precision,
    whole_pool: bool,
):
    """One (sequence b, kv head k, split) program; Gp = G padded to max(16, next_pow2(G))."""
    if use_alibi:
        slopes_ref, o_ref, m_ref, l_ref = refs
    else:
        slopes_ref = None
        o_ref, m_ref, l_ref = refs
    block_g, head_dim = q_ref.shape
    page_size = k_ref.shape[-2]
    pages_per_split = block_table_ref.shape[0]
    block_k = pages_per_compute_block * page_size

    split = pl.program_id(2)
    head = pl.program_id(1)
    length = lengths_ref[0]
    first_page = split * pages_per_split
    # Pages of this split that hold at least one valid token.
    valid_pages = jnp.clip(pl.cdiv(length, page_size) - first_page, 0, pages_per_split)
    num_blocks = pl.cdiv(valid_pages, pages_per_compute_block)

    q = q_ref[...]  # [Gp, H]
    slopes = slopes_ref[...] if use_alibi else None  # [Gp]

    def body(i, carry):
        o_prev, m_prev, l_prev = carry
        page_ids = block_table_ref[pl.ds(i * pages_per_compute_block, pages_per_compute_block)]
        if whole_pool:  # refs are the whole [K, P, S, H] pool: index the head here
            k = k_ref[head, page_ids].reshape(block_k, head_dim)  # [block_k, H]
            v = v_ref[head, page_ids].reshape(block_k, head_dim)  # [block_k, H]
        else:
            k = k_ref[page_ids].reshape(block_k, head_dim)  # [block_k, H]
            v = v_ref[page_ids].reshape(block_k, head_dim)  # [block_k, H]
        pos = (first_page + i * pages_per_compute_block) * page_size + jnp.arange(block_k)
        valid = pos < length  # [block_k]

        logits = lax.dot_general(
            q, k, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
        )  # [Gp, block_k]
        logits = logits * scale
        if use_alibi:
            rel = (pos - (length - 1)).astype(jnp.float32)  # key_pos - query_pos
            logits = logits + slopes[:, None] * rel[None, :]
        logits = jnp.where(valid[None, :], logits, -jnp.inf)

        m_next = jnp.maximum(m_prev, logits.max(axis=-1))  # [Gp]
        correction = jnp.exp(m_prev - m_next)  # [Gp]
        p = jnp.exp(logits - m_next[:, None])  # [Gp, block_k]
        l_next = correction * l_prev + p.sum(axis=-1)
        # Masked slots may hold anything (even NaN); keep them out of p @ v.
        v = jnp.where(valid[:, None], v, 0)
        pv = jnp.dot(p.astype(v.dtype), v, precision=precision, preferred_element_type=jnp.float32)
        o_next = correction[:, None] * o_prev + pv  # [Gp, H]
        return o_next, m_next, l_next

    o = jnp.zeros((block_g, head_dim), jnp.float32)
    m = jnp.full((block_g,), _M_INIT, jnp.float32)
    l = jnp.zeros((block_g,), jnp.float32)
    o, m, l = lax.fori_loop(0, num_blocks, body, (o, m, l))
    o_ref[...] = o
    m_ref[...] = m
    l_ref[...] = l


def _default_k_splits(batch: int, num_kv_heads: int, num_compute_blocks: int, interpret: bool) -> int:
    if interpret:
        return 1
    # Aim for enough programs to fill the SMs of a large GPU.
    target_programs = 256
    want = pl.cdiv(target_programs, max(1, batch * num_kv_heads))
    return int(max(1, min(16, want, num_compute_blocks)))


@functools.partial(
    jax.jit,
    static_argnames=(
        "scale",
        "pages_per_compute_block",
        "k_splits",
        "num_warps",
        "num_stages",
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
        sequence's length are ignored (0, the null page, by convention).
      lengths: int32 ``[B]`` valid KV tokens per sequence (including the current token).
        A row with length 0 returns zeros.
      alibi_slopes: optional float32 ``[N]``; adds ``slope[n] * (j - (length - 1))`` to the
        logit of key position j.
      scale: logit scale, default ``H ** -0.5``.
      pages_per_compute_block: pages gathered per inner step (default 8, clamped to the
        block-table width; a power of two).
      k_splits: number of slices of the block table processed in parallel (default: 1 in
        interpret mode, chosen from B * K on GPU).
      num_warps, num_stages: Triton compiler parameters (defaults 4 and 2).
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

    if k_splits is None:
        ppcb_guess = pages_per_compute_block or 8
        k_splits = _default_k_splits(B, K, pl.cdiv(W, ppcb_guess), interpret)
    k_splits = max(1, int(k_splits))
    pages_per_split = pl.cdiv(W, k_splits)
    if pages_per_compute_block is None:
        pages_per_compute_block = 8
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
        if K * P * S * H >= 2**31:
            raise ValueError(f"pool {k_pages.shape} too large for the kernel's int32 offsets")
        while pages_per_compute_block * S < 16:
            pages_per_compute_block *= 2
    pages_per_split = pl.cdiv(pages_per_split, pages_per_compute_block) * pages_per_compute_block
    padded_w = pages_per_split * k_splits

    # Pad the block table with null pages (masked out by length).
    block_tables = jnp.pad(block_tables.astype(jnp.int32), ((0, 0), (0, padded_w - W)))  # [B, W']
    lengths = lengths.astype(jnp.int32)
    qg = q.astype(k_pages.dtype).reshape(B, K, G, H)
    qg = jnp.pad(qg, ((0, 0), (0, 0), (0, block_g - G), (0, 0)))  # [B, K, Gp, H]

    precision = lax.Precision.HIGHEST if k_pages.dtype == jnp.float32 else None
    kernel = functools.partial(
        _decode_kernel,
        scale=float(scale),
        pages_per_compute_block=pages_per_compute_block,
        use_alibi=alibi_slopes is not None,
        precision=precision,
        whole_pool=interpret,
    )
    if interpret:
        # The interpreter would copy a per-head block of the whole pool for every program; leaving
        # the pool unblocked lets each program gather only the pages it reads.
        pool_spec = pl.BlockSpec(memory_space=pl.ANY)
    else:
        # Under Triton a block is a pointer offset: one kv head's pool, no copy.
        pool_spec = pl.BlockSpec((None, P, S, H), lambda b, h, s: (h, 0, 0, 0))
    in_specs = [
        pl.BlockSpec((1,), lambda b, h, s: (b,)),  # lengths
        pl.BlockSpec((None, pages_per_split), lambda b, h, s: (b, s)),  # block table
        pl.BlockSpec((None, None, block_g, H), lambda b, h, s: (b, h, 0, 0)),  # q
        pool_spec,  # k pool
        pool_spec,  # v pool
    ]
    args = [lengths, block_tables, qg, k_pages, v_pages]
    if alibi_slopes is not None:
        slopes = alibi_slopes.astype(jnp.float32).reshape(K, G)
        slopes = jnp.pad(slopes, ((0, 0), (0, block_g - G)))  # [K, Gp]
        in_specs.append(pl.BlockSpec((None, block_g), lambda b, h, s: (h, 0)))
        args.append(slopes)
    out_specs = [
        pl.BlockSpec((None, None, None, block_g, H), lambda b, h, s: (b, h, s, 0, 0)),  # o
        pl.BlockSpec((None, None, None, block_g), lambda b, h, s: (b, h, s, 0)),  # m
        pl.BlockSpec((None, None, None, block_g), lambda b, h, s: (b, h, s, 0)),  # l
    ]
    out_shape = [
        jax.ShapeDtypeStruct((B, K, k_splits, block_g, H), jnp.float32),
        jax.ShapeDtypeStruct((B, K, k_splits, block_g), jnp.float32),
        jax.ShapeDtypeStruct((B, K, k_splits, block_g), jnp.float32),
    ]
    compiler_params = None
    if not interpret and jax.default_backend() != "tpu":
        # Explicit Triton parameters select the Triton backend (without them a GPU
        # pallas_call may be routed to Mosaic GPU, which this kernel is not written for).
        if _TritonCompilerParams is None:
            raise NotImplementedError("this jax build has no Pallas Triton backend")
        compiler_params = _TritonCompilerParams(
            num_warps=4 if num_warps is None else num_warps,
            num_stages=2 if num_stages is None else num_stages,
        )
    o, m, l = pl.pallas_call(
        kernel,
        grid=(B, K, k_splits),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=compiler_params,
        name=f"paged_attention_g{block_g}_p{pages_per_compute_block}",
    )(*args)

    # Merge the split-K partial softmax states.
    m_max = m.max(axis=2, keepdims=True)  # [B, K, 1, Gp]
    alpha = jnp.exp(m - m_max)  # [B, K, k_splits, Gp]
    l_sum = (l * alpha).sum(axis=2)  # [B, K, Gp]
    o_sum = (o * alpha[..., None]).sum(axis=2)  # [B, K, Gp, H]
    out = o_sum / jnp.where(l_sum > 0, l_sum, 1.0)[..., None]
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
