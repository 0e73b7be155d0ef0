"""Writes of new K/V tokens into the paged KV pool (the layout of :mod:`pallas_kernels.paged_attention`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
    if slots.shape[0] == 1 and jax.default_backend() == "cpu" and k_pages.dtype != jnp.bfloat16:
        # A one-token write becomes a dynamic-update-slice, around which XLA on the CPU copies the whole
        # pool; a second write of the same token into the null page keeps it a scatter, done in place.
        # (XLA's CPU backend widens every write into a bfloat16 pool to float32 over the whole pool, and
        # its bfloat16 scatter is slower still than the dynamic-update-slice: those keep the single write.)
        slots = jnp.concatenate([slots, jnp.zeros((1,), jnp.int32)])
        k, v = jnp.concatenate([k, k]), jnp.concatenate([v, v])

    def scatter(pages, new):
        flat = pages.reshape(K, P * S, H)  # [K, P*S, H]
        new = jnp.swapaxes(new, 0, 1).astype(pages.dtype)  # [K, T, H]
        return flat.at[:, slots].set(new, mode="promise_in_bounds").reshape(K, P, S, H)

    return scatter(k_pages, k), scatter(v_pages, v)
