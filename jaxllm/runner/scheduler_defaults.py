"""vLLM's defaults of `max_num_seqs` and `max_num_batched_tokens`, which depend on the device and on who
builds the engine (vLLM's `EngineArgs._set_default_args`):

                                    LLM class (offline)     OpenAI-compatible server
    GPU of >= 70 GiB, not an A100   1024 seqs, 16384 tokens  1024 seqs, 8192 tokens
    other GPUs                      256 seqs, 8192 tokens    256 seqs, 2048 tokens
    CPU and TPU (jaxllm's own)      256 seqs, max(max_model_len, 2048) tokens

With chunked prefill off a step must hold a whole prompt, so the token budget is at least max_model_len.
A value the user gives is kept as it is.
"""

from __future__ import annotations

from jaxllm.config import SchedulerConfig
from jaxllm.runner.device_memory import device_memory_bytes

LLM_CLASS, OPENAI_API_SERVER = "LLM_CLASS", "OPENAI_API_SERVER"
_LARGE_GPU = 70 * 2**30


def default_limits(usage_context: str, platform: str, device_kind: str, memory: int | None,
                   max_model_len: int, chunked_prefill: bool) -> tuple[int, int | None]:
    """(max_num_seqs, max_num_batched_tokens or None for max(max_model_len, 2048))."""
    if platform != "gpu":
        return 256, None
    server = usage_context == OPENAI_API_SERVER
    if memory is not None and memory >= _LARGE_GPU and "a100" not in device_kind.lower():
        seqs, tokens = 1024, 8192 if server else 16384
    else:
        seqs, tokens = 256, 2048 if server else 8192
    return seqs, tokens if chunked_prefill else max(tokens, max_model_len)


def scheduler_config(usage_context: str, max_model_len: int, max_num_seqs: int | None,
                     max_num_batched_tokens: int | None, chunked_prefill: bool, async_scheduling: bool):
    """The `SchedulerConfig` of the user's values, the rest from `default_limits` for this process's first
    device (which starts JAX's backends, so after `jax.distributed.initialize`)."""
    if usage_context not in (LLM_CLASS, OPENAI_API_SERVER):
        raise ValueError(f"usage_context must be {LLM_CLASS!r} or {OPENAI_API_SERVER!r}, got {usage_context!r}")
    seqs, tokens = max_num_seqs, max_num_batched_tokens
    if seqs is None or tokens is None:
        import jax

        device = jax.local_devices()[0]
        memory = device_memory_bytes(device) if device.platform == "gpu" else None
        default_seqs, default_tokens = default_limits(usage_context, device.platform, device.device_kind, memory,
                                                      max_model_len, chunked_prefill)
        seqs = default_seqs if seqs is None else seqs
        tokens = default_tokens if tokens is None else tokens
    return SchedulerConfig(max_model_len=max_model_len, max_num_seqs=seqs, max_num_batched_tokens=tokens,
                           enable_chunked_prefill=chunked_prefill, async_scheduling=async_scheduling)
