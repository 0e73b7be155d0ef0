"""On-device sampling: penalties, temperature, top-k / top-p / min-p, seeded Gumbel-max, logprobs.

Every row carries its own parameters and its own random key, derived from (request seed, number of
tokens it has generated so far); a row's draw therefore never depends on what else is in the batch.
Optional work (penalties, dense biases, sorting for top-k/p, top logprobs) is switched on by static
flags, so a batch that does not ask for it does not pay for it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SamplingMetadata(NamedTuple):
    """Per-row sampling parameters, all [B] unless noted. Arrays of an unused feature are None."""

    temperature: jax.Array  # float32; 0 = greedy
    top_k: jax.Array  # int32; 0 = off
    top_p: jax.Array  # float32; 1 = off
    min_p: jax.Array  # float32; 0 = off
    seed_lo: jax.Array  # uint32: low and high halves of the request's seed
    seed_hi: jax.Array  # uint32
    step: jax.Array  # int32: tokens this request has generated so far
    presence_penalty: jax.Array | None = None  # float32
    frequency_penalty: jax.Array | None = None  # float32
    repetition_penalty: jax.Array | None = None  # float32
    token_ids: jax.Array | None = None  # [B, L] int32, prompt then output, -1 padded
    prompt_lens: jax.Array | None = None  # int32
    logit_bias: jax.Array | None = None  # [B, V] float32 (logit_bias, min_tokens, allowed_token_ids)
    token_bitmask: jax.Array | None = None  # [B, ceil(V/32)] int32: bit j of word i allows token 32i+j


class SamplerOutput(NamedTuple):
    token_ids: jax.Array  # [B] int32
    logprobs: jax.Array  # [B] float32: raw logprob of the sampled token
    ranks: jax.Array  # [B] int32: 1 + number of tokens with a higher raw logprob
    top_ids: jax.Array | None  # [B, k] int32
    top_logprobs: jax.Array | None  # [B, k] float32


def apply_penalties(logits: jax.Array, md: SamplingMetadata) -> jax.Array:
    """vLLM's rules: repetition over prompt+output, presence/frequency over the output only."""
    b, v = logits.shape
    ids = md.token_ids  # [B, L]
    valid = ids >= 0
    is_output = jnp.arange(ids.shape[1])[None, :] >= md.prompt_lens[:, None]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], ids.shape)
    safe = jnp.where(valid, ids, 0)
    out_counts = jnp.zeros((b, v), jnp.float32).at[rows, safe].add((valid & is_output).astype(jnp.float32))
    seen = jnp.zeros((b, v), jnp.bool_).at[rows, safe].max(valid)
    rep = md.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - md.frequency_penalty[:, None] * out_counts
    return logits - md.presence_penalty[:, None] * (out_counts > 0)


def apply_token_bitmask(logits: jax.Array, bitmask: jax.Array) -> jax.Array:
    """-inf at every token whose bit is clear in its row's packed bitmask (structured outputs)."""
    b, v = logits.shape
    bits = jnp.right_shift(bitmask[:, :, None], jnp.arange(32, dtype=jnp.int32)) & 1  # [B, V/32, 32]
    allowed = bits.reshape(b, -1)[:, :v].astype(jnp.bool_)  # [B, V]
    return jnp.where(allowed, logits, -jnp.inf)


