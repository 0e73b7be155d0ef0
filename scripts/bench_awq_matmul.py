"""Layer table of the AWQ matmuls against dense bf16 and XLA's int4 fusion (one GPU, or a CPU smoke run).

For each weight shape K x N and each number of rows M it times, on the same random weights:

    dense      x @ W, W bf16 [K, N]                                     2 bytes a weight
    xla_int4   W as jnp.int4 [K, N] (q - 8), bf16 scales and zero points, converted, scaled and
               multiplied inside one jit (XLA fuses the int4 read into its GEMM)
    awq_xla    jaxllm.quantization.awq.awq_matmul_xla (dequantize, then one dense GEMM)
    awq_gemv   jaxllm.quantization.awq_gemv (M <= 8), several launch configurations
    awq_dot    jaxllm.quantization.awq_kernel (tensor cores), several launch configurations

Time = best of 5 repeats of back-to-back calls after warm-up; each call multiplies by NS independent
weight sets (at least --min-bytes of int4 weights, several times the 50 MB L2, and the dense sets
four times that), each used once, every product with its own x, so no row is served from the cache
and no two products share a weight (XLA would merge them). Reported: us per
matmul, weight bytes read per second (the stored bytes of each format), % of the device-to-device
copy ceiling measured in the same run, the 4-bit floor (int4 bytes / copy ceiling), and the speed-up
over dense. Every output is checked against x @ W in float32 (the exactly dequantized weight).

    PYTHONUNBUFFERED=1 python scripts/bench_awq_matmul.py --out $OUT    # on the GPU machine
    python scripts/bench_awq_matmul.py --small                          # CPU smoke run (interpret mode)

Prints one JSON line per measurement, then a markdown table of the best configuration per
(shape, M, formulation); with --out DIR writes DIR/bench_awq_matmul.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_common  # scripts/ is on sys.path when this file runs as a script

SHAPES = [(4096, 4096), (4096, 6144), (4096, 28672), (14336, 4096)]
SMALL_SHAPES = [(256, 256), (512, 384)]
ROWS = [1, 8, 32, 128]
GROUP = 128
NUM_SMS = 132


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="*", default=None, help=f"M values (default {ROWS})")
    p.add_argument("--shapes", default=None, help="e.g. 4096x4096,14336x4096")
    p.add_argument("--small", action="store_true", help="tiny shapes, Pallas in interpret mode (CPU smoke run)")
    p.add_argument("--tuned", action="store_true", help="only the default launch configuration of each kernel")
    p.add_argument("--impls", default="dense,xla_int4,awq_xla,awq_gemv,awq_dot")
    p.add_argument("--min-bytes", type=float, default=400e6, help="int4 weight bytes per timed call")
    p.add_argument("--copy-bw", type=float, default=None, help="copy ceiling in bytes/s measured earlier (skips it)")
    p.add_argument("--budget-s", type=float, default=400.0, help="start no new shape after this many seconds")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


ARGS = parse_args()
T0 = time.perf_counter()
if ARGS.small or ARGS.copy_bw:
    COPY_BW, COPY_METHOD = (ARGS.copy_bw, "given") if ARGS.copy_bw else (None, "none")
else:
    COPY_BW, COPY_METHOD = bench_common.copy_bandwidth()  # before JAX allocates

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.quantization import awq_gemv, awq_kernel, awq_layout, awq_unpack
from jaxllm.quantization.awq import awq_matmul_xla, dequantize_awq
from jaxllm.quantization.weights import QuantizedWeight

INTERPRET = jax.default_backend() != "gpu"
FAILED_ONCE: set = set()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def random_awq(key, k: int, n: int) -> QuantizedWeight:
    """Random repacked words and zero points (every bit pattern is a valid weight), scales ~1/200."""
    k1, k2, k3 = jax.random.split(key, 3)
    words = jax.lax.bitcast_convert_type(jax.random.bits(k1, (k, n // 8), jnp.uint32), jnp.int32)
    zeros = jax.lax.bitcast_convert_type(jax.random.bits(k2, (k // GROUP, n // 8), jnp.uint32), jnp.int32)
    scales = (0.004 + 0.002 * jax.random.uniform(k3, (k // GROUP, 8, n // 8))).astype(jnp.float16)
    return QuantizedWeight(words, scales, zeros, kind="awq", group_size=GROUP, shape=(k, n))


def to_int4(w: QuantizedWeight):
    """XLA int4 operands: q - 8 as jnp.int4 [K, N], bf16 scales and bf16 (z - 8) [K/G, N]."""
    q = awq_layout.unpack_weight(w.qweight, w.group_size) - 8
    z = awq_layout.unpack_zeros(w.zeros) - 8
    return q.astype(jnp.int4), awq_layout.dense_scales(w.scales).astype(jnp.bfloat16), z.astype(jnp.bfloat16)


def xla_int4(x, w):
    q, s, z = w
    k, n = q.shape
    g = k // s.shape[0]
    wd = ((q.astype(x.dtype).reshape(-1, g, n) - z[:, None]) * s[:, None]).reshape(k, n)
    return jnp.dot(x, wd, preferred_element_type=jnp.float32).astype(x.dtype)


def splits_for(programs: int, k: int, target: int, nb: int) -> int:
    """The fewest K splits giving at least `target` programs that leave every split whole steps of nb blocks."""
    options = [s for s in awq_unpack.split_options(k // 128, 1) if (k // 128 // s) % nb == 0] or [1]
    return next((s for s in options if programs * s >= target), options[-1])


# Swept launch configurations: (bw, nb, programs per SM the K split aims at (0: no split), warps, stages,
# prefetch). Bytes in flight per SM ~ programs per SM x nb x 2 KB (x2 with prefetch) is what they vary.
GEMV_SWEEP = ((32, 2, 2, 4, 3, False), (32, 4, 4, 4, 3, False), (32, 4, 8, 4, 3, False), (32, 8, 8, 4, 3, False),
              (32, 4, 2, 4, 3, True), (32, 4, 4, 4, 1, True), (32, 2, 4, 4, 4, False), (128, 1, 4, 4, 3, False),
              (128, 1, 8, 8, 3, False), (64, 4, 4, 8, 3, False), (64, 1, 4, 4, 3, False), (32, 4, 16, 4, 3, False),
              (128, 1, 8, 4, 3, False), (128, 2, 4, 8, 3, False))
DOT_SWEEP = ((32, 2, 2, 4, 3, False), (32, 4, 4, 4, 3, False), (32, 4, 8, 4, 3, False), (32, 2, 4, 4, 3, True),
             (64, 4, 4, 4, 3, False), (64, 2, 2, 8, 3, True), (16, 4, 8, 4, 3, False), (32, 8, 4, 4, 2, False),
             (32, 4, 4, 4, 1, True), (64, 4, 2, 4, 4, False))


def gemv_configs(m: int, k: int, n: int) -> list:
    if m > awq_gemv.MAX_ROWS or not awq_gemv.supported(m, k, n, GROUP):
        return []
    if ARGS.tuned or ARGS.small:
        return [awq_gemv.default_config(m, k, n, GROUP)]
    out = []
    for bw, nb, per_sm, warps, stages, prefetch in GEMV_SWEEP:
        if (n // 8) % bw:
            continue
        s = splits_for(8 * n // 8 // bw, k, per_sm * NUM_SMS, nb) if per_sm else 1
        cfg = awq_gemv.AwqGemvConfig(bw, nb, s, warps, stages, prefetch)
        if awq_gemv.valid(cfg, k, n, GROUP) and cfg not in out:
            out.append(cfg)
    return out


def dot_configs(m: int, k: int, n: int) -> list:
    if not awq_kernel.supported(m, k, n, GROUP):
        return []
    if ARGS.tuned or ARGS.small:
        return [awq_kernel.default_config(m, k, n, GROUP)]
    bm = min(awq_unpack.rows_pow2(m, 16), 64)
    out = []
    for bw, nb, per_sm, warps, stages, prefetch in DOT_SWEEP:
        if (n // 8) % bw or (bm >= 64 and nb * bw * stages > 384):  # over the shared memory (H200)
            continue
        tiles = -(-m // bm) * 8 * (n // 8 // bw)
        s = splits_for(tiles, k, per_sm * NUM_SMS, nb) if per_sm else 1
        cfg = awq_kernel.AwqKernelConfig(bm, bw, nb, s, warps if bm <= 32 else 8, stages, prefetch)
        if awq_kernel.valid(cfg, k, n, GROUP) and cfg not in out:
            out.append(cfg)
    return out


def candidates(m: int, k: int, n: int, impls: list[str]) -> list:
    """(impl, config, fn(x, w), format) for one case."""
    out = []
    if "dense" in impls:
        out.append(("dense", None, lambda x, w: jnp.dot(x, w), "dense"))
    if "xla_int4" in impls:
        out.append(("xla_int4", None, xla_int4, "int4"))
    if "awq_xla" in impls and (m >= 32 or ARGS.small):
        out.append(("awq_xla", None, awq_matmul_xla, "awq"))
    if "awq_gemv" in impls:
        for cfg in gemv_configs(m, k, n):
            out.append(("awq_gemv", cfg, lambda x, w, c=cfg: awq_gemv.awq_gemv_pallas(x, w, c, INTERPRET), "awq"))
    if "awq_dot" in impls:
        for cfg in dot_configs(m, k, n):
            out.append(("awq_dot", cfg, lambda x, w, c=cfg: awq_kernel.awq_matmul_pallas(x, w, c, INTERPRET), "awq"))
    return out


def compile_many(fn, xs, ws):
    """One program computing fn(xs[i], ws[i % NS]) for every x (own x per product: no CSE, no dot merging)."""
    inner = jax.jit(fn)
    ns = len(ws)

    def many(xs, ws):
        return [inner(xs[i], ws[i % ns]) for i in range(len(xs))]

    return jax.jit(many).lower(xs, ws).compile()


def time_call(fn, *args, repeats=5, target_s=0.02, max_calls=100) -> float:
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    calls = int(min(max_calls, max(1, target_s / max(time.perf_counter() - t, 1e-6))))
    return bench_common.best_of(fn, *args, repeats=2 if ARGS.small else repeats, calls=calls)


def nbytes(w) -> int:
    total = 0
    for a in jax.tree_util.tree_leaves(w):
        bits = jnp.iinfo(a.dtype).bits if jnp.issubdtype(a.dtype, jnp.integer) else 8 * a.dtype.itemsize
        total += a.size * bits // 8
    return total


def run_shape(si: int, k: int, n: int, rows: list[int], impls: list[str], records: list) -> None:
    int4_b = k * n // 2
    # Every weight set is used once per call: XLA merges dots that share an operand, so a set used
    # twice would be read once for two products and the dense rows would beat the copy ceiling.
    ns = 2 if ARGS.small else int(min(64, max(4, math.ceil(ARGS.min_bytes / int4_b))))
    passes = 1
    key = jax.random.key(si)
    awq = [random_awq(jax.random.fold_in(key, i), k, n) for i in range(ns)]
    formats = {"awq": awq, "dense": [dequantize_awq(w, jnp.bfloat16) for w in awq],
               "int4": [to_int4(w) for w in awq]}
    ref_w = np.asarray(dequantize_awq(awq[0], jnp.float32))
    floor_us = int4_b / COPY_BW * 1e6 if COPY_BW else None
    log(f"== {k}x{n}: {ns} weight sets x {passes} passes per call")
    for m in rows:
        if time.perf_counter() - T0 > ARGS.budget_s:
            log(f"budget reached: {k}x{n} m={m} skipped")
            continue
        xs = [jax.random.normal(jax.random.fold_in(key, 1000 + j), (m, k), jnp.float32).astype(jnp.bfloat16)
              for j in range(ns * passes)]
        ref = np.asarray(xs[0], np.float32) @ ref_w
        cands = candidates(m, k, n, impls)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:  # Triton and XLA compile in parallel
            futures = [pool.submit(compile_many, fn, xs, formats[fmt]) for _, _, fn, fmt in cands]
        for (impl, cfg, _, fmt), fut in zip(cands, futures):
            rec = dict(shape=f"{k}x{n}", m=m, impl=impl, config=cfg._asdict() if cfg else None)
            try:
                compiled = fut.result()
                y = np.asarray(compiled(xs, formats[fmt])[0], np.float32)
                err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
                t = time_call(compiled, xs, formats[fmt]) / len(xs)
            except Exception as e:  # report and go on
                rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                log(f"{k}x{n} m={m} {impl} {cfg} FAILED {rec['error']}")
                if impl not in FAILED_ONCE:  # the whole message once per formulation
                    FAILED_ONCE.add(impl)
                    print(str(e)[-4000:], flush=True)
                records.append(rec)
                continue
            b = nbytes(formats[fmt][0])
            rec.update(us=t * 1e6, rel_err=err, ok=bool(err < 1e-2), weight_bytes=b, gbps=b / t / 1e9,
                       pct_copy=b / t / COPY_BW * 100 if COPY_BW else None, floor_us=floor_us,
                       pct_int4_floor=floor_us / (t * 1e6) * 100 if floor_us else None)
            records.append(rec)
            print(json.dumps(rec), flush=True)


def print_table(records: list) -> None:
    best = {}
    for r in records:
        if "us" in r and r["ok"]:
            key = (r["shape"], r["m"], r["impl"])
            if key not in best or r["us"] < best[key]["us"]:
                best[key] = r
    dense = {(r["shape"], r["m"]): r["us"] for r in best.values() if r["impl"] == "dense"}
    order = ["dense", "xla_int4", "awq_xla", "awq_gemv", "awq_dot"]
    shapes = list(dict.fromkeys(r["shape"] for r in records))
    print("\n| KxN | M | impl | us | GB/s | % copy | % of 4-bit floor | vs dense | err | config |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(best, key=lambda q: (shapes.index(q[0]), q[1], order.index(q[2]))):
        r = best[key]
        d = dense.get(key[:2])
        c = r["config"]
        cs = " ".join(f"{a}{v}" for a, v in c.items()) if c else ""
        pct = f"{r['pct_copy']:.0f}" if r.get("pct_copy") else "-"
        fl = f"{r['pct_int4_floor']:.0f}" if r.get("pct_int4_floor") else "-"
        print(f"| {r['shape']} | {r['m']} | {r['impl']} | {r['us']:.1f} | {r['gbps']:.0f} | {pct} | {fl} | "
              f"{d / r['us'] if d else float('nan'):.2f}x | {r['rel_err']:.1e} | {cs} |")
    for r in records:
        if "error" in r or ("ok" in r and not r["ok"]):
            print(f"PROBLEM {r['shape']} m={r['m']} {r['impl']} {r['config']}: {r.get('error') or r['rel_err']}")


def main() -> None:
    rows = ARGS.rows or ([1, 8, 32] if ARGS.small else ROWS)
    shapes = SMALL_SHAPES if ARGS.small else SHAPES
    if ARGS.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in ARGS.shapes.split(",")]
    impls = ARGS.impls.split(",")
    log(f"jax {jax.__version__} {jax.devices()[0].device_kind}; copy ceiling "
        f"{(COPY_BW or 0) / 1e12:.2f} TB/s ({COPY_METHOD})")
    records: list = []
    for si, (k, n) in enumerate(shapes):
        if time.perf_counter() - T0 > ARGS.budget_s:
            log(f"budget reached: {k}x{n} skipped")
            continue
        run_shape(si, k, n, rows, impls, records)
    print_table(records)
    if ARGS.out:
        os.makedirs(ARGS.out, exist_ok=True)
        with open(os.path.join(ARGS.out, "bench_awq_matmul.json"), "w") as f:
            json.dump(dict(jax=jax.__version__, device=str(jax.devices()[0].device_kind), copy_bw=COPY_BW,
                           copy_method=COPY_METHOD, date=time.strftime("%Y-%m-%d"), records=records), f, indent=1)


if __name__ == "__main__":
    main()
