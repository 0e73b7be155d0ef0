"""The XLA formulation of ragged paged attention (the CPU's path) against numpy and the Pallas kernel."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.ragged_paged_attention import query_blocks, ragged_paged_attention
from pallas_kernels.ragged_paged_attention_xla import ragged_paged_attention_xla
from tests.kernels.test_ragged_paged_attention import _case, _numpy_attention


@pytest.mark.parametrize("groups", [1, 3, 4])
@pytest.mark.parametrize("qb", [4, 16])
def test_matches_numpy_and_kernel(groups, qb):
    rng = np.random.default_rng(groups * 7 + qb)
    chunks = [(0, 7), (9, 5), (13, 1), (0, 1), (3, 18)]  # fresh prompts, cached prefixes, decode-like rows
    q, kp, vp, pos, seg, tables, starts, lens = _case(rng, chunks, kv_heads=2, groups=groups)
    rows, bstarts, blens = query_blocks(starts, lens, qb, num_blocks=16)
    args = [jnp.asarray(x) for x in (q, kp, vp, pos, tables)]
    got = np.asarray(ragged_paged_attention_xla(*args, rows, bstarts, blens, qb=qb))
    np.testing.assert_allclose(got, _numpy_attention(q, kp, vp, pos, seg, tables), rtol=1e-5, atol=1e-5)
    assert not np.any(got[-3:])  # padding tokens are zeros
    kernel = np.asarray(ragged_paged_attention(*args, rows, bstarts, blens, qb=qb, interpret=True))
    np.testing.assert_allclose(got, kernel, rtol=1e-5, atol=1e-5)


def test_alibi_matches_kernel():
    rng = np.random.default_rng(5)
    q, kp, vp, pos, _, tables, starts, lens = _case(rng, [(5, 6), (0, 9)], kv_heads=2, groups=2)
    slopes = jnp.asarray(rng.uniform(0.05, 0.5, size=4).astype(np.float32))
    rows, bstarts, blens = query_blocks(starts, lens, 4, num_blocks=8)
    args = [jnp.asarray(x) for x in (q, kp, vp, pos, tables)]
    got = ragged_paged_attention_xla(*args, rows, bstarts, blens, alibi_slopes=slopes, qb=4)
    want = ragged_paged_attention(*args, rows, bstarts, blens, alibi_slopes=slopes, qb=4, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_unwritten_slots_never_reach_the_output():
    """Pool slots past a query's position (stale pages, NaN garbage) do not change its output."""
    rng = np.random.default_rng(11)
    q, kp, vp, pos, _, tables, starts, lens = _case(rng, [(2, 3), (6, 4)], kv_heads=1, groups=2, page=4)
    rows, bstarts, blens = query_blocks(starts, lens, 4, num_blocks=6)
    clean = ragged_paged_attention_xla(*[jnp.asarray(x) for x in (q, kp, vp, pos, tables)], rows, bstarts, blens,
                                       qb=4)
    dirty_k, dirty_v = kp.copy(), vp.copy()
    for r, (prefix, chunk) in enumerate([(2, 3), (6, 4)]):
        end = prefix + chunk  # first slot no query of this row may see
        for j in range(end, tables.shape[1] * 4):
            page = tables[r, j // 4]
            if page:
                dirty_k[:, page, j % 4] = np.nan
                dirty_v[:, page, j % 4] = np.nan
    got = ragged_paged_attention_xla(*[jnp.asarray(x) for x in (q, dirty_k, dirty_v, pos, tables)], rows, bstarts,
                                     blens, qb=4)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(clean))
