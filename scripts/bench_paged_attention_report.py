"""Reports of ``bench_paged_attention.py``: the markdown tables and the bandwidth plot."""

from __future__ import annotations

import itertools

from bench_paged_attention_peers import IMPLS, LABELS


def markdown_table(records, copy):
    impls = [i for i in IMPLS if any(r["impl"] == i for r in records)]
    shapes = sorted({(r["N"], r["K"], r["B"], r["L"]) for r in records}, key=lambda s: (s[0], s[2], s[3]))
    # With float8 pages in the run: the time of ours on bfloat16 pages over its time on float8 pages.
    speedup = "ours" in impls and "ours_bf16" in impls
    head = "| heads q/kv | B | context | K+V MB | " + " | ".join(LABELS[i] for i in impls) + " | best |"
    head += " bf16 / fp8 time |" if speedup else ""
    lines = [head, "|" + " --- |" * (5 + len(impls) + speedup)]
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
        shape_recs = [r for r in records if (r["N"], r["K"], r["B"], r["L"]) == (N, K, B, L)]
        mb = min(r["kv_bytes"] for r in shape_recs) / 1e6  # the float8 size in a float8 run
        line = f"| {N}/{K} | {B} | {L} | {mb:.0f} | " + " | ".join(cells) + f" | {LABELS[best[0]] if best else '-'} |"
        if speedup:
            t = {r["impl"]: r.get("time_us") for r in shape_recs}
            line += f" {t['ours_bf16'] / t['ours']:.2f}x |" if t.get("ours") and t.get("ours_bf16") else " - |"
        lines.append(line)
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
        "ours_bf16": ("C1", "D", "-"),
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