def filter_top_k_top_p_min_p(scaled: jax.Array, md: SamplingMetadata) -> jax.Array:
    """Mask (to -inf) every token outside the top-k, the top-p nucleus, or below min_p * p_max."""
    v = scaled.shape[-1]
    sorted_desc = -jnp.sort(-scaled, axis=-1)  # [B, V]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    rank = jnp.arange(v)[None, :]
    k = jnp.where(md.top_k > 0, md.top_k, v)[:, None]
    keep = rank < k
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep &= (mass_before < md.top_p[:, None]) | (rank == 0)
    keep &= probs >= md.min_p[:, None] * probs[:, :1]
    threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def row_keys(md: SamplingMetadata) -> jax.Array:
    def one(lo, hi, step):
        key = jax.random.fold_in(jax.random.PRNGKey(lo), hi)
        return jax.random.fold_in(key, step)

    return jax.vmap(one)(md.seed_lo, md.seed_hi, md.step)


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection whose every output bit depends on every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def gumbel_noise(md: SamplingMetadata, width: int, offset: jax.Array | int = 0) -> jax.Array:
    """[B, width] float32 Gumbel(0, 1) noise for token ids offset .. offset + width - 1.

    Each row's key (threefry, from its seed and step) gives two 32-bit words; each token's uniform is a
    counter-based hash of (words, token id), so a vocabulary slice is drawn without the rest (tensor
    parallelism) and the whole draw is a few integer ops per token, fused into the argmax that reads it
    (threefry bits for every token cost more than the rest of the sampler on an H200)."""
    words = jax.vmap(lambda key: jax.random.bits(key, (2,), jnp.uint32))(row_keys(md))  # [B, 2]
    ids = (jnp.arange(width, dtype=jnp.uint32) + jnp.asarray(offset).astype(jnp.uint32))[None, :]
    h = _fmix32(ids * jnp.uint32(0x9E3779B9) ^ words[:, :1])
    h = _fmix32(h + words[:, 1:])
    u = ((h >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1), never 0 or 1
    return -jnp.log(-jnp.log(u))


def sample(
    logits: jax.Array,  # [B, V] float32
    md: SamplingMetadata,
    *,
    use_penalties: bool,
    use_bias: bool,
    use_filters: bool,
    use_top_logprobs: bool,
    num_top_logprobs: int = 20,
    use_bitmask: bool = False,
) -> SamplerOutput:
    raw_logprobs = jax.nn.log_softmax(logits, axis=-1)
    x = logits
    if use_penalties:
        x = apply_penalties(x, md)
    if use_bias:
        x = x + md.logit_bias
    if use_bitmask:
        x = apply_token_bitmask(x, md.token_bitmask)
    greedy_ids = jnp.argmax(x, axis=-1).astype(jnp.int32)
    is_greedy = md.temperature <= 0.0
    scaled = x / jnp.where(is_greedy, 1.0, md.temperature)[:, None]
    if use_filters:
        scaled = filter_top_k_top_p_min_p(scaled, md)
    sampled_ids = jnp.argmax(scaled + gumbel_noise(md, logits.shape[-1]), axis=-1).astype(jnp.int32)
    ids = jnp.where(is_greedy, greedy_ids, sampled_ids)
    chosen = jnp.take_along_axis(raw_logprobs, ids[:, None], axis=-1)[:, 0]
    ranks = 1 + jnp.sum(raw_logprobs > chosen[:, None], axis=-1).astype(jnp.int32)
    top_ids = top_lp = None
    if use_top_logprobs:
        top_lp, top_ids = jax.lax.top_k(raw_logprobs, min(num_top_logprobs, logits.shape[-1]))
        top_ids = top_ids.astype(jnp.int32)
    return SamplerOutput(ids, chosen, ranks, top_ids, top_lp)


def prompt_logprobs(
    logits: jax.Array,  # [T, V] float32, logits at every prompt position
    next_tokens: jax.Array,  # [T] int32: the token that follows each position
    num_top_logprobs: int = 20,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(logprob of the next token [T], its rank [T], top ids [T, k], top logprobs [T, k])."""
    lp = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(lp, next_tokens[:, None], axis=-1)[:, 0]
    ranks = 1 + jnp.sum(lp > chosen[:, None], axis=-1).astype(jnp.int32)
    top_lp, top_ids = jax.lax.top_k(lp, min(num_top_logprobs, logits.shape[-1]))
    return chosen, ranks, top_ids.astype(jnp.int32), top_lp
