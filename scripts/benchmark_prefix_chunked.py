"""Prefix caching and chunked prefill on a model shape with random weights.

    PYTHONPATH=.:scripts python scripts/benchmark_prefix_chunked.py --config llama-3-8b

1. Time to first token of a request whose 4k-token system prompt is cached, against the same request
   with the cache reset (best of 3 each, after compiling both paths).
2. Inter-token latency of 32 running requests while a 16k-token prompt arrives, with chunked prefill
   (a 2048-token budget per step) and without it (the whole prompt in one step).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from bench_common import model_folder


def ttft(args, folder, load_format):
    from jaxllm import LLM, SamplingParams

    llm = LLM(folder, load_format=load_format, dtype="bfloat16", max_model_len=args.prefix_len + 64,
              skip_tokenizer_init=True,
              gpu_memory_utilization=0.6)
    rng = np.random.default_rng(0)
    vocab = llm.model_config.vocab_size
    one = SamplingParams(max_tokens=1, detokenize=False)

    def request(system):
        return {"prompt_token_ids": system + rng.integers(0, vocab, 32).tolist()}

    def timed(prompt):
        t = time.perf_counter()
        out = llm.generate(prompt, one, use_tqdm=False)[0]
        return time.perf_counter() - t, out.num_cached_tokens

    for _ in range(2):  # compile the dense path and the cached (ragged) path
        system = rng.integers(0, vocab, args.prefix_len).tolist()
        timed(request(system))
        timed(request(system))
    uncached, cached = [], []
    for _ in range(3):
        system = rng.integers(0, vocab, args.prefix_len).tolist()
        llm.reset_prefix_cache()
        uncached.append(timed(request(system)))
        cached.append(timed(request(system)))
    return {"prefix_tokens": args.prefix_len, "ttft_uncached_s": min(t for t, _ in uncached),
            "ttft_cached_s": min(t for t, _ in cached), "cached_tokens": cached[0][1]}


def itl(args, folder, load_format, chunked: bool):
    from jaxllm import LLM, SamplingParams

    budget = 2048 if chunked else args.long_len + 256
    llm = LLM(folder, load_format=load_format, dtype="bfloat16", max_model_len=args.long_len + 256,
              max_num_batched_tokens=budget, enable_chunked_prefill=chunked, enable_prefix_caching=False,
              max_num_seqs=64, skip_tokenizer_init=True, gpu_memory_utilization=0.85)
    engine = llm.llm_engine
    rng = np.random.default_rng(1)
    vocab = llm.model_config.vocab_size
    long_params = SamplingParams(max_tokens=1, ignore_eos=True, detokenize=False)
    # Compile: the long prompt's steps and the decode buckets.
    llm.generate({"prompt_token_ids": rng.integers(0, vocab, args.long_len).tolist()}, long_params, use_tqdm=False)
    run = SamplingParams(max_tokens=100_000, ignore_eos=True, detokenize=False)
    for _attempt in range(2):  # the first pass compiles the mixed steps; the second is measured
        for i in range(args.running):
            engine.add_request(f"run{i}", {"prompt_token_ids": rng.integers(0, vocab, 128).tolist()}, run)
        for _ in range(20):  # everyone decoding
            engine.step()
        gaps, last = [], time.perf_counter()
        for _ in range(10):
            engine.step()
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        steady = float(np.median(gaps))
        engine.add_request("long", {"prompt_token_ids": rng.integers(0, vocab, args.long_len).tolist()}, long_params)
        during, last, first_token = [], time.perf_counter(), None
        start = last
        while first_token is None:
            outs = engine.step()
            now = time.perf_counter()
            during.append(now - last)
            last = now
            if any(o.request_id == "long" and o.finished for o in outs):
                first_token = now - start
        engine.abort_request([f"run{i}" for i in range(args.running)])
        while engine.has_unfinished_requests():
            engine.step()
    del llm
    return {"chunked": chunked, "budget": budget, "steady_itl_ms": steady * 1e3,
            "max_itl_during_long_prefill_ms": max(during) * 1e3, "steps_during": len(during),
            "long_prompt_ttft_s": first_token}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model")
    src.add_argument("--config")
    p.add_argument("--prefix-len", type=int, default=4096)
    p.add_argument("--long-len", type=int, default=16384)
    p.add_argument("--running", type=int, default=32)
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    folder, load_format = model_folder(args)
    results = {"ttft": ttft(args, folder, load_format)}
    print(json.dumps(results["ttft"]), flush=True)
    for chunked in (True, False):
        results[f"itl_chunked_{chunked}"] = r = itl(args, folder, load_format, chunked)
        print(json.dumps(r), flush=True)
    import jax

    results.update(jax_version=jax.__version__, device=jax.devices()[0].device_kind)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
