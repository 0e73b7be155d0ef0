"""Latency of one batch, vLLM's protocol: time to generate `--output-len` tokens for `--batch-size` prompts.

    python scripts/benchmark_latency.py --config llama-3-8b --batch-size 1 --input-len 128 --output-len 128
    python scripts/benchmark_latency.py --config llama-3-8b -q awq --dtype float16 --batch-size 1,32

Reports the end-to-end latency (best of --iters after warm-up), the per-output-token decode latency
(from two runs with different output lengths, so prefill cancels out) and the decode roofline for the
same batch: weights + KV streamed once per step at the copy bandwidth measured in this run.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from bench_common import copy_bandwidth, decode_roofline_s, hf_peer_model, model_folder


def timed(fn, iters: int) -> float:
    fn()  # warm-up (compiles)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model")
    src.add_argument("--config", help="a shape name (llama-3-8b, qwen2.5-1.5b, tiny) or a config.json path")
    p.add_argument("--batch-size", default="1", help="a batch size, or several separated by commas (one engine)")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--quantization", "-q", default=None, help="awq, int8 or fp8 (random weights in that format)")
    p.add_argument("--hf-peer", action="store_true", help="also time transformers generate on the same shape")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    batch_sizes = [int(b) for b in str(args.batch_size).split(",")]

    import jax

    from jaxllm import LLM

    folder, load_format = model_folder(args)
    llm = LLM(folder, load_format=load_format, dtype=args.dtype, max_model_len=args.input_len + args.output_len,
              max_num_seqs=max(batch_sizes), skip_tokenizer_init=True,
              tensor_parallel_size=args.tensor_parallel_size, quantization=args.quantization)
    bw, method = copy_bandwidth()
    weights = sum(x.nbytes for x in jax.tree.leaves(llm.runner.params))  # as stored (packed when quantized)
    results = []
    for batch in batch_sizes:
        result = measure(llm, args, batch, bw, weights)
        result.update(copy_bandwidth_TBps=bw / 1e12, bandwidth_method=method)
        if args.quantization == "awq":  # which Pallas kernels passed their first-use check (else XLA ran)
            from jaxllm.quantization.matmul import _PALLAS_CHECKED

            result["awq_kernel_checks"] = {" ".join(map(str, key[:5])): ok for key, ok in _PALLAS_CHECKED.items()}
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.hf_peer:
        del llm
        for result in results:
            hf_peer(folder, args, result)
    for result in results:
        result.update(jax_version=jax.__version__, device=str(jax.devices()[0].device_kind), args=vars(args))
        print(json.dumps(result, indent=2))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results[0] if len(results) == 1 else results, f, indent=2)


def _prompts(vocab: int, batch: int, input_len: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"prompt_token_ids": rng.integers(0, vocab, input_len).tolist()} for _ in range(batch)]


def measure(llm, args, batch: int, bw: float, weights: int) -> dict:
    from jaxllm import SamplingParams

    prompts = _prompts(llm.model_config.vocab_size, batch, args.input_len)

    def run(n):
        return lambda: llm.generate(prompts, SamplingParams(temperature=0, ignore_eos=True, max_tokens=n,
                                                            detokenize=False), use_tqdm=False)

    greedy = run(args.output_len)()[0].outputs[0].token_ids  # for comparing tensor-parallel sizes
    full = timed(run(args.output_len), args.iters)
    short = timed(run(max(1, args.output_len // 4)), args.iters)
    per_token = (full - short) / (args.output_len - max(1, args.output_len // 4))
    cfg = llm.model_config
    roof = decode_roofline_s(weights, cfg.kv_bytes_per_token(), batch, args.input_len + args.output_len / 2, bw,
                             args.tensor_parallel_size)
    return {
        "batch_size": batch, "latency_s": full, "decode_ms_per_step": per_token * 1e3,
        "roofline_ms_per_step": roof * 1e3, "ratio_to_roofline": roof / per_token,
        "output_tokens_per_s": batch / per_token, "weights_GB": weights / 1e9, "greedy_tokens_prompt0": greedy,
    }


def hf_peer(folder: str, args, result: dict) -> None:
    """transformers generate on the same shape and prompts (PyTorch, bf16), into `result`."""
    import torch

    model = hf_peer_model(folder)
    if model is None:
        return
    prompts = _prompts(model.config.vocab_size, result["batch_size"], args.input_len)
    ids = torch.tensor([q["prompt_token_ids"] for q in prompts], device="cuda")

    def hf(n):
        def go():
            with torch.no_grad():
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            torch.cuda.synchronize()
        return go

    short_n = max(1, args.output_len // 4)
    hf_full = timed(hf(args.output_len), 1)
    hf_step = (hf_full - timed(hf(short_n), 1)) / (args.output_len - short_n)
    result.update(hf_latency_s=hf_full, hf_decode_ms_per_step=hf_step * 1e3,
                  speedup_vs_hf=hf_step * 1e3 / result["decode_ms_per_step"])


if __name__ == "__main__":
    main()
