"""Sampling from vocab-split logits: each device scores its own slice of the vocabulary, and only
[B]-sized maxima, sums and k candidates cross devices, never the [B, V] logits.

    hidden [B, D] (replicated) ── lm_head columns of device i ──> logits_i [B, V/tp]
        greedy / Gumbel-max: one per-slice argmax (greedy rows add no noise), pmax of the best value, pmin
                             of the ids holding it (the first index on ties, as jnp.argmax); each slice
                             draws the Gumbel noise of its own token ids, equal to the replicated draw's
        max, log-sum-exp:   pmax / psum of per-slice maxima and sums      -> raw logprobs of the slice
                             (only in steps that need logprobs)
        chosen logprob, rank: psum of the one slice that holds the token / of the counts above it
        top-k logprobs:     k candidates per slice, all-gathered (tp * k), then the top k of those

It serves the plain sampler (temperature, greedy, seeds, top logprobs). Penalties, logit biases,
bitmasks and top-k/top-p/min-p filters need whole rows: those steps use `sampler.sample` on gathered
logits. The outputs are replicated, like `sampler.sample`'s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxllm import sharding
from jaxllm.models.tensor_parallel import shard_map
from jaxllm.runner.sampler import SamplerOutput, SamplingMetadata, gumbel_scores, temperature_scaled

_HEAD_LEAVES = ("lm_head", "embed", "lm_head_bias")


def head_params(params: dict) -> dict:
    """The leaves the LM head reads (`compute_logits`)."""
    return {name: params[name] for name in _HEAD_LEAVES if name in params}


def applies(params: dict, tp: int, num_top_logprobs: int, flags) -> bool:
    """Whether a step can sample from vocab slices: the head splits the vocabulary evenly and the step
    needs no whole-row work."""
    if tp == 1 or flags.penalties or flags.bias or flags.filters or flags.bitmask:
        return False
    head = head_params(params)
    weight = head.get("lm_head", head["embed"])
    if not all(isinstance(leaf, jax.Array) for leaf in head.values()):
        return False
    if any(sharding.leaf_spec(name, leaf, tp) == P() for name, leaf in head.items()):
        return False
    vocab = weight.shape[-1] if "lm_head" in head else weight.shape[0]
    return not (flags.top_logprobs and num_top_logprobs > vocab // tp)


def _argmax_across(x: jax.Array, offset) -> jax.Array:
    """jnp.argmax over the whole row [B] of a row split over "tp" (x: this slice [B, V/tp])."""
    best = jnp.max(x, axis=-1)
    top = jax.lax.pmax(best, sharding.TP)
    ids = jnp.argmax(x, axis=-1).astype(jnp.int32) + offset
    return jax.lax.pmin(jnp.where(best == top, ids, jnp.iinfo(jnp.int32).max), sharding.TP)


def sample_vocab_parallel(
    compute_logits, params: dict, hidden: jax.Array, md: SamplingMetadata, *, tp: int, use_top_logprobs: bool,
    num_top_logprobs: int, use_logprobs: bool = True,
) -> tuple[SamplerOutput, jax.Array]:
    """(the sampler's output, finite [B] float32) for hidden [B, D]; `compute_logits(head, hidden)` -> [B, V'].

    As `sampler.sample`: one argmax for greedy and sampled rows, and without `use_logprobs` (and
    `use_top_logprobs`) zero logprobs and ranks, with no log-sum-exp. Called under `jax.set_mesh` of a
    mesh with a "tp" axis of size `tp`."""
    head = head_params(params)
    specs = {name: sharding.leaf_spec(name, leaf, tp) for name, leaf in head.items()}

    def per_shard(head, hidden, md):
        logits = compute_logits(head, hidden)  # [B, V/tp] float32
        width = logits.shape[-1]
        offset = jax.lax.axis_index(sharding.TP) * width
        finite = jax.lax.psum(jnp.sum(~jnp.isfinite(logits), axis=-1), sharding.TP) == 0
        is_greedy, scaled = temperature_scaled(logits, md)
        ids = _argmax_across(gumbel_scores(scaled, is_greedy, md, offset), offset)
        top_ids = top_lp = None
        if not (use_logprobs or use_top_logprobs):
            zeros = jnp.zeros(ids.shape, jnp.float32)
            return SamplerOutput(ids, zeros, zeros.astype(jnp.int32), top_ids, top_lp), finite.astype(jnp.float32)
        top = jax.lax.pmax(jnp.max(logits, axis=-1, keepdims=True), sharding.TP)
        shifted = logits - jax.lax.stop_gradient(top)
        total = jax.lax.psum(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True), sharding.TP)
        raw_logprobs = shifted - jnp.log(total)  # [B, V/tp]
        local = ids - offset
        mine = (local >= 0) & (local < width)
        picked = jnp.take_along_axis(raw_logprobs, jnp.clip(local, 0, width - 1)[:, None], axis=-1)[:, 0]
        chosen = jax.lax.psum(jnp.where(mine, picked, 0.0), sharding.TP)
        above = jnp.sum(raw_logprobs > chosen[:, None], axis=-1).astype(jnp.int32)
        ranks = 1 + jax.lax.psum(above, sharding.TP)
        if use_top_logprobs:
            lp, idx = jax.lax.top_k(raw_logprobs, num_top_logprobs)  # [B, k] of this slice
            lp = jax.lax.all_gather(lp, sharding.TP, axis=1, tiled=True)  # [B, tp*k], slices in vocab order
            idx = jax.lax.all_gather(idx.astype(jnp.int32) + offset, sharding.TP, axis=1, tiled=True)
            top_lp, order = jax.lax.top_k(lp, num_top_logprobs)
            top_ids = jnp.take_along_axis(idx, order, axis=-1)
        out = SamplerOutput(ids, chosen, ranks, top_ids, top_lp)
        return out, finite.astype(jnp.float32)

    mesh = sharding.active_mesh()
    return shard_map(per_shard, mesh=mesh, in_specs=(specs, P(), P()), out_specs=P())(head, hidden, md)
