"""Writes of new K/V tokens into the paged KV pool (the layout of :mod:`pallas_kernels.paged_attention`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.kv_quant import is_fp8, quantize
from pallas_kernels.paged_attention_kernel import _TritonCompilerParams


def write_to_kv_pages(k_pages, v_pages, k, v, slot_mapping, k_scale=None, v_scale=None, impl="xla"):
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
      k_scale, v_scale: float8 pools only: the layer's scales (default 1.0); new values are stored
        as ``saturate(x / scale)`` (see :mod:`pallas_kernels.kv_quant`).
      impl: ``"xla"`` (a scatter) or ``"pallas"`` (:func:`_pallas_write`: scattered row stores, in
        place; on an H200 XLA's scatter took 11-13 us per layer for 256 decode tokens).

    Returns:
      The updated ``(k_pages, v_pages)``.
    """
    K, P, S, H = k_pages.shape
    slots = slot_mapping.astype(jnp.int32)  # [T]
    if slots.shape[0] == 1 and jax.default_backend() == "cpu" and k_pages.dtype != jnp.bfloat16:
        # A one-token write becomes a dynamic-update-slice, around which XLA on the CPU copies the whole
        # pool; a second write of the same token into the null page keeps it a scatter, done in place.
        # (XLA's CPU backend widens every write into a bfloat16 pool to float32 over the whole pool, and
        # its bfloat16 scatter is slower still than the dynamic-update-slice: those keep the single write.)
        slots = jnp.concatenate([slots, jnp.zeros((1,), jnp.int32)])
        k, v = jnp.concatenate([k, k]), jnp.concatenate([v, v])

    fp8 = is_fp8(k_pages.dtype)
    if not fp8 and (k_scale is not None or v_scale is not None):
        raise ValueError(f"k_scale / v_scale apply to float8 pages only, got pages of {k_pages.dtype}")
    if impl not in ("xla", "pallas"):
        raise ValueError(f"impl must be 'xla' or 'pallas', got {impl!r}")

    def cast(new, scale):  # new values in the pool's element type (float8: saturate(x / scale))
        return quantize(new, 1.0 if scale is None else scale, k_pages.dtype) if fp8 else new.astype(k_pages.dtype)

    if impl == "pallas":
        return _pallas_write(k_pages, v_pages, cast(k, k_scale), cast(v, v_scale), slots)

    def scatter(pages, new, scale):
        flat = pages.reshape(K, P * S, H)  # [K, P*S, H]
        new = cast(jnp.swapaxes(new, 0, 1), scale)  # [K, T, H]
        return flat.at[:, slots].set(new, mode="promise_in_bounds").reshape(K, P, S, H)

    return scatter(k_pages, k, k_scale), scatter(v_pages, v, v_scale)


def _write_kernel(slots_ref, k_ref, v_ref, k_in, v_in, k_out, v_out, *, tokens: int, block: int):
    """Program (i, h): tokens i*block .. i*block+block-1 of kv head h, stored as one scattered [block, H]
    tile per pool. Rows past the last token repeat it (same slot, same values), so no mask is needed."""
    del k_in, v_in  # the same buffers as k_out, v_out (aliased)
    t = jnp.minimum(pl.program_id(0) * block + jnp.arange(block, dtype=jnp.int32), tokens - 1)
    slots = slots_ref[t]  # [block]
    k_out[slots, :] = k_ref[t, :]
    v_out[slots, :] = v_ref[t, :]


@functools.partial(jax.jit, static_argnames=("block", "interpret"))
def _pallas_write(k_pages, v_pages, k, v, slots, block: int = 16, interpret: bool | None = None):
    """``write_to_kv_pages`` as a Pallas kernel: the pools are aliased to the outputs (written in place);
    program (i, h) stores `block` tokens' rows of kv head h. k, v are already in the pool's dtype."""
    K, P, S, H = k_pages.shape
    T = k.shape[0]
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    compiler_params = None
    if not interpret and jax.default_backend() != "tpu":
        if _TritonCompilerParams is None:
            raise RuntimeError("this jax build has no Pallas Triton backend: run with interpret=True")
        compiler_params = _TritonCompilerParams(num_warps=4, num_stages=1)
    pool_spec = pl.BlockSpec((None, P * S, H), lambda i, h: (h, 0, 0))  # one kv head's rows
    new_spec = pl.BlockSpec((T, None, H), lambda i, h: (0, h, 0))  # every token's row of that head
    shape = jax.ShapeDtypeStruct((K, P * S, H), k_pages.dtype)
    k_out, v_out = pl.pallas_call(
        functools.partial(_write_kernel, tokens=T, block=block),
        grid=(pl.cdiv(T, block), K),
        in_specs=[pl.BlockSpec((T,), lambda i, h: (0,)), new_spec, new_spec, pool_spec, pool_spec],
        out_specs=[pool_spec, pool_spec],
        out_shape=[shape, shape],
        input_output_aliases={3: 0, 4: 1},
        interpret=interpret,
        compiler_params=compiler_params,
        name="write_kv_pages",
    )(slots, k, v, k_pages.reshape(K, P * S, H), v_pages.reshape(K, P * S, H))
    return k_out.reshape(K, P, S, H), v_out.reshape(K, P, S, H)
