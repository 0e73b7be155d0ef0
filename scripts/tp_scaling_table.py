"""The table of scripts/tp_scaling.sh from its JSON results (benchmark_latency.py, one file per TP and batch).

Usage: python scripts/tp_scaling_table.py OUT BATCH... -- TP...   (the first TP is the reference)
"""

from __future__ import annotations

import json
import os
import sys

# (batch, tp) -> the bound each row is checked against: step-time ratio at batch 1, speedup at batch 64.
TARGETS = {(1, 2): ("step", 0.60), (1, 4): ("step", 0.35), (64, 2): ("speedup", 1.8), (64, 4): ("speedup", 3.4)}


def table(out: str, batches: list[int], sizes: list[int]) -> str:
    rows = ["| TP | batch | ms / step | tok/s | step vs TP=%d | speedup | target | greedy tokens equal |" % sizes[0],
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in batches:
        results = {}
        for tp in sizes:
            path = os.path.join(out, f"tp{tp}_b{b}.json")
            if os.path.exists(path):
                with open(path) as f:
                    results[tp] = json.load(f)
        ref = results.get(sizes[0])
        for tp in sizes:
            r = results.get(tp)
            if r is None:
                rows.append(f"| {tp} | {b} | failed | | | | | |")
                continue
            ratio = r["decode_ms_per_step"] / ref["decode_ms_per_step"] if ref else float("nan")
            same = "—"
            if ref:
                a, g = ref["greedy_tokens_prompt0"], r["greedy_tokens_prompt0"]
                same = f"{sum(x == y for x, y in zip(a, g))}/{len(a)}"
            kind, bound = TARGETS.get((b, tp), (None, None))
            met = ""
            if kind == "step":
                met = f"≤ {bound:.2f}x: {'met' if ratio <= bound else 'missed'}"
            elif kind == "speedup":
                met = f"≥ {bound:.1f}x: {'met' if 1 / ratio >= bound else 'missed'}"
            rows.append(f"| {tp} | {b} | {r['decode_ms_per_step']:.2f} | {r['output_tokens_per_s']:.0f} | "
                        f"{ratio:.2f}x | {1 / ratio:.2f}x | {met} | {same} |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    out, batches, sizes = argv[0], [int(b) for b in argv[1:split]], [int(t) for t in argv[split + 1:]]
    if not sizes or not batches:
        raise SystemExit("usage: tp_scaling_table.py OUT BATCH... -- TP...")
    print(table(out, batches, sizes))


if __name__ == "__main__":
    main(sys.argv[1:])
