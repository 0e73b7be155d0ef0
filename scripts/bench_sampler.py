"""What on-device sampling costs per decode step, next to the logits matmul that feeds it.

    python scripts/bench_sampler.py --batch-size 256 --vocab 151936 --hidden 1536

Times (best of several repeats of back-to-back calls, fresh random logits) `jaxllm.runner.sampler.sample`
for all-greedy rows, temperature-1 rows (Gumbel-max over the whole vocabulary), the same with the
sampled tokens' logprobs and ranks, the same with top-p (the filter: a search over the row's float
order, timed alone with 1, 3, 7 and 15 candidates per pass next to the sort it replaced), and the bf16 logits
matmul of the same shape, so the share of the step each takes is known.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import best_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--output-json", default=None)
    args = p.parse_args()

    from jaxllm.runner.sampler import (FILTER_ROUNDS, SamplingMetadata, filter_passes, filter_top_k_top_p_min_p,
                                       filtered_gumbel_max, sample, temperature_scaled)

    b, v = args.batch_size, args.vocab
    key = jax.random.PRNGKey(0)
    logits = jax.random.normal(key, (b, v), jnp.float32) * 3.0
    hidden = jax.random.normal(jax.random.fold_in(key, 1), (b, args.hidden), jnp.bfloat16)
    head = jax.random.normal(jax.random.fold_in(key, 2), (args.hidden, v), jnp.bfloat16) * 0.02

    def metadata(temperature: float, top_p: float) -> SamplingMetadata:
        return SamplingMetadata(
            temperature=jnp.full((b,), temperature, jnp.float32), top_k=jnp.zeros((b,), jnp.int32),
            top_p=jnp.full((b,), top_p, jnp.float32), min_p=jnp.zeros((b,), jnp.float32),
            seed_lo=jnp.arange(b, dtype=jnp.uint32), seed_hi=jnp.zeros((b,), jnp.uint32),
            step=jnp.full((b,), 3, jnp.int32))

    def timed_sample(md, use_filters, use_logprobs=False):
        fn = jax.jit(lambda x, m: sample(x, m, use_penalties=False, use_bias=False, use_filters=use_filters,
                                         use_top_logprobs=False, use_logprobs=use_logprobs))
        return best_of(fn, logits, md)

    matmul = jax.jit(lambda h, w: jnp.dot(h, w, preferred_element_type=jnp.float32))
    def sorted_filter(scaled, md):  # the filter as a sort of every row defines it (what jaxllm did before)
        desc = -jnp.sort(-scaled, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        rank = jnp.arange(v)[None, :]
        keep = (rank < jnp.where(md.top_k > 0, md.top_k, v)[:, None]) & (
            (jnp.cumsum(probs, axis=-1) - probs < md.top_p[:, None]) | (rank == 0))
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(scaled >= threshold, scaled, -jnp.inf)

    qwen_defaults = metadata(0.7, 0.8)._replace(top_k=jnp.full((b,), 20, jnp.int32))  # its generation_config

    def filtered_draw(md, rounds):  # the filtered Gumbel-max alone: proposals, then the search for rows left
        fn = jax.jit(lambda x, m: filtered_gumbel_max(*temperature_scaled(x, m)[::-1], m, rounds=rounds))
        return best_of(fn, logits, md)

    draws = {}
    for label, md in (("top_p 0.95", metadata(1.0, 0.95)), ("temperature 0.7, top_k 20, top_p 0.8", qwen_defaults)):
        draws[f"filtered draw, {label}: proposals ({FILTER_ROUNDS} at most), then the search"] = filtered_draw(
            md, FILTER_ROUNDS)
        draws[f"filtered draw, {label}: the search alone (before)"] = filtered_draw(md, 0)
    rows = {
        **draws,
        "logits matmul (bf16, f32 out)": best_of(matmul, hidden, head),
        "sample, greedy": timed_sample(metadata(0.0, 1.0), False),
        "sample, temperature 1": timed_sample(metadata(1.0, 1.0), False),
        "sample, temperature 1, with logprobs and ranks": timed_sample(metadata(1.0, 1.0), False, True),
        "sample, temperature 1, top_p 0.95": timed_sample(metadata(1.0, 0.95), True),
        "sample, temperature 0.7, top_k 20, top_p 0.8": timed_sample(qwen_defaults, True),
        **{f"filter alone, top_p 0.95 ({w} candidates a pass, {filter_passes(w)} passes)": best_of(
            jax.jit(lambda x, m, w=w: filter_top_k_top_p_min_p(x, m, w)), logits, metadata(1.0, 0.95))
           for w in (1, 3, 7, 15)},
        "filter alone, top_p 0.95 (sort, before)": best_of(jax.jit(sorted_filter), logits, metadata(1.0, 0.95)),
    }
    for impl in ("threefry2x32", "unsafe_rbg"):
        def draw(lo, step, impl=impl):
            def one(seed, st):
                k = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed, impl=impl), 0), st)
                return jax.random.gumbel(k, (v,), jnp.float32)
            return jax.vmap(one)(lo, step)
        rows[f"Gumbel noise alone ({impl})"] = best_of(jax.jit(draw), jnp.arange(b, dtype=jnp.uint32),
                                                       jnp.full((b,), 3, jnp.int32))
    from jaxllm.runner.sampler import gumbel_noise

    rows["Gumbel noise alone (jaxllm's hash)"] = best_of(jax.jit(lambda m: gumbel_noise(m, v)), metadata(1.0, 1.0))
    mb = b * v * 4 / 1e6
    print(f"jax {jax.__version__} {jax.devices()[0].device_kind}; B={b} V={v} hidden={args.hidden}; "
          f"f32 logits {mb:.0f} MB")
    print("| step part | us | f32 logits passes at 4 TB/s |")
    print("| --- | --- | --- |")
    for name, s in rows.items():
        print(f"| {name} | {s * 1e6:.1f} | {s / (mb * 1e6 / 4e12):.1f} |")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"args": vars(args), "jax_version": jax.__version__, "seconds": rows}, f, indent=2)


if __name__ == "__main__":
    np.random.seed(0)
    main()
