"""Time the ragged (prefill) paged-attention kernel's launches on packed fresh prompts, beside XLA.

    PYTHONPATH=.:scripts python scripts/bench_ragged_attention.py --heads 32/8,12/2 --prompts 16x1024,128x128

One prefill step of `COUNTxLEN` fresh prompts packed back to back (16,384 tokens for both defaults, the
step vLLM's large-GPU default budget gives), bf16 pages of 16 tokens in a shuffled pool. For every
launch of `--configs` (query tokens a program `qb`, pages a loop step, Triton warps and stages) the
kernel is checked against the XLA formulation (`ragged_paged_attention_xla`, the peer) and timed as
back-to-back calls, best of `--repeats`. Reports µs a call and TFLOP/s of causal attention
(4 * heads * head_dim * sum(len * (len + 1) / 2) FLOP), and writes JSON rows to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

DEFAULT_CONFIGS = [
    {"qb": 16, "pages_per_step": 8, "num_warps": 4, "num_stages": 3},  # today's launch
    {"qb": 32, "pages_per_step": 8, "num_warps": 4, "num_stages": 3},
    {"qb": 32, "pages_per_step": 4, "num_warps": 4, "num_stages": 3},
    {"qb": 64, "pages_per_step": 4, "num_warps": 4, "num_stages": 3},
    {"qb": 64, "pages_per_step": 4, "num_warps": 8, "num_stages": 2},
    {"qb": 64, "pages_per_step": 8, "num_warps": 8, "num_stages": 3},
    {"qb": 128, "pages_per_step": 4, "num_warps": 8, "num_stages": 2},
    {"qb": 16, "pages_per_step": 4, "num_warps": 4, "num_stages": 2},
]


def case(count: int, length: int, heads: int, kv_heads: int, head_dim: int, page: int, seed: int):
    """(q, k_pages, v_pages, positions, block_tables, starts, lens) of `count` fresh prompts of `length`."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    per_seq = -(-length // page)
    pool = count * per_seq + 1
    t = count * length
    k_pages = jnp.asarray(rng.normal(size=(kv_heads, pool, page, head_dim)), jnp.bfloat16)
    v_pages = jnp.asarray(rng.normal(size=(kv_heads, pool, page, head_dim)), jnp.bfloat16)
    tables = rng.permutation(np.arange(1, pool)).reshape(count, per_seq).astype(np.int32)
    q = jnp.asarray(rng.normal(size=(t, heads, head_dim)), jnp.bfloat16)
    positions = np.tile(np.arange(length, dtype=np.int32), count)
    starts = np.arange(count) * length
    lens = np.full(count, length)
    return q, k_pages, v_pages, jnp.asarray(positions), jnp.asarray(tables), starts, lens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default="32/8,12/2", help="query/kv heads pairs (Llama-3-8B, Qwen2.5-1.5B)")
    p.add_argument("--prompts", default="16x1024,128x128,8x2048", help="COUNTxLEN fresh prompts in one step")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--configs", default="", help="JSON list of launch dicts (default: a sweep around today's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = p.parse_args()

    import functools

    import jax
    import jax.numpy as jnp
    from bench_paged_attention_timing import time_fn

    from pallas_kernels.ragged_paged_attention import query_blocks, ragged_paged_attention
    from pallas_kernels.ragged_paged_attention_xla import ragged_paged_attention_xla

    on_cpu = jax.default_backend() == "cpu"
    configs = json.loads(args.configs) if args.configs else DEFAULT_CONFIGS
    rows_out = []
    print(f"jax {jax.__version__} {jax.devices()[0].device_kind}")
    print("| heads | prompts | launch | µs | TFLOP/s | vs XLA | max abs err |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for pair in args.heads.split(","):
        heads, kv_heads = (int(x) for x in pair.split("/"))
        for spec in args.prompts.split(","):
            count, length = (int(x) for x in spec.split("x"))
            q, kp, vp, pos, tables, starts, lens = case(count, length, heads, kv_heads, args.head_dim,
                                                        args.page_size, seed=count * 7 + length)
            flop = 4 * heads * args.head_dim * count * length * (length + 1) / 2
            xla_plan = query_blocks(starts, lens, 16, count * -(-length // 16))
            xla = functools.partial(ragged_paged_attention_xla, q, kp, vp, pos, tables, *map(jnp.asarray, xla_plan),
                                    qb=16)
            want = np.asarray(xla(), np.float32)
            xla_s = time_fn(xla, repeats=args.repeats)
            print(f"| {pair} | {spec} | XLA (qb 16) | {xla_s * 1e6:.1f} | {flop / xla_s / 1e12:.1f} | 1.00x | 0 |")
            rows_out.append({"heads": pair, "prompts": spec, "impl": "xla", "s": xla_s, "flop": flop})
            for cfg in configs:
                plan = query_blocks(starts, lens, cfg["qb"], count * -(-length // cfg["qb"]))
                call = functools.partial(ragged_paged_attention, q, kp, vp, pos, tables, *map(jnp.asarray, plan),
                                         interpret=on_cpu, **cfg)
                try:
                    err = float(np.max(np.abs(np.asarray(call(), np.float32) - want)))
                    s = time_fn(call, repeats=args.repeats)
                except Exception as e:  # a launch Triton cannot build (registers, shared memory): say so
                    print(f"| {pair} | {spec} | {cfg} | failed: {str(e).splitlines()[0][:80]} | | | |")
                    continue
                launch = f"qb {cfg['qb']}, {cfg['pages_per_step']} pages, {cfg['num_warps']} warps, {cfg['num_stages']} stages"
                print(f"| {pair} | {spec} | {launch} | {s * 1e6:.1f} | {flop / s / 1e12:.1f} | {xla_s / s:.2f}x | {err:.3g} |")
                rows_out.append({"heads": pair, "prompts": spec, "impl": "pallas", **cfg, "s": s, "flop": flop,
                                 "max_abs_err": err})
            sys.stdout.flush()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ragged_attention.json"), "w") as f:
        json.dump({"jax": jax.__version__, "device": jax.devices()[0].device_kind, "rows": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
