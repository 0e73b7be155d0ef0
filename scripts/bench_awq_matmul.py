"""Micro-benchmark of the quantized matmuls against the bf16 dense one (one GPU, or a CPU smoke run).

For each weight shape K x N and each number of rows M it times, on the same random data:

    dense        x @ W, W bf16 [K, N]                                   (2 bytes a weight)
    awq_xla      jaxllm.quantization.awq.awq_matmul_xla                 (0.5 byte a weight + scales/zeros)
    awq_pallas   jaxllm.quantization.awq_kernel.awq_matmul_pallas       (default launch config; GPU, or
                                                                         interpret mode with --small)
    awq_gemv     jaxllm.quantization.awq_gemv.awq_gemv_pallas           (M <= 8 only; same)
    int8, fp8    jaxllm.quantization.matmul.channel_matmul              (1 byte a weight + [N] scales)

and reports the time, the weight bytes read per second (the stored bytes of each format over the
time) against the device-to-device copy bandwidth measured in the same run, and the speed-up over
dense. Every output is checked against a float32 product with the dequantized weight. Each timed
call multiplies by several independent weight sets (at least 256 MB of weights together), so the
weights come from memory, not from the 60 MB L2. The compiled HLO of each candidate is summarised
(which fusions / GEMM custom calls XLA made), to see whether the dequantization fused into the GEMM.

    PYTHONUNBUFFERED=1 python3 scripts/bench_awq_matmul.py --sweep --out $OUT  # on the GPU machine
    python scripts/bench_awq_matmul.py --small                                 # CPU smoke run

`--sweep` also times a grid of Pallas launch configurations per case (started only while the run is
under --budget-s seconds, so one call fits a 10-minute limit). Prints one JSON line per measurement,
a summary table and a last JSON line with a per-M recommendation; with `--out DIR` also writes
DIR/bench_awq_matmul.jsonl as it goes and DIR/bench_awq_matmul.json at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_common  # scripts/ is on sys.path when this file runs as a script
import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.quantization import awq_gemv, awq_kernel
from jaxllm.quantization.awq import awq_matmul_xla, dequantize_awq, from_checkpoint
from jaxllm.quantization.matmul import channel_matmul
from jaxllm.quantization.weights import quantize_per_channel

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]
SMALL_SHAPES = [(256, 512)]
ROWS = [1, 32, 256]
GROUP = 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="*", default=ROWS, help="M values (default 1 32 256)")
    p.add_argument("--group", type=int, default=GROUP)
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
    p.add_argument("--sweep", action="store_true", help="also time several Pallas launch configurations")
    p.add_argument("--min-bytes", type=float, default=256e6, help="weight bytes per timed call (L2 defeat)")
    p.add_argument("--out", default=None, help="folder for bench_awq_matmul.json (and .jsonl, written as it goes)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="start no further sweep configuration after this many seconds (default 540)")
    p.add_argument("--no-copy-bw", action="store_true")
    p.add_argument("--impls", default=None, help="comma-separated subset of dense,awq_xla,awq_pallas,awq_gemv,int8,fp8")
    return p.parse_args(argv)


def copy_bandwidth() -> dict:
    """The device-to-device copy ceiling of `bench_common` (a real memcpy where CUDA torch exists), as a record."""
    bytes_per_s, method = bench_common.copy_bandwidth()
    return {"bytes_per_s": bytes_per_s, "method": method}


def time_call(fn, *args, repeats=5, target_s=0.02, max_calls=200) -> float:
    """Best seconds per call: repeats of back-to-back calls of at least target_s each, after warm-up."""
    out = fn(*args)
    jax.block_until_ready(out)
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = max(time.perf_counter() - t, 1e-6)
    calls = int(min(max_calls, max(1, target_s / one)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def hlo_summary(fn, *args) -> str:
    """What XLA made of it: GEMM custom calls, Triton GEMM fusions and the number of fusions."""
    try:
        text = jax.jit(fn).lower(*args).compile().as_text()
    except Exception as e:
        return f"(no HLO: {type(e).__name__})"
    targets = sorted(set(re.findall(r'custom_call_target="([^"]+)"', text)))
    kinds = sorted(set(re.findall(r'"kind":"(__triton[^"]*)"', text)))
    fusions = len(re.findall(r"\bfusion\(", text))
    return f"custom_calls={targets} triton_kinds={kinds} fusions={fusions}"


def make_weights(k: int, n: int, group: int, sets: int, seed: int = 0):
    """`sets` independent weights of each format on the device, and the float32 dense first weight.

    AWQ words and zero points are uniformly random (every nibble 0..15), scales about 1/200; the dense,
    int8 and fp8 weights are the AWQ weight dequantized (then requantized per channel).
    """
    rng = np.random.default_rng(seed)
    deq = jax.jit(lambda w: dequantize_awq(w, jnp.bfloat16))
    per_channel = jax.jit(quantize_per_channel, static_argnums=1)
    dense, awq, i8, f8 = [], [], [], []
    for _ in range(sets):
        words = rng.integers(0, 2**32, (k, n // 8), dtype=np.uint64).astype(np.uint32).view(np.int32)
        zeros = rng.integers(0, 2**32, (k // group, n // 8), dtype=np.uint64).astype(np.uint32).view(np.int32)
        scales = (0.004 + 0.002 * rng.random((k // group, n))).astype(np.float16)
        w = jax.device_put(from_checkpoint("bench", words, zeros, scales, group))
        wb = deq(w)
        awq.append(w)
        dense.append(wb)
        i8.append(per_channel(wb, "int8"))
        f8.append(per_channel(wb, "fp8"))
    ref = np.asarray(jax.jit(lambda w: dequantize_awq(w, jnp.float32))(awq[0]))
    return dense, awq, i8, f8, ref


def stored_bytes(w) -> int:
    return sum(int(a.nbytes) for a in jax.tree_util.tree_leaves(w))


def rel_err(y, ref) -> float:
    y = np.asarray(y, np.float32)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def sweep_configs(m: int, k: int, n: int, group: int, small: bool = False) -> list:
    n8 = n // 8
    bm = min(awq_kernel._pow2_at_least(m, 16), 64)
    bk = awq_kernel._step_rows(group)
    out = []
    for bw in (16, 32, 64):
        if n8 % bw:
            continue
        for splits in (1, 2, 4, 8, 16, 32):
            if not awq_kernel._valid_split(k, group, bk, splits):
                continue
            tiles = (-(-m // bm)) * (n8 // bw) * splits
            if not small and (tiles < 64 or tiles > 2048):
                continue
            for warps, stages in ((4, 3), (4, 4)) if bm <= 32 else ((4, 3), (8, 3)):
                out.append(awq_kernel.AwqKernelConfig(bm, bw, bk, splits, warps, stages))
    return out


def main(argv=None):
    args = parse_args(argv)
    backend = jax.default_backend()
    on_gpu = backend == "gpu"
    shapes = SMALL_SHAPES if args.small else SHAPES
    group = min(args.group, 64) if args.small else args.group
    device = str(jax.devices()[0].device_kind)
    copy = None if args.no_copy_bw else copy_bandwidth()
    if copy:
        print(f"# copy: {copy['method']}: {copy['bytes_per_s'] / 1e12:.3f} TB/s", flush=True)
    print(f"# jax {jax.__version__}, backend {backend}, device {device}", flush=True)
    records = []
    started = time.perf_counter()
    stream = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stream = open(os.path.join(args.out, "bench_awq_matmul.jsonl"), "w")  # noqa: SIM115 (closed at the end)

    def record(**kw):
        kw.update(device=device, jax=jax.__version__, backend=backend)
        if copy:
            kw["copy_bytes_per_s"] = copy["bytes_per_s"]
            if kw.get("weight_bytes_per_s"):
                kw["ratio_to_copy"] = kw["weight_bytes_per_s"] / copy["bytes_per_s"]
        records.append(kw)
        print(json.dumps(kw), flush=True)
        if stream:
            stream.write(json.dumps(kw) + "\n")
            stream.flush()

    def sets_for(k, n):
        one_awq = k * n // 2 + (k // group) * n * 2 + (k // group) * n // 2
        return int(min(32, max(2, -(-args.min_bytes // one_awq))))

    def inputs(k, m):
        x = jnp.asarray(np.random.default_rng(m).standard_normal((m, k)), jnp.bfloat16)
        return x, np.asarray(x, np.float32)

    dense_us = {}
    for k, n in shapes:
        dense, awq, i8, f8, ref = make_weights(k, n, group, sets_for(k, n))
        for m in args.rows:
            x, xr = inputs(k, m)
            ref0 = xr @ ref
            cands = {
                "dense": (lambda x, ws: [x @ w for w in ws], dense),
                "awq_xla": (lambda x, ws: [awq_matmul_xla(x, w) for w in ws], awq),
                "int8": (lambda x, ws: [channel_matmul(x, w) for w in ws], i8),
                "fp8": (lambda x, ws: [channel_matmul(x, w) for w in ws], f8),
            }
            if (on_gpu or args.small) and awq_kernel.supported(m, k, n, group):  # interpret mode on CPU
                cands["awq_pallas"] = (lambda x, ws: [awq_kernel.awq_matmul_pallas(x, w) for w in ws], awq)
            if (on_gpu or args.small) and awq_gemv.supported(m, k, n, group):
                cands["awq_gemv"] = (lambda x, ws: [awq_gemv.awq_gemv_pallas(x, w) for w in ws], awq)
            for name, (fn, ws) in cands.items():
                if args.impls and name not in args.impls.split(",") and name != "dense":
                    continue
                try:
                    jf = jax.jit(fn)
                    err = rel_err(jf(x, ws[:1])[0], ref0)
                    t = time_call(jf, x, ws) / len(ws)
                except Exception as e:  # report and go on
                    record(shape=[k, n], m=m, impl=name, error=f"{type(e).__name__}: {str(e)[:300]}")
                    continue
                if name == "dense":
                    dense_us[(k, n, m)] = t * 1e6
                nbytes = stored_bytes(ws[0])
                record(
                    shape=[k, n], m=m, group=group, impl=name, us=t * 1e6, rel_err=err,
                    weight_bytes=nbytes, weight_bytes_per_s=nbytes / t, dense_equiv_bytes_per_s=2 * k * n / t,
                    tflops=2 * m * k * n / t / 1e12, speedup_vs_dense=dense_us.get((k, n, m), t * 1e6) / (t * 1e6),
                    hlo=hlo_summary(fn, x, ws[:1]),
                )
        del dense, awq, i8, f8
    print_table(records)

    if args.sweep and (on_gpu or args.small):
        for k, n in shapes:
            _, awq, _, _, ref = make_weights(k, n, group, sets_for(k, n))
            for m in args.rows:
                x, xr = inputs(k, m)
                ref0 = xr @ ref
                for cfg in sweep_configs(m, k, n, group, args.small)[: 4 if args.small else None]:
                    if time.perf_counter() - started > args.budget_s:
                        break
                    try:
                        jf = jax.jit(lambda x, ws, cfg=cfg: [awq_kernel.awq_matmul_pallas(x, w, config=cfg) for w in ws])
                        err = rel_err(jf(x, awq[:1])[0], ref0)
                        t = time_call(jf, x, awq, repeats=3) / len(awq)
                    except Exception as e:  # a configuration Triton rejects: report and go on
                        record(shape=[k, n], m=m, impl="awq_pallas_sweep", config=list(cfg),
                               error=f"{type(e).__name__}: {str(e)[:200]}")
                        continue
                    nbytes = stored_bytes(awq[0])
                    record(shape=[k, n], m=m, group=group, impl="awq_pallas_sweep", config=list(cfg), us=t * 1e6,
                           rel_err=err, weight_bytes_per_s=nbytes / t,
                           speedup_vs_dense=dense_us.get((k, n, m), t * 1e6) / (t * 1e6))
            del awq
        print_sweep(records)

    summary = {"summary": True, "copy": copy, "records": len(records), "device": device, "jax": jax.__version__,
               "seconds": time.perf_counter() - started, "recommendation": recommend(records)}
    print(json.dumps(summary))
    if stream:
        stream.close()
        with open(os.path.join(args.out, "bench_awq_matmul.json"), "w") as f:
            json.dump({"copy": copy, "records": records, "summary": summary}, f, indent=1)


def print_table(records: list) -> None:
    rows = [r for r in records if "us" in r and r["impl"] != "awq_pallas_sweep"]
    print("\n| K x N | M | impl | us | weight GB/s | % of copy | vs dense | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        pct = f"{100 * r['ratio_to_copy']:.0f}%" if r.get("ratio_to_copy") else "-"
        print(f"| {r['shape'][0]}x{r['shape'][1]} | {r['m']} | {r['impl']} | {r['us']:.1f} | "
              f"{r['weight_bytes_per_s'] / 1e9:.0f} | {pct} | {r['speedup_vs_dense']:.2f}x | {r['rel_err']:.1e} |")


def print_sweep(records: list) -> None:
    sweeps = [r for r in records if r["impl"] == "awq_pallas_sweep" and "us" in r]
    if not sweeps:
        return
    print("\nBest Pallas configs (bm, bw, bk, splits, warps, stages):")
    for key in sorted({(tuple(r["shape"]), r["m"]) for r in sweeps}):
        best = min((r for r in sweeps if (tuple(r["shape"]), r["m"]) == key), key=lambda r: r["us"])
        print(f"  {key[0][0]}x{key[0][1]} M={key[1]}: {best['config']} {best['us']:.1f} us "
              f"({best['speedup_vs_dense']:.2f}x dense)")


def recommend(records: list) -> dict:
    """Per M: which AWQ formulation was faster on every shape (the kernel is used up to PALLAS_MAX_ROWS)."""
    out = {}
    timed = [r for r in records if "us" in r and r["impl"] in ("awq_xla", "awq_pallas")]
    for m in sorted({r["m"] for r in timed}):
        by_shape: dict = {}
        for r in timed:
            if r["m"] == m:
                by_shape.setdefault(tuple(r["shape"]), {})[r["impl"]] = r["us"]
        wins = [v.get("awq_pallas", float("inf")) < v.get("awq_xla", float("inf")) for v in by_shape.values()]
        out[str(m)] = "pallas" if wins and all(wins) else ("xla" if not any(wins) else "mixed")
    return out


if __name__ == "__main__":
    main()
