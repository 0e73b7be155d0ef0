"""How much of an accelerator's memory the engine owns, and what the KV pool gets of it.

`gpu_memory_utilization` is a share of the whole device, as in vLLM: at 0.9 the weights, the step's
temporaries and the KV pool together take 90% of the card. JAX's GPU allocator, though, is capped when
its backend starts at XLA_PYTHON_CLIENT_MEM_FRACTION of the memory (0.75 unless set), and the device only
reports that cap (`memory_stats()["bytes_limit"]`). So the engine sets the fraction to
`gpu_memory_utilization` before JAX starts its backends:

    budget = bytes_limit                                    the engine set the fraction (the usual case)
           = min(utilization / fraction, 1) * bytes_limit   the user set XLA_PYTHON_CLIENT_MEM_FRACTION
           = utilization * bytes_limit                      the backend started earlier; not a GPU
    pool   = budget - bytes in use - weights still to load - activation reserve
"""

from __future__ import annotations

import logging
import os

from jaxllm.config import ModelConfig, SchedulerConfig

logger = logging.getLogger(__name__)

MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
_JAX_DEFAULT_FRACTION = 0.75
_GPU_HEADROOM = 2 * 2**30  # library workspaces and allocator fragmentation


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the probe: assume started, change nothing
        return True


def claim_device_memory(utilization: float) -> None:
    """Let JAX's GPU allocator take `utilization` of the device, unless the user chose a fraction or JAX's
    backends already started (then the cap they started with stays, and the budget is a share of it)."""
    if MEM_FRACTION_ENV in os.environ:
        return
    if _backends_started():
        logger.info("JAX's backends started before the engine: gpu_memory_utilization=%g applies to the "
                    "allocator's cap, not to the whole device (set %s before starting JAX to change it)",
                    utilization, MEM_FRACTION_ENV)
        return
    os.environ[MEM_FRACTION_ENV] = f"{utilization:.4f}"


def _allocator_fraction() -> float | None:
    """XLA_PYTHON_CLIENT_MEM_FRACTION as a number, or None where it is unset or unreadable."""
    try:
        fraction = float(os.environ[MEM_FRACTION_ENV])
    except (KeyError, ValueError):
        return None
    return fraction if fraction > 0 else None


def budget_bytes(bytes_limit: int, utilization: float, platform: str) -> int:
    """The bytes the engine may use on a device whose allocator is capped at `bytes_limit`."""
    fraction = _allocator_fraction()
    if platform == "gpu" and fraction is not None:
        return int(min(utilization / fraction, 1.0) * bytes_limit)
    return int(utilization * bytes_limit)


def device_memory_bytes(device) -> int | None:
    """The whole memory of a GPU: its allocator cap over the fraction JAX started with (0.75 unless set)."""
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"] / (_allocator_fraction() or _JAX_DEFAULT_FRACTION))


def activation_reserve(model: ModelConfig, sched: SchedulerConfig, platform: str) -> int:
    """Upper bound of the largest step's temporaries, kept out of the KV pool.

    T = max_num_batched_tokens tokens through the layers (a few [T, max(hidden, intermediate)] float32
    buffers); the dense attention of fresh prompts, [heads, T', T'] float32 scores and 16-bit
    probabilities for T' = min(T, DENSE_PREFILL_MAX_TOKENS) (larger steps use the ragged kernel, which keeps
    its scores on chip); the sampler's float32 copies of the logits of max_num_seqs rows and of one chunk
    of prompt logprobs. On a GPU, XLA's autotuning also allocates operands of the step's largest GEMMs
    while other steps compile beside the pool.
    """
    from jaxllm.runner.input_batch import DENSE_PREFILL_MAX_TOKENS  # both import jax, which the CLI
    from jaxllm.runner.sampler import PROMPT_LOGPROBS_CHUNK  # imports only once it builds an engine

    t = sched.max_num_batched_tokens
    wide = max(model.hidden_size, model.intermediate_size)
    hidden = 4 * 8 * t * wide
    dense = min(t, DENSE_PREFILL_MAX_TOKENS)
    scores = 6 * model.num_heads * dense * dense
    logits = 4 * 3 * (sched.max_num_seqs + min(t, PROMPT_LOGPROBS_CHUNK)) * model.vocab_size
    autotune = _GPU_HEADROOM + 2 * 8 * t * wide if platform == "gpu" else 0
    return hidden + scores + logits + autotune
