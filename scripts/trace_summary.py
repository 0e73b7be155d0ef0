"""Where a compiled step's device time goes, from a `jax.profiler` trace (perfetto JSON, no extra tools).

    python scripts/trace_summary.py TRACE_DIR --steps 20

Sums the device's kernel events by name: busy time per step, kernels per step and the top names, so
launch gaps (wall time per step minus busy time) show next to the kernels that fill the rest.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os


def device_events(trace_dir: str) -> list[dict]:
    """The complete ('X') events of every accelerator process in the newest perfetto trace under trace_dir."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in names.items() if "GPU" in name or "TPU" in name or "/device:" in name}
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in devices and "dur" in e]


LONG_GAP_US = 100.0


def _gaps(events: list[dict]) -> list[tuple[float, float, str, str]]:
    """Every idle gap between the device's kernels, over the union of their intervals (streams that
    overlap count once): (length us, start us from the first kernel, kernel before, kernel after)."""
    ordered = sorted(events, key=lambda e: float(e["ts"]))
    start = float(ordered[0]["ts"])
    gaps, reach, last = [], start + float(ordered[0]["dur"]), ordered[0]
    for e in ordered[1:]:
        begin = float(e["ts"])
        if begin > reach:
            gaps.append((begin - reach, reach - start, last["name"], e["name"]))
        if begin + float(e["dur"]) >= reach:
            reach, last = begin + float(e["dur"]), e
    return gaps


def idle_gaps(events: list[dict]) -> tuple[float, float, int]:
    """(idle us in gaps up to LONG_GAP_US, idle us in longer gaps, how many longer gaps)."""
    lengths = [gap for gap, *_ in _gaps(events)]
    long_ = [gap for gap in lengths if gap > LONG_GAP_US]
    return sum(lengths) - sum(long_), sum(long_), len(long_)


def longest_gaps(events: list[dict], count: int = 12) -> list[str]:
    """The `count` longest idle gaps: how long, when (ms from the first kernel), and the kernels either side."""
    return [f"  {gap / 1e3:.3f} ms at {at / 1e3:.1f} ms: {before[:50]} -> {after[:50]}"
            for gap, at, before, after in sorted(_gaps(events), reverse=True)[:count]]


def summarize(events: list[dict], steps: int, top: int = 25) -> str:
    if not events:
        return "no device events in the trace (CPU backend?)"
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        by_name[e["name"]].append(float(e["dur"]))
    busy = sum(sum(v) for v in by_name.values())
    start = min(float(e["ts"]) for e in events)
    end = max(float(e["ts"]) + float(e["dur"]) for e in events)
    short, long_, n_long = idle_gaps(events)
    lines = [f"device: {len(events) / steps:.0f} events a step, busy {busy / steps / 1e3:.3f} ms a step, "
             f"span {(end - start) / steps / 1e3:.3f} ms a step (span - busy = gaps between kernels)",
             f"idle: {(short + long_) / 1e3:.1f} ms in all, {long_ / 1e3:.1f} ms of it in {n_long} gaps over "
             f"{LONG_GAP_US:.0f} us (the device waiting for the host), {short / 1e3:.1f} ms in shorter ones (launches)",
             "| kernel | calls a step | ms a step | share of busy |", "| --- | --- | --- | --- |"]
    lines[2:2] = ["longest idle gaps:", *longest_gaps(events)]
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    for name, durs in ranked[:top]:
        lines.append(f"| {name[:90]} | {len(durs) / steps:.1f} | {sum(durs) / steps / 1e3:.4f} | "
                     f"{100 * sum(durs) / busy:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("trace_dir")
    p.add_argument("--steps", type=int, default=1, help="how many steps the trace holds (to print per-step figures)")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    print(summarize(device_events(args.trace_dir), args.steps, args.top))


if __name__ == "__main__":
    main()
