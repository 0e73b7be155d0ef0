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

Writes ``paged_attention_bench.json``, ``.csv``, ``.md`` and ``paged_attention_bandwidth.png``
(if matplotlib is installed) under ``--out``; ``--plot-from FILE.json`` redraws the plot only.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import math
import os
import sys
import time
import traceback

KV_DTYPE_BYTES = 2  # bf16
PAGE = 16
HEAD_DIM = 128
IMPLS = ("ours", "jax_triton", "cudnn", "xla")
LABELS = {
    "ours": "ours (Pallas)",
    "jax_triton": "JAX Pallas-Triton paged",
    "cudnn": "cuDNN paged",
    "xla": "XLA gather + dense",
}


def kv_bytes(B, L, K, H=HEAD_DIM):
    return B * L * K * H * KV_DTYPE_BYTES * 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--batch", default="1,8,64,256")
    p.add_argument("--context", default="512,2048,8192,32768")
    p.add_argument("--heads", default="32/8,64/8", help="query/kv heads pairs")
    p.add_argument("--shapes", default="", help="BxL pairs (e.g. 64x2048,1x8192) instead of batch x context")
    p.add_argument("--impls", default=",".join(IMPLS))
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


# --------------------------------------------------------------------------------------
# Inputs and implementations
# --------------------------------------------------------------------------------------


def make_sets(B, L, N, K, R, seed=0):
    """R independent input sets: head-major pool [K, B*W + 1, 16, 128] (page 0 = null page),
    random-permutation block tables, every sequence at full context L."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    W = L // PAGE
    P = B * W + 1
    sets = []
    for r in range(R):
        key = jax.random.key(1000 * seed + r)
        kq, kk, kv = jax.random.split(key, 3)
        q = jax.random.normal(kq, (B, N, HEAD_DIM), jnp.bfloat16)
        kp = jax.random.normal(kk, (K, P, PAGE, HEAD_DIM), jnp.bfloat16)
        vp = jax.random.normal(kv, (K, P, PAGE, HEAD_DIM), jnp.bfloat16)
        perm = np.random.default_rng(r + 17 * seed).permutation(B * W) + 1
        bt = jnp.asarray(perm.reshape(B, W).astype(np.int32))
        lens = jnp.full((B,), L, jnp.int32)
        sets.append((q, kp, vp, bt, lens))
    return sets


def cudnn_layout(s):
    """The same pages in cuDNN's layout: K/V [B*W, 16, K, H], page table [B, 1, W, 1]."""
    q, kp, vp, bt, lens = s
    kc = kp[:, 1:].transpose(1, 2, 0, 3)
    vc = vp[:, 1:].transpose(1, 2, 0, 3)
    table = (bt - 1)[:, None, :, None]
    return q, kc, vc, table, lens


