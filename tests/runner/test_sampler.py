"""The on-device sampler on random logits: allowed sets, penalties, seeds, batch independence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.runner.sampler import SamplingMetadata, apply_penalties, sample

V = 64


def _md(b, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seeds=None, steps=None, **extra):
    def full(x, dtype):
        return jnp.broadcast_to(jnp.asarray(x, dtype), (b,))

    seeds = np.arange(b) if seeds is None else np.asarray(seeds)
    return SamplingMetadata(
        temperature=full(temperature, jnp.float32),
        top_k=full(top_k, jnp.int32),
        top_p=full(top_p, jnp.float32),
        min_p=full(min_p, jnp.float32),
        seed_lo=jnp.asarray(seeds % 2**32, jnp.uint32),
        seed_hi=jnp.asarray(seeds // 2**32, jnp.uint32),
        step=full(0, jnp.int32) if steps is None else jnp.asarray(steps, jnp.int32),
        **extra,
    )


def _draw(logits, md, **flags):
    opts = dict(use_penalties=False, use_bias=False, use_filters=True, use_top_logprobs=False)
    opts.update(flags)
    return np.asarray(sample(jnp.asarray(logits), md, **opts).token_ids)


@pytest.fixture
def logits():
    return np.random.default_rng(0).normal(size=(1, V)).astype(np.float32) * 2.0


def _many(logits, draws=400, **kw):
    """`draws` independent samples of one row (different seeds)."""
    rows = np.repeat(logits, draws, axis=0)
    return _draw(rows, _md(draws, seeds=np.arange(draws) + 1000, **kw))


def test_top_k_never_leaves_the_top_k(logits):
    allowed = set(np.argsort(-logits[0])[:5].tolist())
    got = set(_many(logits, top_k=5).tolist())
    assert got <= allowed and len(got) > 1


def test_top_p_never_leaves_the_nucleus(logits):
    probs = np.exp(logits[0] - logits[0].max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    mass_before = np.cumsum(probs[order]) - probs[order]
    allowed = set(order[mass_before < 0.5].tolist())
    got = set(_many(logits, top_p=0.5).tolist())
    assert got <= allowed and len(got) > 1


def test_min_p_never_emits_unlikely_tokens(logits):
    probs = np.exp(logits[0] - logits[0].max())
    allowed = set(np.nonzero(probs >= 0.3)[0].tolist())  # relative to the max, which has probs == 1
    got = set(_many(logits, min_p=0.3).tolist())
    assert got <= allowed and len(got) > 1


def test_unfiltered_sampling_follows_the_distribution(logits):
    draws = _many(logits, draws=3000, temperature=1.0)
    probs = np.exp(logits[0] - logits[0].max())
    probs /= probs.sum()
    freq = np.bincount(draws, minlength=V) / len(draws)
    assert np.abs(freq - probs).max() < 0.04


def test_greedy_is_argmax_and_ignores_filters(logits):
    rows = np.repeat(logits, 3, axis=0)
    got = _draw(rows, _md(3, temperature=0.0, top_k=3))
    assert (got == logits[0].argmax()).all()


def test_same_seed_same_tokens_different_seed_different_tokens(logits):
    rows = np.repeat(logits, 50, axis=0)
    steps = np.arange(50)  # 50 consecutive positions of one request
    a = _draw(rows, _md(50, seeds=np.full(50, 7), steps=steps))
    b = _draw(rows, _md(50, seeds=np.full(50, 7), steps=steps))
    c = _draw(rows, _md(50, seeds=np.full(50, 8), steps=steps))
    assert (a == b).all() and (a != c).any()


def test_a_seeded_row_does_not_depend_on_its_batch(logits):
    rng = np.random.default_rng(1)
    alone = _draw(logits, _md(1, seeds=[42], steps=[3]))
    others = rng.normal(size=(5, V)).astype(np.float32)
    batch = np.concatenate([others[:2], logits, others[2:]])
    together = _draw(batch, _md(6, seeds=[1, 2, 42, 3, 4, 5], steps=[0, 9, 3, 1, 2, 7]))
    assert together[2] == alone[0]


def _penalty_reference(logits, tokens, prompt_len, rep, freq, pres):
    out = logits.copy()
    seen = set(tokens)
    counts = np.bincount(tokens[prompt_len:], minlength=V) if len(tokens) > prompt_len else np.zeros(V)
    for t in seen:
        out[t] = out[t] / rep if out[t] > 0 else out[t] * rep
    return out - freq * counts - pres * (counts > 0)


def test_penalties_follow_their_definitions(logits):
    tokens = np.array([3, 5, 5, 9, 9, 9, 12], np.int32)  # prompt = first 3
    ids = np.full((1, 16), -1, np.int32)
    ids[0, : len(tokens)] = tokens
    md = _md(
        1,
        presence_penalty=jnp.array([0.5]),
        frequency_penalty=jnp.array([0.3]),
        repetition_penalty=jnp.array([1.7]),
        token_ids=jnp.asarray(ids),
        prompt_lens=jnp.array([3], jnp.int32),
    )
    got = np.asarray(apply_penalties(jnp.asarray(logits), md))[0]
    want = _penalty_reference(logits[0], tokens, 3, 1.7, 0.3, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_frequency_penalty_moves_greedy_off_a_repeated_token(logits):
    top = int(logits[0].argmax())
    ids = np.full((1, 8), -1, np.int32)
    ids[0, :5] = [1, top, top, top, top]
    md = _md(
        1, temperature=0.0,
        presence_penalty=jnp.array([0.0]), frequency_penalty=jnp.array([2.0]),
        repetition_penalty=jnp.array([1.0]), token_ids=jnp.asarray(ids), prompt_lens=jnp.array([1], jnp.int32),
    )
    assert _draw(logits, md, use_penalties=True)[0] != top
    assert _draw(logits, _md(1, temperature=0.0))[0] == top


def test_top_logprobs_are_sorted_log_softmax(logits):
    out = sample(jnp.asarray(logits), _md(1, temperature=0.0), use_penalties=False, use_bias=False,
                 use_filters=False, use_top_logprobs=True)
    ref = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))[0]
    np.testing.assert_allclose(np.asarray(out.top_logprobs)[0], np.sort(ref)[::-1][:20], rtol=1e-6)
    assert int(out.ranks[0]) == 1 and abs(float(out.logprobs[0]) - ref.max()) < 1e-6


def test_gumbel_noise_is_gumbel_independent_and_sliceable():
    from jaxllm.runner.sampler import gumbel_noise

    md = _md(256, seeds=np.arange(256) * 7919 + 3, steps=np.arange(256) % 5)
    g = np.asarray(gumbel_noise(md, 4096), np.float64)  # [256, 4096]
    # Gumbel(0, 1): mean Euler's gamma, variance pi^2 / 6, and its CDF exp(-exp(-x)) (Kolmogorov-Smirnov).
    assert abs(g.mean() - 0.5772) < 0.01 and abs(g.var() - np.pi**2 / 6) < 0.02
    x = np.sort(g.ravel()[::7])
    ks = np.abs(np.exp(-np.exp(-x)) - np.arange(1, len(x) + 1) / len(x)).max()
    assert ks < 3 / np.sqrt(len(x))
    # Neighbouring token ids and neighbouring rows are uncorrelated.
    for a, b in ((g[:, :-1], g[:, 1:]), (g[:-1], g[1:])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
    # A vocabulary slice (one tensor-parallel shard) draws exactly the columns of the whole row.
    part = np.asarray(gumbel_noise(md, 1024, jnp.int32(2048)), np.float64)
    np.testing.assert_array_equal(part, g[:, 2048:3072])


def _sorted_filter(scaled, top_k, top_p, min_p):
    """The definition by sorting (vLLM's), in float64: rank < k, probability before the rank < top_p
    (top_p = 1: no nucleus), p >= min_p * p_max. Also each row's closest call: how near a rank's
    probability before it comes to top_p (float32 sums in another order may decide that rank otherwise)."""
    out = np.full_like(scaled, -np.inf)
    margins = np.full(len(scaled), np.inf)
    for b, row in enumerate(scaled.astype(np.float64)):
        order = np.argsort(-row, kind="stable")
        vals = row[order]
        probs = np.exp(vals - vals[0])
        probs /= probs.sum()
        rank = np.arange(len(row))
        before = np.cumsum(probs) - probs
        keep = rank < (top_k[b] if top_k[b] > 0 else len(row))
        if top_p[b] < 1:
            keep &= (before < top_p[b]) | (rank == 0)
            margins[b] = np.abs(before - top_p[b]).min()
        keep &= probs >= min_p[b] * probs[0]
        threshold = vals[keep].min()
        out[b] = np.where(row >= threshold, scaled[b], -np.inf)
    return out, margins


def _hard_rows(rng, b, v):
    """(values [b, v], top_k, top_p, min_p) with the filter's hard cases: ties, masked tokens, a flat row,
    a single allowed token, and rows of any spread."""
    values = (rng.normal(size=(b, v)) * rng.uniform(0.3, 8, size=(b, 1))).astype(np.float32)
    values[:4] = np.round(values[:4])  # many ties
    values[4, rng.integers(0, v, v * 3 // 10)] = -np.inf  # tokens masked before the filter
    values[5] = 0.0  # all equal
    values[6, :] = -np.inf
    values[6, 7] = 1.5  # a single allowed token
    top_k = rng.choice([0, 1, 5, 50, 2000], b)
    top_p = rng.choice([1.0, 0.95, 0.8, 0.5, 0.01, 0.999, 0.9999], b).astype(np.float32)
    min_p = rng.choice([0.0, 0.0, 0.05, 0.5], b).astype(np.float32)
    return values, top_k, top_p, min_p


@pytest.mark.parametrize("width", [1, 2, 15])
@pytest.mark.parametrize("seed", range(6))
def test_filter_without_sort_keeps_what_a_sort_keeps(seed, width):
    """The search keeps the sorted definition's set with any number of candidates per pass (1, the
    default: a bisection)."""
    from jaxllm.runner.sampler import filter_top_k_top_p_min_p

    rng = np.random.default_rng(seed)
    b = 24
    scaled, top_k, top_p, min_p = _hard_rows(rng, b, 1000)
    md = _md(b, top_k=top_k, top_p=top_p, min_p=min_p)
    got = np.asarray(filter_top_k_top_p_min_p(jnp.asarray(scaled), md, width))
    want, margins = _sorted_filter(scaled, top_k, top_p, min_p)
    exact = margins > 1e-5  # rows decided by float rounding are left out
    assert exact.sum() >= b // 2
    np.testing.assert_array_equal(np.isfinite(got[exact]), np.isfinite(want[exact]))
    np.testing.assert_array_equal(got[exact][np.isfinite(got[exact])], scaled[exact][np.isfinite(want[exact])])


@pytest.mark.parametrize("width", [1, 2, 3, 15, 255])
def test_filter_separates_neighbouring_floats_across_the_whole_range(width):
    """The search narrows the widest key range (-inf .. the largest float) down to one float: top_k=2
    keeps the maximum and the upper of two floats one ulp apart, never the lower."""
    from jaxllm.runner.sampler import filter_top_k_top_p_min_p

    rows = []
    for x in (-1e-30, 0.75, 2.5e37):
        upper = np.nextafter(np.float32(x), np.float32(np.inf))
        rows.append(np.array([-np.inf, -3e38, x, upper, 3.4e38, -1.0, x], np.float32))
    scaled = np.stack(rows)
    md = _md(len(rows), top_k=np.full(len(rows), 2), top_p=np.ones(len(rows), np.float32),
             min_p=np.zeros(len(rows), np.float32))
    got = np.isfinite(np.asarray(filter_top_k_top_p_min_p(jnp.asarray(scaled), md, width)))
    np.testing.assert_array_equal(got, np.tile([False, False, False, True, True, False, False], (len(rows), 1)))


@pytest.mark.parametrize("rounds", [12, 2, 0])  # 0: every row by the exact search; 2: some rows each way
@pytest.mark.parametrize("seed", range(4))
def test_proposals_pick_the_token_the_search_picks(seed, rounds):
    """The sampler's filtered draw (proposals checked against the set, the exact search for rows still
    open) equals the argmax of the same noise over the set the search keeps, row by row."""
    from jaxllm.runner.sampler import (filter_top_k_top_p_min_p, filtered_gumbel_max, gumbel_scores,
                                       temperature_scaled)

    rng = np.random.default_rng(100 + seed)
    b = 48
    logits, top_k, top_p, min_p = _hard_rows(rng, b, 3000)
    temperature = rng.choice([0.0, 0.6, 1.0, 1.7], b).astype(np.float32)
    md = _md(b, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seeds=rng.integers(0, 2**40, b),
             steps=rng.integers(0, 500, b))
    is_greedy, scaled = temperature_scaled(jnp.asarray(logits), md)
    want = np.asarray(jnp.argmax(gumbel_scores(filter_top_k_top_p_min_p(scaled, md), is_greedy, md), axis=-1))
    got = np.asarray(filtered_gumbel_max(scaled, is_greedy, md, rounds=rounds))
    np.testing.assert_array_equal(got, want)
