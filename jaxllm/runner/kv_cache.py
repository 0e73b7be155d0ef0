"""Sizing and allocating the paged KV pool.

    per layer:  k_pages, v_pages  [K, P, S, H]   (kv-head major: shards on K, pages contiguous per head)
                (+ k_scale, v_scale  float32 []  when the pages are float8, see pallas_kernels/kv_quant.py)
    page 0 is the null page: padding tokens write there and no block table points at it for real data.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import CacheConfig, ModelConfig, SchedulerConfig
from jaxllm.runner.device_memory import activation_reserve, budget_bytes

logger = logging.getLogger(__name__)

CPU_KV_CACHE_GIB = float(os.environ.get("JAXLLM_CPU_KVCACHE_SPACE", "1"))  # as vLLM's CPU backend


def plan_num_blocks(
    model: ModelConfig, cache: CacheConfig, sched: SchedulerConfig, tp: int = 1, weights_to_come: int = 0
) -> int:
    """Number of pages P (including the null page), from the overrides or one device's memory.

    With tensor parallelism each device holds 1/tp of every page (its kv heads), so budgets are per device.
    `weights_to_come`: bytes of parameters each device will receive after this call (planning before the
    weights are loaded, so the pool's shape is known to the steps compiled meanwhile).
    """
    # 1 for float8 pages: twice the pages
    itemsize = jnp.dtype(cache.kv_dtype(model.dtype, jax.default_backend())).itemsize
    per_token = model.kv_bytes_per_token(itemsize) * pool_head_dim(model.head_dim) // model.head_dim
    per_block = per_token * cache.block_size // tp
    pages_per_seq = -(-sched.max_model_len // cache.block_size)
    if cache.num_gpu_blocks_override is not None:
        num_blocks = cache.num_gpu_blocks_override
        source = "num_gpu_blocks_override"
    elif cache.kv_cache_memory_bytes is not None:
        num_blocks = cache.kv_cache_memory_bytes // per_block
        source = f"kv_cache_memory_bytes={cache.kv_cache_memory_bytes}"
    else:
        device = jax.local_devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if not stats or "bytes_limit" not in stats:
            budget = int(CPU_KV_CACHE_GIB * 2**30)
            # Never more than every sequence at full length could use.
            num_blocks = min(budget // per_block, 1 + sched.max_num_seqs * pages_per_seq)
            source = f"the CPU KV space of {CPU_KV_CACHE_GIB:g} GiB"
        else:
            budget = budget_bytes(stats["bytes_limit"], cache.gpu_memory_utilization, device.platform)
            used = stats.get("bytes_in_use", 0) + weights_to_come
            free = budget - used - activation_reserve(model, sched, device.platform)
            num_blocks = int(max(0, free) // per_block)
            source = f"gpu_memory_utilization={cache.gpu_memory_utilization}"
    capacity = (num_blocks - 1) * cache.block_size
    if capacity < sched.max_model_len:
        raise ValueError(
            f"The model's max seq len ({sched.max_model_len}) is larger than the maximum number of tokens "
            f"that can be stored in KV cache ({max(0, capacity)}, from {source}). Try increasing "
            "`gpu_memory_utilization` (or `kv_cache_memory_bytes` / `num_gpu_blocks_override`) or "
            "decreasing `max_model_len` when initializing the engine."
        )
    logger.info("KV pool: %d blocks of %d tokens in %s (%s)", num_blocks, cache.block_size,
                cache.kv_dtype(model.dtype, jax.default_backend()), source)
    return int(num_blocks)


def pool_head_dim(head_dim: int) -> int:
    """The head size the pool stores: the model's, or on a GPU the next power of two.

    The Pallas kernels' Triton tiles must have power-of-two sizes, so a head size such as 80 (phi-2,
    OPT-2.7b) or 112 (MPT-30b) is stored zero-padded to 128; queries are padded the same way, which
    leaves every dot product unchanged. JAXLLM_KV_POW2_HEAD_DIM=1 / 0 forces it on / off.
    """
    forced = os.environ.get("JAXLLM_KV_POW2_HEAD_DIM", "auto").lower()
    pad = jax.default_backend() == "gpu" if forced == "auto" else forced in ("1", "true", "yes", "on")
    return 1 << (head_dim - 1).bit_length() if pad else head_dim


def check_kv_cache_dtype(cache: CacheConfig) -> None:
    """A clear error where float8 pages cannot run: the kernels need float8 loads (CUDA sm_89 and newer)."""
    if not cache.is_fp8:
        return
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return
    capability = getattr(device, "compute_capability", None) if device.platform == "gpu" else None
    if capability is None or tuple(int(x) for x in str(capability).split(".")[:2]) < (8, 9):
        details = device.platform + (f", compute capability {capability}" if capability else "")
        where = f"{device.device_kind} ({details})"
        raise ValueError(
            f"kv_cache_dtype={cache.cache_dtype!r} needs an NVIDIA GPU of compute capability 8.9 or newer "
            f"(Ada, Hopper, Blackwell) or the CPU; this device is {where}. Use kv_cache_dtype='auto'."
        )


def _pool_shape(model: ModelConfig, cache: CacheConfig) -> tuple[int, int, int, int]:
    return (model.num_kv_heads, cache.num_blocks, cache.block_size, pool_head_dim(model.head_dim))


def allocate_kv_caches(
    model: ModelConfig, cache: CacheConfig, sharding=None, scales: np.ndarray | None = None, scale_sharding=None
) -> list[tuple[jax.Array, ...]]:
    """Zeroed pools, created directly in their shards when `sharding` is given.

    float8 pools carry each layer's scales, `scales[layer] = (k_scale, v_scale)` (0: calibrate on the
    first step), replicated with `scale_sharding`.
    """
    shape, dtype = _pool_shape(model, cache), jnp.dtype(cache.kv_dtype(model.dtype, jax.default_backend()))
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    if not cache.is_fp8:
        return [(zeros(), zeros()) for _ in range(model.num_layers)]
    assert scales is not None and scales.shape == (model.num_layers, 2), scales
    put = lambda x: jax.device_put(np.float32(x), scale_sharding)
    return [(zeros(), zeros(), put(ks), put(vs)) for ks, vs in scales]


def abstract_kv_caches(model: ModelConfig, cache: CacheConfig, sharding, scale_sharding) -> list[tuple]:
    """The pools as `ShapeDtypeStruct`s (the steps compile from them before the pool exists)."""
    dtype = jnp.dtype(cache.kv_dtype(model.dtype, jax.default_backend()))
    page = jax.ShapeDtypeStruct(_pool_shape(model, cache), dtype, sharding=sharding)
    if not cache.is_fp8:
        return [(page, page) for _ in range(model.num_layers)]
    scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=scale_sharding)
    return [(page, page, scale, scale) for _ in range(model.num_layers)]
