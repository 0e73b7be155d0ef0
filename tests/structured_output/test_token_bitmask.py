"""The sampler's packed-bitmask logits mask against a plain NumPy unpacking of the same bits."""

import jax.numpy as jnp
import numpy as np

from jaxllm.runner.sampler import SamplingMetadata, apply_token_bitmask, sample

V = 70  # not a multiple of 32: the last word is partly padding


def _reference_allowed(bitmask: np.ndarray, vocab: int) -> np.ndarray:
    """[B, V] bool: unpack little-endian bits of each int32 word."""
    bits = np.unpackbits(bitmask.view(np.uint8).reshape(bitmask.shape[0], -1), axis=1, bitorder="little")
    return bits[:, :vocab].astype(bool)


def _random_bitmask(rng, b: int) -> np.ndarray:
    words = rng.integers(0, 2**32, size=(b, (V + 31) // 32), dtype=np.uint64).astype(np.uint32)
    return words.view(np.int32)


def test_mask_matches_reference_unpacking():
    rng = np.random.default_rng(0)
    bitmask = _random_bitmask(rng, 5)
    bitmask[0] = -1  # an unconstrained row keeps everything
    logits = rng.normal(size=(5, V)).astype(np.float32)
    out = np.asarray(apply_token_bitmask(jnp.asarray(logits), jnp.asarray(bitmask)))
    allowed = _reference_allowed(bitmask, V)
    assert allowed[0].all()
    np.testing.assert_array_equal(out, np.where(allowed, logits, -np.inf))


def _md(b: int, temperature: float) -> SamplingMetadata:
    return SamplingMetadata(
        temperature=jnp.full((b,), temperature, jnp.float32), top_k=jnp.zeros((b,), jnp.int32),
        top_p=jnp.ones((b,), jnp.float32), min_p=jnp.zeros((b,), jnp.float32),
        seed_lo=jnp.arange(b, dtype=jnp.uint32), seed_hi=jnp.zeros((b,), jnp.uint32),
        step=jnp.zeros((b,), jnp.int32),
    )


def test_sampled_and_greedy_tokens_are_always_allowed():
    rng = np.random.default_rng(1)
    b = 64
    bitmask = np.zeros((b, (V + 31) // 32), np.int32)
    for i in range(b):  # each row allows 1 to 3 tokens, usually not the most likely ones
        for t in rng.choice(V, size=1 + i % 3, replace=False):
            bitmask[i, t // 32] |= np.int32(1 << (t % 32)) if t % 32 < 31 else np.int32(-(2**31))
    allowed = _reference_allowed(bitmask, V)
    logits = jnp.asarray(rng.normal(size=(b, V)).astype(np.float32) * 3)
    for temperature in (0.0, 1.0):
        md = _md(b, temperature)._replace(token_bitmask=jnp.asarray(bitmask))
        ids = np.asarray(sample(logits, md, use_penalties=False, use_bias=False, use_filters=False,
                                use_top_logprobs=False, use_bitmask=True).token_ids)
        assert allowed[np.arange(b), ids].all()
    # without the flag the mask is ignored and the same rows pick disallowed tokens
    free = np.asarray(sample(logits, _md(b, 0.0), use_penalties=False, use_bias=False, use_filters=False,
                             use_top_logprobs=False).token_ids)
    assert not allowed[np.arange(b), free].all()
