"""Engine flags shared by every command that builds an engine (`jaxllm generate`, `serve`, `run-batch`),
spelled as vLLM spells them, and the `LLM(...)` keyword arguments they stand for.

Plain argparse: importing this module imports no jax and no server code.
"""

from __future__ import annotations

import argparse


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine flags shared by every subcommand, spelled as vLLM spells them."""
    parser.add_argument("--model", default=None, help="local folder or hub id (default: the embedded model)")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (half)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    parser.add_argument("--num-gpu-blocks-override", type=int, default=None)
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
                        help="element type of the KV pool: auto (the model's dtype) or float8 (fp8 = fp8_e4m3), "
                             "which holds twice the tokens")
    parser.add_argument("--calculate-kv-scales", action="store_true",
                        help="fp8 KV: per-layer K/V scales from the first step instead of the checkpoint's (or 1.0)")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--quantization", "-q", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--download-dir", default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                        help="share KV pages of equal prompt prefixes (default on)")
    parser.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None,
                        help="split long prompts and mix them with decodes (default on)")
    parser.add_argument("--precompile", default=None, choices=["auto", "background", "wait", "off"],
                        help="compile every step bucket at start, on background threads while the weights load: "
                             "background (serve at once; a step waits only for its own bucket), wait (start when "
                             "all are compiled), off (compile each when first needed). Default auto: "
                             "$JAXLLM_PRECOMPILE, else background on GPU/TPU, off on CPU")
    parser.add_argument("--enforce-eager", action="store_true", help="as vLLM: no ahead-of-time work (--precompile off)")
    dist = parser.add_argument_group("several hosts (one process per host; see docs/parallelism.md)")
    dist.add_argument("--distributed-coordinator-address", default=None, metavar="HOST:PORT",
                      help="where process 0 listens for the others (default: $JAX_COORDINATOR_ADDRESS)")
    dist.add_argument("--distributed-num-processes", type=int, default=None,
                      help="processes in the job (default: $JAX_NUM_PROCESSES)")
    dist.add_argument("--distributed-process-id", type=int, default=None,
                      help="this process's id, 0 serves (default: $JAX_PROCESS_ID)")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """LLM(...) keyword arguments from parsed engine flags."""
    names = [
        "tokenizer", "revision", "dtype", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
        "block_size", "gpu_memory_utilization", "kv_cache_memory_bytes", "num_gpu_blocks_override",
        "kv_cache_dtype", "calculate_kv_scales", "tensor_parallel_size", "quantization", "seed", "download_dir", "trust_remote_code",
        "distributed_coordinator_address", "distributed_num_processes", "distributed_process_id",
    ]
    kwargs = {n: getattr(args, n) for n in names if hasattr(args, n)}
    for flag in ("enable_prefix_caching", "enable_chunked_prefill", "precompile"):
        if getattr(args, flag, None) is not None:
            kwargs[flag] = getattr(args, flag)
    if getattr(args, "enforce_eager", False):
        kwargs["enforce_eager"] = True
    return kwargs
