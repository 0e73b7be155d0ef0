"""Timing of ``bench_paged_attention.py``: best-of-repeats wall time and the copy-bandwidth ceiling."""

from __future__ import annotations

import functools
import math
import time

# --------------------------------------------------------------------------------------
# Copy bandwidth (the ceiling)
# --------------------------------------------------------------------------------------


def torch_copy_bandwidth(gib=4.0, repeats=10):
    """A real cudaMemcpy device-to-device through PyTorch (``dst.copy_(src)``)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = int(gib * 2**30) // 2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    best = math.inf
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            dst.copy_(src)
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3 / 5)
    moved = 2 * n * 2
    del src, dst
    torch.cuda.empty_cache()
    return {
        "method": "torch dst.copy_(src) (cudaMemcpyAsync D2D)",
        "bytes": moved,
        "s": best,
        "tbps": moved / best / 1e12,
    }


def jax_copy_bandwidths(gib=4.0):
    """JAX candidates; what XLA emits for each is recorded next to its number."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    n = int(gib * 2**30) // 2
    x = jax.random.normal(jax.random.key(0), (n,), jnp.bfloat16)
    results = []

    def hlo_kinds(fn, *args):
        try:
            txt = fn.lower(*args).compile().as_text()
        except Exception:
            return "?"
        kinds = []
        for key in ("copy-start", "custom-call", "fusion", " copy(", "dynamic-update-slice"):
            if key in txt:
                kinds.append(key.strip(" ("))
        return ",".join(kinds)

    cands = {
        "jax jit x.copy()": (jax.jit(lambda a: a.copy()), (x,), 2),
        "jax jit x + 1 (elementwise)": (jax.jit(lambda a: a + 1), (x,), 2),
    }
    for name, (fn, args, factor) in cands.items():
        t = time_fn(functools.partial(fn, *args), repeats=5, target_s=0.05)
        results.append(
            {
                "method": name,
                "bytes": factor * n * 2,
                "s": t,
                "tbps": factor * n * 2 / t / 1e12,
                "hlo": hlo_kinds(fn, *args),
            }
        )

    # dynamic_update_slice of the whole buffer into a donated destination
    dus = jax.jit(lambda dst, src: lax.dynamic_update_slice(dst, src, (0,)), donate_argnums=0)
    dst = jnp.zeros_like(x)
    txt = hlo_kinds(dus, dst, x)
    for _ in range(3):
        dst = dus(dst, x)
    dst.block_until_ready()
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(10):
            dst = dus(dst, x)
        dst.block_until_ready()
        best = min(best, (time.perf_counter() - t0) / 10)
    results.append(
        {
            "method": "jax jit dynamic_update_slice into donated buffer",
            "bytes": 2 * n * 2,
            "s": best,
            "tbps": 2 * n * 2 / best / 1e12,
            "hlo": txt,
        }
    )
    del x, dst
    return results


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def time_fn(call, repeats=5, target_s=0.02, max_calls=200):
    """Best over ``repeats`` of the mean time of n back-to-back calls (n from a first estimate)."""
    import jax

    for _ in range(2):
        jax.block_until_ready(call())
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    est = max(time.perf_counter() - t0, 1e-6)
    n = int(min(max_calls, max(3, math.ceil(target_s / est))))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(n):
            out = call()
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / n)
    return best
