"""On-device sampling: penalties, temperature, top-k / top-p / min-p, seeded Gumbel-max, logprobs.

Every row carries its own parameters and its own random key, derived from (request seed, number of
tokens it has generated so far); a row's draw therefore never depends on what else is in the batch.
Optional work (penalties, dense biases, the top-k/p and min-p filters, top logprobs) is switched on by
static flags, so a batch that does not ask for it does not pay for it.
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


def _order_key(x: jax.Array) -> jax.Array:
    """uint32 keys in the order of the float32 values (-inf lowest), and back with `_key_value`."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _key_value(key: jax.Array) -> jax.Array:
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def filter_passes(width: int) -> int:
    """Passes over the row that `filter_top_k_top_p_min_p` makes to narrow the 2**32 float32 keys to one
    when each pass tries `width` candidate thresholds."""
    span, passes = (1 << 32) - 1, 0
    while span > 1:
        span, passes = -(-span // (width + 1)), passes + 1
    return passes


def filter_top_k_top_p_min_p(scaled: jax.Array, md: SamplingMetadata, width: int = 1) -> jax.Array:
    """Mask (to -inf) every token outside the top-k, the top-p nucleus, or below min_p * p_max.

    Without a sort: the smallest kept value is found by a search over the float32 values' order. Each
    pass tries `width` candidates spread evenly over the remaining key range, counting for each the
    tokens above it and summing their probability, and keeps the range between the highest candidate
    that fails and the lowest that passes (width 1: a bisection, 32 passes; width 15: 8 passes, fewer
    reads of the row but 15 comparisons per value: 5.6x slower than the bisection on a 2-core CPU, 4.2x
    on an H200, `scripts/bench_sampler.py`). A value
    v is kept when fewer than top_k tokens lie above it, the probability above it is below top_p (or
    nothing lies above it) and exp(v - max) >= min_p; all three only grow with v, so the kept values are
    those at or above the smallest candidate that passes, exactly the set a sort by probability keeps
    (vLLM's definition). At batch 256 over 151,936 tokens on an H200 the 32-pass search takes 3.46 ms and
    a sort of every row 3.08 ms, each about a whole small-model decode step; on the 2-core CPU the sort is
    9x slower (docs/benchmarks.md). The sampler therefore runs it only for rows that
    `filtered_gumbel_max`'s proposals leave open.
    """
    top, passes = _kept_predicate(scaled, md)  # passes(t [B, C]): is every value >= t kept

    lo = _order_key(jnp.min(scaled, axis=-1, keepdims=True))  # lowest value: kept or not
    hi = _order_key(top)  # the maximum is always kept
    keep_all = passes(_key_value(lo))
    parts = jnp.uint32(width + 1)
    j = jnp.arange(width + 2, dtype=jnp.uint32)[None, :]  # candidate j sits at lo + floor(j * span / parts)
    for _ in range(filter_passes(width)):  # invariant: the value at lo fails (unless keep_all), at hi passes
        span = hi - lo
        keys = lo + j * (span // parts) + (j * (span % parts)) // parts  # [B, width + 2], no overflow
        fails = jnp.sum(~passes(_key_value(keys[:, 1:-1])), axis=-1, keepdims=True).astype(jnp.uint32)
        lo, hi = jnp.take_along_axis(keys, fails, axis=-1), jnp.take_along_axis(keys, fails + 1, axis=-1)
    threshold = jnp.where(keep_all, -jnp.inf, _key_value(hi))
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def _kept_predicate(scaled: jax.Array, md: SamplingMetadata):
    """(top [B, 1], kept): kept(t [B, C]) -> [B, C] whether the top-k / top-p / min-p set
    holds every value >= t (the rule `filter_top_k_top_p_min_p` searches with)."""
    v = scaled.shape[-1]
    top = jnp.max(scaled, axis=-1, keepdims=True)
    weights = jnp.exp(scaled - top)  # probabilities times the row's normaliser
    total = jnp.sum(weights, axis=-1, keepdims=True)
    k = jnp.where(md.top_k > 0, md.top_k, v)[:, None]
    mass = jnp.where(md.top_p < 1.0, md.top_p * total[:, 0], jnp.inf)[:, None]  # top_p = 1: no nucleus
    floor = jnp.where(md.min_p > 0, jnp.log(jnp.maximum(md.min_p, 1e-38)), -jnp.inf)[:, None]

    def kept(t):
        above = scaled[:, :, None] > t[:, None, :]  # [B, V, C]: one read of the row for all C
        count = jnp.sum(above, axis=1)
        weight = jnp.sum(jnp.where(above, weights[:, :, None], 0.0), axis=1)
        return (count < k) & ((weight < mass) | (count == 0)) & (t - top >= floor)

    return top, kept


FILTER_ROUNDS = 8  # proposals a row may find outside its top-k / top-p / min-p set before the search decides


def filtered_gumbel_max(scaled: jax.Array, is_greedy: jax.Array, md: SamplingMetadata,
                        rounds: int = FILTER_ROUNDS) -> jax.Array:
    """[B] int32: the argmax of scaled + Gumbel noise over each row's top-k / top-p / min-p set, the token
    `filter_top_k_top_p_min_p` followed by the argmax gives, mostly without finding the set.

    The argmax over the whole row is proposed first. If the set holds it (one pass counts the tokens
    and the probability above it), it is also the argmax over the set, which it belongs to. If not,
    every value at or below it is outside the set too (the rule only grows with the value), and the
    argmax over the values above it is proposed next, with the same noise. Each proposal is a
    Gumbel-max draw from the remaining tokens, so it lies in the set with at least the set's share of
    their probability: one or two proposals for a nucleus of most of the mass, more for a small top-k of
    a flat row. Rows still open after `rounds` proposals take the exact search, only when some are
    (bench_sampler.py times both)."""
    gumbel = gumbel_scores(scaled, is_greedy, md)
    _, kept = _kept_predicate(scaled, md)
    b = scaled.shape[0]

    def propose(state):
        r, lo, ids, done = state
        x = jnp.argmax(jnp.where(scaled > lo[:, None], gumbel, -jnp.inf), axis=-1).astype(jnp.int32)
        value = jnp.take_along_axis(scaled, x[:, None], axis=-1)[:, 0]
        ok = kept(value[:, None])[:, 0]
        return r + 1, jnp.where(done | ok, lo, value), jnp.where(done, ids, x), done | ok

    start = (jnp.int32(0), jnp.full((b,), -jnp.inf, scaled.dtype), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
    _, _, ids, done = jax.lax.while_loop(lambda st: (st[0] < rounds) & ~jnp.all(st[3]), propose, start)

    def search(ids):
        exact = jnp.argmax(jnp.where(jnp.isfinite(filter_top_k_top_p_min_p(scaled, md)), gumbel, -jnp.inf), axis=-1)
        return jnp.where(done, ids, exact.astype(jnp.int32))

    return jax.lax.cond(jnp.all(done), lambda ids: ids, search, ids)


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


def temperature_scaled(x: jax.Array, md: SamplingMetadata) -> tuple[jax.Array, jax.Array]:
    """(is_greedy [B, 1], x divided by each row's temperature): greedy rows (temperature 0) divide by 1."""
    is_greedy = (md.temperature <= 0.0)[:, None]
    return is_greedy, x / jnp.where(is_greedy, 1.0, md.temperature[:, None])


def gumbel_scores(scaled: jax.Array, is_greedy: jax.Array, md: SamplingMetadata, offset: jax.Array | int = 0):
    """What one argmax reads for greedy and sampled rows: sampled rows get Gumbel noise for their token ids
    offset .. offset + width - 1 (Gumbel-max), greedy rows none."""
    return scaled + jnp.where(is_greedy, 0.0, gumbel_noise(md, scaled.shape[-1], offset))


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
    use_logprobs: bool = True,
) -> SamplerOutput:
    """Sample one token per row. Greedy rows (temperature 0) take the argmax; the others the Gumbel-max
    of their scaled (and filtered) logits. Both are one argmax over the row: a greedy row adds no noise
    and divides by 1. Without `use_logprobs` (and `use_top_logprobs`) the logprobs and ranks are zeros,
    which saves two passes over the vocabulary: the log-sum-exp and the rank count."""
    x = logits
    if use_penalties:
        x = apply_penalties(x, md)
    if use_bias:
        x = x + md.logit_bias
    if use_bitmask:
        x = apply_token_bitmask(x, md.token_bitmask)
    is_greedy, scaled = temperature_scaled(x, md)
    if use_filters:  # the filters keep every maximum, so a greedy row's argmax is unchanged
        ids = filtered_gumbel_max(scaled, is_greedy, md)
    else:
        ids = jnp.argmax(gumbel_scores(scaled, is_greedy, md), axis=-1).astype(jnp.int32)
    top_ids = top_lp = None
    if not (use_logprobs or use_top_logprobs):
        zeros = jnp.zeros(ids.shape, jnp.float32)
        return SamplerOutput(ids, zeros, zeros.astype(jnp.int32), top_ids, top_lp)
    raw_logprobs = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(raw_logprobs, ids[:, None], axis=-1)[:, 0]
    ranks = 1 + jnp.sum(raw_logprobs > chosen[:, None], axis=-1).astype(jnp.int32)
    if use_top_logprobs:
        top_lp, top_ids = jax.lax.top_k(raw_logprobs, min(num_top_logprobs, logits.shape[-1]))
        top_ids = top_ids.astype(jnp.int32)
    return SamplerOutput(ids, chosen, ranks, top_ids, top_lp)


PROMPT_LOGPROBS_CHUNK = 512  # prompt positions whose full-vocabulary logits exist at once


def chunked_prompt_logprobs(
    logits_fn, hidden: jax.Array, next_tokens: jax.Array, num_top_logprobs: int = 20,
    chunk: int = PROMPT_LOGPROBS_CHUNK,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """`prompt_logprobs` of `logits_fn(hidden)` ([T, D] -> [T, V] float32), `chunk` positions at a time.

    The logits of a whole 8192-token step over a 128k vocabulary would be a 4 GiB temporary; in chunks
    of 512 they are 256 MiB, the size the KV pool planner reserves for them.
    """
    t = hidden.shape[0]
    if t <= chunk:
        return prompt_logprobs(logits_fn(hidden), next_tokens, num_top_logprobs)
    n = -(-t // chunk)
    h = jnp.pad(hidden, ((0, n * chunk - t), (0, 0))).reshape(n, chunk, hidden.shape[-1])
    nxt = jnp.pad(next_tokens, (0, n * chunk - t)).reshape(n, chunk)
    outs = jax.lax.map(lambda a: prompt_logprobs(logits_fn(a[0]), a[1], num_top_logprobs), (h, nxt))
    return tuple(o.reshape(n * chunk, *o.shape[2:])[:t] for o in outs)


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
