"""Launch configuration of the paged-attention decode kernel (measured on an H200).

:func:`default_config` picks, per shape class, the compute-block size, the number of
block-table splits and the Triton compiler parameters that
:func:`pallas_kernels.paged_attention.paged_attention` uses when they are not given;
see ``docs/benchmarks.md`` for the measurements.
"""

from __future__ import annotations

from jax.experimental import pallas as pl

# Grid sizes the block table is split towards (an H200 has 132 SMs): about one program per
# SM for the deep-pipeline configuration, about four per SM for the short-block one.
_PROGRAMS_PER_WAVE_DEEP = 128
_PROGRAMS_PER_WAVE = 512


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def default_config(
    batch: int, num_kv_heads: int, width: int, page_size: int, head_dim: int = 128, itemsize: int = 2,
    fp8_pages: bool = False,
) -> dict:
    """Launch parameters of the GPU kernel for one shape class (measured on an H200).

    Two regimes, both sized by the bytes of one compute block (K + V tiles):

    * long slices (>= 4096 tokens per program once the grid has ~one program per SM):
      128-token blocks (64 KiB of K+V at d=128 bf16) and a 5-stage pipeline, about one
      program per SM (the smem of the pipeline allows no more);
    * otherwise 64-token blocks with 3 stages (~5 programs per SM), and the block table
      split until the grid has ~512 programs (one wave), keeping >= 2 blocks per split.

    Float8 pages (``fp8_pages``, tiles widened in registers) keep 128-token blocks and the 5-stage
    pipeline in both regimes, with the table split towards ~two programs per SM: at 8 x 8192 and
    64 x 2048 tokens (32/8 heads) the short regime's 64-token, 3-stage blocks took 1.2-1.8x longer.

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

    def launch(ppcb, k_splits, num_stages):
        return {"pages_per_compute_block": ppcb, "k_splits": k_splits, "num_warps": 4, "num_stages": num_stages,
                "token_rows": True}

    if fp8_pages:
        ppcb = ppcb_for(128)
        k_splits = 1
        while programs * k_splits < 2 * _PROGRAMS_PER_WAVE_DEEP and pl.cdiv(width, 2 * k_splits) >= 2 * ppcb:
            k_splits *= 2
        return launch(ppcb, k_splits, 5)
    k_splits = 1
    while programs * k_splits < _PROGRAMS_PER_WAVE_DEEP and width >= 2 * k_splits:
        k_splits *= 2
    if pl.cdiv(width, k_splits) * page_size >= tokens(4096):
        return launch(ppcb_for(128), k_splits, 5)
    ppcb = ppcb_for(64)
    k_splits = 1
    while programs * k_splits < _PROGRAMS_PER_WAVE and pl.cdiv(width, 2 * k_splits) >= 2 * ppcb:
        k_splits *= 2
    return launch(ppcb, k_splits, 3)
