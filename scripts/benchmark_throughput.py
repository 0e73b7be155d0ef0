"""Offline throughput, vLLM's protocol: random prompts, fixed input/output lengths, ignore_eos.

    python scripts/benchmark_throughput.py --config llama-3-8b --input-len 1024 --output-len 1024 --num-prompts 1000
    python scripts/benchmark_throughput.py --model /path/to/hf-folder --num-prompts 200 --hf-peer-prompts 64
    python scripts/benchmark_throughput.py --config llama-3-8b --input-len 1024 --output-len 1024 --kv-cache-dtype fp8
    python scripts/benchmark_throughput.py --config qwen2.5-1.5b --input-len 128 --output-len 128 --structured-output-ratio 1

`--structured-output-ratio R` gives a share R of the requests a JSON schema (structured outputs, with the
embedded model's tokenizer standing in for the shape's): those end when their JSON is complete, so the
output tokens counted are the ones really generated.

Prints requests/s, total and output tokens/s, and the roofline for the same work: each decode step
streams the weights plus the running sequences' KV at the copy bandwidth measured in this run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import sys
import time

import numpy as np
from bench_common import copy_bandwidth, decode_roofline_s, hf_peer_model, model_folder, param_bytes

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}}},
    "required": ["name", "age", "tags"]}


def roofline_output_tps(llm, args, bw: float) -> float:
    cfg = llm.model_config
    weights = param_bytes(cfg, cfg.dtype_bytes)
    context = args.input_len + args.output_len / 2  # a sequence's mean length over its decode steps
    pool = (llm.cache_config.num_blocks - 1) * llm.cache_config.block_size
    batch = max(1, min(llm.scheduler_config.max_num_seqs, args.num_prompts, int(pool // context)))
    waves = -(-args.num_prompts // batch)
    kv_itemsize = 1 if args.kv_cache_dtype != "auto" else None  # float8 pages: one byte per element
    step = decode_roofline_s(weights, cfg.kv_bytes_per_token(kv_itemsize), batch, context, bw)
    return args.num_prompts * args.output_len / (waves * args.output_len * step)


def run_hf_peer(folder: str, prompts, args) -> float | None:
    import torch

    model = hf_peer_model(folder)
    if model is None:
        return None
    n = min(args.hf_peer_prompts, len(prompts))
    ids = torch.tensor(prompts[:n], device="cuda")
    with torch.no_grad():
        model.generate(ids[:1, :8], max_new_tokens=2, do_sample=False, min_new_tokens=2)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, n, args.hf_peer_batch):
            out = model.generate(ids[i : i + args.hf_peer_batch], max_new_tokens=args.output_len,
                                 min_new_tokens=args.output_len, do_sample=False)
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    del model, out
    torch.cuda.empty_cache()
    return n * args.output_len / elapsed


def _count_steps(llm) -> dict:
    """Count the steps the runner dispatches from now on."""
    counter = {"n": 0}
    original = llm.runner.dispatch

    def dispatch(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)

    llm.runner.dispatch = dispatch
    return counter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a real checkpoint folder or hub id")
    src.add_argument("--config", help="a shape name (llama-3-8b, qwen2.5-1.5b, tiny) or a config.json path")
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-num-seqs", type=int, default=None, help="default: the engine's (vLLM's, by device)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])
    p.add_argument("--calculate-kv-scales", action="store_true")
    p.add_argument("--fp8-compute-dtype", default=None, choices=["float16", "bfloat16", "float8_e4m3fn"],
                   help="float8 pages: what the decode kernel widens them to (default: float16), or "
                        "float8 dots (see pallas_kernels/paged_attention.py)")
    p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--hf-peer-prompts", type=int, default=0, help="also time transformers on this many prompts")
    p.add_argument("--hf-peer-batch", type=int, default=64)
    p.add_argument("--structured-output-ratio", type=float, default=0.0,
                   help="share of the requests that follow a JSON schema")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile the timed run in Python (cProfile) and print its N costliest functions")
    p.add_argument("--trace", default=None, metavar="DIR",
                   help="trace the timed run with jax.profiler into DIR and print where the device's time went "
                        "(scripts/trace_summary.py; for short runs: the trace holds every kernel)")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()

    from jaxllm import LLM, SamplingParams, default_model_path
    from jaxllm.runner import compile_counter
    from jaxllm.sampling_params import StructuredOutputsParams

    from jaxllm.runner.device_memory import claim_device_memory

    claim_device_memory(args.gpu_memory_utilization)  # as LLM() does, before anything below starts JAX
    if args.fp8_compute_dtype:
        import functools

        from jaxllm.models import layers

        decode, ragged = layers.paged_attention_impls()
        if getattr(decode, "__name__", "") != "paged_attention":
            p.error("--fp8-compute-dtype applies to the Pallas decode kernel, which runs on GPUs")
        chosen = (functools.partial(decode, compute_dtype=args.fp8_compute_dtype), ragged)
        layers.paged_attention_impls = lambda: chosen
    folder, load_format = model_folder(args)
    rng = np.random.default_rng(0)
    max_len = args.max_model_len or args.input_len + args.output_len
    t0 = time.perf_counter()
    llm = LLM(folder, load_format=load_format, dtype=args.dtype, max_model_len=max_len,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
              gpu_memory_utilization=args.gpu_memory_utilization,
              skip_tokenizer_init=not args.structured_output_ratio,
              tokenizer=default_model_path() if args.structured_output_ratio else None,
              enable_chunked_prefill=args.enable_chunked_prefill, enable_prefix_caching=args.enable_prefix_caching,
              async_scheduling=args.async_scheduling, kv_cache_dtype=args.kv_cache_dtype,
              calculate_kv_scales=args.calculate_kv_scales)
    vocab = llm.model_config.vocab_size
    prompts = [rng.integers(0, vocab, args.input_len).tolist() for _ in range(args.num_prompts)]
    params = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=args.output_len, detokenize=False)
    constrained = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.output_len, detokenize=False,
                                 structured_outputs=StructuredOutputsParams(json=SCHEMA))
    structured = rng.random(args.num_prompts) < args.structured_output_ratio
    params = [constrained if s else params for s in structured]
    # Warm-up: compile the buckets this run will use (with the constrained rows' split steps, if any). Where
    # every bucket is compiled ahead (GPU, TPU), a few prompts run the path and the buckets are waited for;
    # elsewhere the warm-up compiles them itself, with a whole wave of prompts.
    warm = SamplingParams(ignore_eos=True, max_tokens=4, detokenize=False)
    warm_constrained = SamplingParams(max_tokens=4, detokenize=False, structured_outputs=constrained.structured_outputs)
    precompiler = llm.runner.precompiler
    count = min(llm.scheduler_config.max_num_seqs, args.num_prompts)
    if precompiler is not None and not structured.any():
        count = min(count, 16)
    # other prompts than the timed ones, so that no timed prompt finds its pages in the prefix cache
    warm_prompts = [rng.integers(0, vocab, args.input_len).tolist() for _ in range(count)]
    llm.generate([{"prompt_token_ids": p} for p in warm_prompts],
                 [warm_constrained if s else warm for s in structured[:count]], use_tqdm=False)
    if precompiler is not None:
        try:
            precompiler.wait()
        except Exception as err:  # the steps that need a failed bucket fail in the run too; say so here
            print(f"warning: a step bucket failed to compile: {err}", file=sys.stderr)
    start_s = time.perf_counter() - t0
    stats = llm.llm_engine.stats
    waited, steps = stats["steps_waited"], _count_steps(llm)
    built, build_s = compile_counter.num_compilations(), compile_counter.seconds_building()
    profiler = cProfile.Profile() if args.profile else None
    tracing = contextlib.nullcontext()
    if args.trace:
        import jax

        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # device kernels only: Python tracing would slow the host tenfold
        options.host_tracer_level = 0
        tracing = jax.profiler.trace(args.trace, create_perfetto_trace=True, profiler_options=options)
    t = time.perf_counter()
    if profiler:
        profiler.enable()
    with tracing:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=True)
    elapsed = time.perf_counter() - t
    if args.trace:
        from trace_summary import device_events, summarize

        print(summarize(device_events(args.trace), steps=max(1, steps["n"])))
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    total_tokens = out_tokens + args.num_prompts * args.input_len
    bw, bw_method = copy_bandwidth()
    roof = roofline_output_tps(llm, args, bw)
    result = {
        "elapsed_s": elapsed, "requests_per_s": args.num_prompts / elapsed, "total_tokens_per_s": total_tokens / elapsed,
        "output_tokens_per_s": out_tokens / elapsed, "roofline_output_tokens_per_s": roof,
        "ratio_to_roofline": out_tokens / elapsed / roof, "copy_bandwidth_TBps": bw / 1e12, "bandwidth_method": bw_method,
        "startup_and_warmup_s": start_s, "preemptions": stats["preemptions"],
        "steps": steps["n"], "steps_waited_for_host": stats["steps_waited"] - waited,
        "structured_requests": int(structured.sum()),
        "compilations_during_run": compile_counter.num_compilations() - built,
        "compile_s_during_run": compile_counter.seconds_building() - build_s,
        "max_num_seqs": llm.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": llm.scheduler_config.max_num_batched_tokens,
        "pool_tokens": llm.cache_config.num_blocks * llm.cache_config.block_size, "kv_cache_dtype": args.kv_cache_dtype,
    }
    print(json.dumps(result, indent=2), flush=True)
    if args.hf_peer_prompts:
        del llm
        hf = run_hf_peer(folder, prompts, args)
        result["hf_output_tokens_per_s"] = hf
        result["speedup_vs_hf"] = (out_tokens / elapsed) / hf if hf else None
    import jax

    result.update(jax_version=jax.__version__, device=str(jax.devices()[0].device_kind), args=vars(args))
    print(json.dumps(result, indent=2))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