def build_impl(name, B, L, N, K, config=None):
    """Returns (list of (config_label, fn(set) -> [B, N, H])); fn is traced inside a jit."""
    import jax
    import jax.numpy as jnp

    scale = HEAD_DIM**-0.5
    W = L // PAGE
    if name == "ours":
        from pallas_kernels.paged_attention import default_config, paged_attention

        cfg = dict(config) if config else {}
        label = json.dumps(cfg or {"default": default_config(B, K, W, PAGE)}, sort_keys=True)

        def ours(s):
            q, kp, vp, bt, lens = s
            return paged_attention(q, kp, vp, bt, lens, scale=scale, **cfg)

        return [(label, ours)]
    if name == "jax_triton":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from jax.experimental.pallas.ops.gpu import paged_attention as jpa
        # (k_splits, pages_per_compute_block): its default, and fewer/more splits.
        cands = []
        for ks, ppcb in ((16, 8), (max(1, min(W // 4, pow2_floor(max(1, 512 // (B * K))))), 4)):
            ks = max(1, min(ks, W))
            while W % ks:
                ks //= 2
            ppcb = max(1, min(ppcb, W // ks))
            while (W // ks) % ppcb:
                ppcb //= 2
            if (ks, ppcb) not in [c[0] for c in cands]:
                cands.append(((ks, ppcb), None))
        out = []
        for (ks, ppcb), _ in cands:

            def jt(s, ks=ks, ppcb=ppcb):
                q, kp, vp, bt, lens = s
                return jpa.paged_attention(
                    q * jnp.asarray(scale, q.dtype),
                    kp,
                    vp,
                    bt,
                    lens,
                    k_splits=ks,
                    pages_per_compute_block=ppcb,
                    interpret=jax.default_backend() == "cpu",
                )

            out.append((json.dumps({"k_splits": ks, "pages_per_compute_block": ppcb}), jt))
        return out
    if name == "cudnn":
        from jax._src.cudnn.fused_attention_stablehlo import MaskType
        from jax._src.cudnn.fused_attention_stablehlo import paged_attention as cudnn_paged

        def cud(s):
            q, kc, vc, table, lens = s
            out = cudnn_paged(
                q[:, None],  # [B, 1, N, H]
                kc,
                vc,
                jnp.ones((q.shape[0],), jnp.int32),
                lens,
                table,
                table,
                scale=scale,
                mask_type=MaskType.PADDING,
                qkv_layout="BTNH",
            )
            if isinstance(out, (tuple, list)):
                out = out[0]
            return out[:, 0]

        return [("{}", cud)]
    if name == "xla":

        def xla(s):
            q, kp, vp, bt, lens = s
            Bq, Nq, H = q.shape
            Kq, _, S, _ = kp.shape
            T = bt.shape[1] * S
            k = kp[:, bt].reshape(Kq, Bq, T, H)  # [K, B, T, H]
            v = vp[:, bt].reshape(Kq, Bq, T, H)
            qg = q.reshape(Bq, Kq, Nq // Kq, H)
            logits = jnp.einsum("bkgh,kbth->bkgt", qg, k, preferred_element_type=jnp.float32) * scale
            valid = jnp.arange(T)[None, :] < lens[:, None]  # [B, T]
            logits = jnp.where(valid[:, None, None, :], logits, -jnp.inf)
            p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            o = jnp.einsum("bkgt,kbth->bkgh", p, v, preferred_element_type=jnp.float32)
            return o.reshape(Bq, Nq, H).astype(q.dtype)

        return [("{}", xla)]
    raise ValueError(name)


def pow2_floor(x):
    return 1 << (int(x).bit_length() - 1)


def check(out_rows, ref_rows):
    import numpy as np

    o = np.asarray(out_rows, np.float32)
    r = np.asarray(ref_rows, np.float32)
    finite = bool(np.isfinite(o).all())
    rel = float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30))
    return finite, rel


# --------------------------------------------------------------------------------------
# Main loops
# --------------------------------------------------------------------------------------


def run_shape(args, B, L, N, K, impls, sweep_configs, copy_tbps, log):
    import jax
    import jax.numpy as jnp

    from pallas_kernels.paged_attention import default_config, paged_attention_reference

    nbytes = kv_bytes(B, L, K)
    R = int(min(args.max_sets, max(1, math.ceil(args.rotate_mb * 2**20 / nbytes))))
    sets = make_sets(B, L, N, K, R)
    rows = min(B, 4)
    q, kp, vp, bt, lens = sets[0]
    ref = paged_attention_reference(q[:rows], kp, vp, bt[:rows], lens[:rows], scale=HEAD_DIM**-0.5)
    ref = jax.device_get(ref)
    rec_base = {"B": B, "L": L, "N": N, "K": K, "kv_bytes": nbytes, "sets": R}

    def measure(name, label, fn, use_sets):
        rec = {**rec_base, "impl": name, "config": label}
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
                ok=bool(finite and finite_all and rel < 2e-2),
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
            [(label, fn)] = build_impl("ours", B, L, N, K, cfg)
            phase1.append(measure("ours", label, fn, sets))
        records += phase1
        good = [r for r in phase1 if r.get("ok")]
        if good:
            best_cfg = json.loads(max(good, key=lambda r: r["tbps"])["config"])
            d = default_config(B, K, W, PAGE)
            ppcb = best_cfg.get("pages_per_compute_block", d["pages_per_compute_block"])
            ks = 1
            while ks <= max(1, W // ppcb) and ks <= 128:
                if ks != d["k_splits"]:
                    cfg = {**best_cfg, "k_splits": ks}
                    [(label, fn)] = build_impl("ours", B, L, N, K, cfg)
                    records.append(measure("ours", label, fn, sets))
                ks *= 2
            good = [r for r in records if r.get("ok")]
            best_cfg = json.loads(max(good, key=lambda r: r["tbps"])["config"])
            if best_cfg.get("k_splits", d["k_splits"]) > 1:
                cfg = {**best_cfg, "k_splits": best_cfg.get("k_splits", d["k_splits"]), "combine": "xla"}
                [(label, fn)] = build_impl("ours", B, L, N, K, cfg)
                records.append(measure("ours", label, fn, sets))
        del sets
        return records

    for name in impls:
        try:
            variants = build_impl(name, B, L, N, K)
        except Exception as e:
            records.append({**rec_base, "impl": name, "error": f"{type(e).__name__}: {e}"[:300]})
            log(f"  {name}: unavailable: {e}")
            continue
        use_sets = [cudnn_layout(s) for s in sets] if name == "cudnn" else sets
        recs = [measure(name, label, fn, use_sets) for label, fn in variants]
        timed = [r for r in recs if "tbps" in r]
        # Peers with several launch configs: keep the fastest correct one.
        best = max(timed, key=lambda r: (r.get("ok", False), r["tbps"])) if timed else recs[0]
        records.append(best)
        del use_sets
    del sets
    return records


def markdown_table(records, copy):
    impls = [i for i in IMPLS if any(r["impl"] == i for r in records)]
    shapes = sorted({(r["N"], r["K"], r["B"], r["L"]) for r in records}, key=lambda s: (s[0], s[2], s[3]))
    head = "| heads q/kv | B | context | K+V MB | " + " | ".join(LABELS[i] for i in impls) + " | best |"
    lines = [head, "|" + " --- |" * (5 + len(impls))]
    for N, K, B, L in shapes:
        cells = []
        best = None
        for i in impls:
            rs = [r for r in records if (r["N"], r["K"], r["B"], r["L"], r["impl"]) == (N, K, B, L, i)]
            r = rs[0] if rs else None
            if r is None:
                cells.append("-")
            elif "tbps" not in r:
                cells.append("fail")
            else:
                pct = f" ({100 * r['ratio_to_copy']:.0f}%)" if r.get("ratio_to_copy") else ""
                mark = "" if r.get("ok") else " WRONG"
                cells.append(f"{r['time_us']:.1f} us, {r['tbps']:.2f} TB/s{pct}{mark}")
                if r.get("ok") and (best is None or r["tbps"] > best[1]):
                    best = (i, r["tbps"])
        mb = kv_bytes(B, L, K) / 1e6
        lines.append(
            f"| {N}/{K} | {B} | {L} | {mb:.0f} | "
            + " | ".join(cells)
            + f" | {LABELS[best[0]] if best else '-'} |"
        )
    return "\n".join(lines)


def plot(records, path, copy_tbps=None):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return False
    heads = sorted({(r["N"], r["K"]) for r in records})
    batches = sorted({r["B"] for r in records})
    fig, axes = plt.subplots(
        len(heads), len(batches), figsize=(4.2 * len(batches), 3.6 * len(heads)), squeeze=False
    )
    styles = {
        "ours": ("C3", "o", "-"),
        "jax_triton": ("C0", "s", "--"),
        "cudnn": ("C2", "^", "-."),
        "xla": ("C7", "x", ":"),
    }
    for (hi, (N, K)), (bi, B) in itertools.product(enumerate(heads), enumerate(batches)):
        ax = axes[hi][bi]
        for impl in IMPLS:
            pts = sorted(
                (r["L"], r["tbps"])
                for r in records
                if (r["N"], r["K"], r["B"], r["impl"]) == (N, K, B, impl) and "tbps" in r and r.get("ok")
            )
            if pts:
                c, m, ls = styles[impl]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color=c,
                    marker=m,
                    linestyle=ls,
                    label=LABELS[impl],
                )
        if copy_tbps:
            ax.axhline(copy_tbps, color="k", linewidth=0.8, alpha=0.5, label="D2D copy")
        ax.set_xscale("log", base=2)
        ax.set_title(f"B={B}, {N}/{K} heads", fontsize=10)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("K+V read, TB/s")
        ax.set_ylim(0, max(5.0, (copy_tbps or 0) * 1.1))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Decode paged attention on an NVIDIA H200 (bf16, head dim 128, page 16)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")
    return True


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

    impls = [i for i in args.impls.split(",") if i]
    sweep_configs = None
    if args.sweep:
        impls = ["ours"]
        sweep_configs = json.loads(args.sweep_configs) if args.sweep_configs else default_sweep()
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


def default_sweep():
    """Launch configs of ours tried first (at the default k_splits); k_splits is swept after."""
    cfgs = []
    for ppcb, w, st in [
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
    return cfgs


def sweep_summary(records):
    lines = []
    shapes = sorted({(r["N"], r["K"], r["B"], r["L"]) for r in records})
    for shape in shapes:
        rs = [r for r in records if (r["N"], r["K"], r["B"], r["L"]) == shape and "tbps" in r and r.get("ok")]
        rs.sort(key=lambda r: -r["tbps"])
        lines.append(f"N/K={shape[0]}/{shape[1]} B={shape[2]} L={shape[3]}:")
        for r in rs[:5]:
            lines.append(f"   {r['tbps']:.2f} TB/s {r['time_us']:8.1f} us  {r['config']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
