"""Benchmark decode paged attention: our Pallas kernel against its peers on one GPU.

Implementations, timed in one process on the same K/V data:

* ``ours``        ``pallas_kernels.paged_attention.paged_attention`` (default launch config)
* ``jax_triton``  ``jax.experimental.pallas.ops.gpu.paged_attention`` (deprecated Triton op;
                  a few launch configs are tried, the best is reported)
* ``cudnn``       ``jax._src.cudnn.fused_attention_stablehlo.paged_attention`` (private API) on
                  its own ``[pages, page, kv_heads, head_dim]`` copy of the same pages
* ``xla``         XLA: gather the pages into a dense cache, then masked softmax attention

Every output is checked against ``paged_attention_reference`` (float32 math) on a few
sequences. Time = best of several repeats of back-to-back calls after warm-up; effective
bandwidth = K+V bytes read / time; the ceiling is a device-to-device copy measured in the
same run (bytes read + written / time).

Usage (GPU)::

    PYTHONPATH=. python3 scripts/bench_paged_attention.py --out results/
    PYTHONPATH=. python3 scripts/bench_paged_attention.py --sweep --out results/   # tune ours
    PYTHONPATH=. python3 scripts/bench_paged_attention.py --kv-cache-dtype fp8 --out results-fp8/

With ``--kv-cache-dtype fp8`` (or fp8_e5m2) the pages are float8: ``ours`` and ``xla`` read them (bandwidth
counted in float8 bytes) and ``ours_bf16`` times ours on bfloat16 pages of the same shapes in the same run.

Writes ``paged_attention_bench.json``, ``.csv``, ``.md`` and ``paged_attention_bandwidth.png``
(if matplotlib is installed) under ``--out``; ``--plot-from FILE.json`` redraws the plot only.

The implementations and their inputs are in ``bench_paged_attention_peers.py``, timing and
the copy ceiling in ``bench_paged_attention_timing.py``, tables and plot in
``bench_paged_attention_report.py`` (next to this script; ``scripts/`` is on ``sys.path``
when it runs).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys
import time
import traceback

from bench_paged_attention_peers import (
    FP8_IMPLS,
    FP8_SCALE,
    HEAD_DIM,
    IMPLS,
    KV_DTYPES,
    PAGE,
    build_impl,
    check,
    cudnn_layout,
    kv_bytes,
    make_sets,
)
from bench_paged_attention_report import markdown_table, plot, sweep_summary
from bench_paged_attention_timing import jax_copy_bandwidths, time_fn, torch_copy_bandwidth


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--batch", default="1,8,64,256")
    p.add_argument("--context", default="512,2048,8192,32768")
    p.add_argument("--heads", default="32/8,64/8", help="query/kv heads pairs")
    p.add_argument("--shapes", default="", help="BxL pairs (e.g. 64x2048,1x8192) instead of batch x context")
    p.add_argument("--impls", default="", help=f"default: {','.join(i for i in IMPLS if i != 'ours_bf16')}, "
                   f"with float8 pages {','.join(FP8_IMPLS)}")
    p.add_argument("--kv-cache-dtype", default="auto", choices=sorted(KV_DTYPES), help="element type of the pages")
    p.add_argument("--max-gb", type=float, default=40.0, help="skip shapes whose K+V exceed this")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target-ms", type=float, default=20.0, help="wall time of one timed repeat")
    p.add_argument("--rotate-mb", type=float, default=256.0, help="rotate input sets until this much K+V")
    p.add_argument("--max-sets", type=int, default=8, help="at most this many rotated input sets")
    p.add_argument("--sweep", action="store_true", help="time launch configs of ours instead of peers")
    p.add_argument("--sweep-configs", default="", help="JSON list of config dicts for --sweep")
    p.add_argument("--no-copy-bw", action="store_true")
    p.add_argument("--plot-from", default="", help="only draw the plot from a results JSON")
    p.add_argument("--plot", default="", help="PNG path (default OUT/paged_attention_bandwidth.png)")
    p.add_argument("--tag", default="paged_attention_bench")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------
# Main loops
# --------------------------------------------------------------------------------------


def run_shape(args, B, L, N, K, impls, sweep_configs, copy_tbps, log):
    import jax
    import jax.numpy as jnp

    from pallas_kernels.kv_quant import is_fp8
    from pallas_kernels.paged_attention import default_config, paged_attention_reference

    kv_dtype = jnp.dtype(KV_DTYPES[args.kv_cache_dtype])
    fp8 = is_fp8(kv_dtype)
    nbytes = kv_bytes(B, L, K, itemsize=kv_dtype.itemsize)
    R = int(min(args.max_sets, max(1, math.ceil(args.rotate_mb * 2**20 / nbytes))))
    sets = make_sets(B, L, N, K, R, kv_dtype=kv_dtype)
    rows = min(B, 4)
    q, kp, vp, bt, lens = sets[0]
    page_scales = {"k_scale": FP8_SCALE, "v_scale": FP8_SCALE} if fp8 else {}
    ref = paged_attention_reference(q[:rows], kp, vp, bt[:rows], lens[:rows], scale=HEAD_DIM**-0.5, **page_scales)
    ref = jax.device_get(ref)
    rec_base = {"B": B, "L": L, "N": N, "K": K, "kv_bytes": nbytes, "sets": R, "kv_dtype": str(kv_dtype)}

    def measure(name, label, fn, use_sets, tol=2e-2):
        rec = {**rec_base, "impl": name, "config": label}
        if name == "ours_bf16":
            rec.update(kv_bytes=kv_bytes(B, L, K), kv_dtype="bfloat16")
        nbytes = rec["kv_bytes"]
        try:
            multi = jax.jit(lambda ss: tuple(fn(s) for s in ss))
            out = multi(use_sets)[0]
            finite_all = bool(jnp.isfinite(out.astype(jnp.float32)).all())
            finite, rel = check(out[:rows], ref)
            t = time_fn(lambda: multi(use_sets), repeats=args.repeats, target_s=args.target_ms / 1e3) / R
            rec.update(
                time_us=t * 1e6,
                tbps=nbytes / t / 1e12,
                ratio_to_copy=(nbytes / t / 1e12) / copy_tbps if copy_tbps else None,
                rel_err=rel,
                ok=bool(finite and finite_all and rel < tol),
            )
            log(
                f"  {name:10s} {label[:100]:100s} {rec['time_us']:9.1f} us {rec['tbps']:5.2f} TB/s"
                f" err {rec['rel_err']:.1e} {'ok' if rec['ok'] else 'BAD'}"
            )
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
            rec["error"] = msg[:400]
            log(f"  {name} {label[:100]}: FAILED {msg[:300]}")
        return rec

    records = []
    if sweep_configs is not None:
        W = L // PAGE
        phase1 = []
        for cfg in sweep_configs:
            [(label, fn)] = build_impl("ours", B, L, N, K, cfg, fp8=fp8)
            phase1.append(measure("ours", label, fn, sets, tolerance(cfg)))
        records += phase1
        good = [r for r in phase1 if r.get("ok")]
        if good:
            best_cfg = json.loads(max(good, key=lambda r: r["tbps"])["config"])
            d = default_config(B, K, W, PAGE, fp8_pages=fp8)
            ppcb = best_cfg.get("pages_per_compute_block", d["pages_per_compute_block"])
            ks = 1
            while ks <= max(1, W // ppcb) and ks <= 128:
                if ks != d["k_splits"]:
                    cfg = {**best_cfg, "k_splits": ks}
                    [(label, fn)] = build_impl("ours", B, L, N, K, cfg, fp8=fp8)
                    records.append(measure("ours", label, fn, sets, tolerance(cfg)))
                ks *= 2
            good = [r for r in records if r.get("ok")]
            best_cfg = json.loads(max(good, key=lambda r: r["tbps"])["config"])
            if best_cfg.get("k_splits", d["k_splits"]) > 1:
                cfg = {**best_cfg, "k_splits": best_cfg.get("k_splits", d["k_splits"]), "combine": "xla"}
                [(label, fn)] = build_impl("ours", B, L, N, K, cfg, fp8=fp8)
                records.append(measure("ours", label, fn, sets, tolerance(cfg)))
        del sets
        return records

    for name in impls:
        try:
            variants = build_impl(name, B, L, N, K, fp8=fp8)
        except Exception as e:
            records.append({**rec_base, "impl": name, "error": f"{type(e).__name__}: {e}"[:300]})
            log(f"  {name}: unavailable: {e}")
            continue
        use_sets = [cudnn_layout(s) for s in sets] if name == "cudnn" else sets
        if name == "ours_bf16" and fp8:  # the dequantized values in bfloat16 pages (exact: 3 < 7 mantissa bits)
            widen = lambda p: (p.astype(jnp.float32) * FP8_SCALE).astype(jnp.bfloat16)
            use_sets = [(q, widen(kp), widen(vp), bt, lens) for q, kp, vp, bt, lens in sets]
        recs = [measure(name, label, fn, use_sets) for label, fn in variants]
        timed = [r for r in recs if "tbps" in r]
        # Peers with several launch configs: keep the fastest correct one.
        best = max(timed, key=lambda r: (r.get("ok", False), r["tbps"])) if timed else recs[0]
        records.append(best)
        del use_sets
    del sets
    return records


def main(argv=None):
    args = parse_args(argv)
    if args.plot_from:
        with open(args.plot_from) as f:
            data = json.load(f)
        plot(data["records"], args.plot or "paged_attention_bandwidth.png", data.get("copy_tbps"))
        return 0
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, f"{args.tag}.log")

    def log(msg):
        print(msg, flush=True)
        with open(log_path, "a") as log_file:
            log_file.write(msg + "\n")

    copy = {}
    if not args.no_copy_bw:
        try:
            c = torch_copy_bandwidth()  # before JAX takes its share of the memory
            if c:
                copy["torch"] = c
                log(f"copy: {c['method']}: {c['tbps']:.2f} TB/s")
        except Exception as e:
            log(f"torch copy failed: {e}")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
    import jax

    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
    log(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    if not args.no_copy_bw:
        try:
            for c in jax_copy_bandwidths():
                copy[c["method"]] = c
                log(f"copy: {c['method']}: {c['tbps']:.2f} TB/s (HLO: {c.get('hlo')})")
        except Exception as e:
            log(f"jax copy failed: {e}")
    memcpy = [c for k, c in copy.items() if "elementwise" not in k]
    ceiling = max(memcpy, key=lambda c: c["tbps"]) if memcpy else None
    copy_tbps = ceiling["tbps"] if ceiling else None
    if ceiling:
        log(f"ceiling: {ceiling['method']} = {copy_tbps:.2f} TB/s")

    default_impls = FP8_IMPLS if args.kv_cache_dtype != "auto" else [i for i in IMPLS if i != "ours_bf16"]
    impls = [i for i in (args.impls or ",".join(default_impls)).split(",") if i]
    sweep_configs = None
    if args.sweep:
        impls = ["ours"]
        sweep_configs = (json.loads(args.sweep_configs) if args.sweep_configs
                         else default_sweep(fp8=args.kv_cache_dtype != "auto"))
    heads = [tuple(int(x) for x in h.split("/")) for h in args.heads.split(",")]
    batches = [int(x) for x in args.batch.split(",")]
    contexts = [int(x) for x in args.context.split(",")]
    records = []
    t_start = time.time()
    if args.shapes:
        pairs = [tuple(int(x) for x in p.split("x")) for p in args.shapes.split(",")]
    else:
        pairs = list(itertools.product(batches, contexts))
    for (N, K), (B, L) in itertools.product(heads, pairs):
        nb = kv_bytes(B, L, K)
        if nb > args.max_gb * 1e9:
            log(f"skip B={B} L={L} {N}/{K}: K+V {nb / 1e9:.1f} GB > {args.max_gb} GB")
            continue
        log(f"B={B} L={L} heads {N}/{K}: K+V {nb / 1e6:.0f} MB  [{time.time() - t_start:.0f} s]")
        try:
            records += run_shape(args, B, L, N, K, impls, sweep_configs, copy_tbps, log)
        except Exception as e:
            log(f"  shape failed: {e}")
            traceback.print_exc()
        jax.clear_caches()
        result = {
            "jax": jax.__version__,
            "device": str(jax.devices()[0]),
            "copy": copy,
            "copy_tbps": copy_tbps,
            "copy_method": ceiling["method"] if ceiling else None,
            "argv": sys.argv,
            "records": records,
        }
        with open(os.path.join(args.out, f"{args.tag}.json"), "w") as f:
            json.dump(result, f, indent=1)
    with open(os.path.join(args.out, f"{args.tag}.csv"), "w", newline="") as f:
        keys = [
            "N",
            "K",
            "B",
            "L",
            "impl",
            "config",
            "time_us",
            "tbps",
            "ratio_to_copy",
            "rel_err",
            "ok",
            "kv_bytes",
            "sets",
            "error",
        ]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)
    if sweep_configs:
        summary = sweep_summary(records)
    else:
        summary = markdown_table(records, copy)
        if ceiling:
            summary += f"\n\nCopy ceiling: {ceiling['method']}, {copy_tbps:.2f} TB/s (read + write)."
    with open(os.path.join(args.out, f"{args.tag}.md"), "w") as f:
        f.write(summary + "\n")
    if not sweep_configs:
        plot(records, args.plot or os.path.join(args.out, "paged_attention_bandwidth.png"), copy_tbps)
    log(summary)
    return 0


def tolerance(cfg: dict) -> float:
    """Relative error a launch config may show: float8 dots round queries and probabilities to e4m3."""
    return 0.12 if str(cfg.get("compute_dtype", "")).startswith("float8") else 2e-2


def default_sweep(fp8: bool = False):
    """Launch configs of ours tried first (at the default k_splits); k_splits is swept after. With float8
    pages (widened to float16 by default) some are also tried widened to bfloat16, and with float8 dots
    (the measured error column says what those cost in accuracy)."""
    cfgs = []
    for ppcb, w, st in [
        (2, 4, 2),  # short contexts: small blocks and a shallow pipeline leave shared memory for more programs
        (2, 4, 3),
        (4, 4, 2),
        (4, 4, 3),
        (4, 8, 3),
        (4, 4, 5),
        (8, 4, 2),
        (8, 4, 3),
        (8, 8, 3),
        (8, 4, 5),
        (8, 8, 5),
        (16, 8, 3),
        (16, 4, 3),
    ]:
        cfgs.append({"pages_per_compute_block": ppcb, "num_warps": w, "num_stages": st, "token_rows": True})
    cfgs.append({"pages_per_compute_block": 8, "num_warps": 4, "num_stages": 2, "token_rows": False})
    if fp8:  # widened to bfloat16 instead, or not widened (float8 dots; e4m3 pages only)
        cfgs += [{"pages_per_compute_block": ppcb, "num_warps": 4, "num_stages": st, "token_rows": True,
                  "compute_dtype": dtype} for ppcb, st in [(4, 3), (8, 3), (8, 5), (16, 3)]
                 for dtype in ("bfloat16", "float8_e4m3fn")]
    return cfgs


if __name__ == "__main__":
    sys.exit(main())
