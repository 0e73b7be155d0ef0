"""Per-request records and aggregate metrics of scripts/benchmark_serving.py, as `vllm bench serve` has them.

    TTFT   time to first token: from sending the request to the first streamed chunk with a choice
    ITL    inter-token latency: the gap between two consecutive streamed chunks (one gap per chunk,
           whatever the number of tokens the chunk carries; `tokens_per_chunk` tells how many it did)
    TPOT   time per output token after the first: (E2EL - TTFT) / (output tokens - 1), per request
    E2EL   end-to-end latency: from sending the request to its last chunk

Output tokens are the server's `usage.completion_tokens`. Throughputs divide by the wall time of the
whole run, from the first request sent to the last one finished.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

METRICS = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
           "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}


@dataclass
class RequestResult:
    """What one streamed request measured (times in seconds, from time.perf_counter)."""

    prompt_len: int
    output_len: int  # max_tokens asked for
    success: bool = False
    output_tokens: int = 0  # usage.completion_tokens (or the tokens counted in the chunks)
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    start: float = 0.0
    chunks: int = 0
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def percentile_label(p: float) -> str:
    return f"p{int(p)}" if float(p).is_integer() else f"p{p}"


@dataclass
class BenchmarkMetrics:
    """The aggregate of one run (one concurrency level). `latency_ms[metric][stat]`, stat in mean, median,
    std and the percentile labels (p99, ...)."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    max_concurrent_requests: int  # the most requests in flight at once, as the client saw them
    tokens_per_chunk: float
    client_cpu_s: float  # the benchmark process's CPU time during the run: near duration_s, the client limits
    latency_ms: dict[str, dict[str, float]]

    def to_json(self) -> dict:
        """vLLM's result keys: completed, failed, duration, ..., mean_ttft_ms, p99_itl_ms, ..."""
        out = {
            "completed": self.completed, "failed": self.failed, "duration": self.duration_s,
            "total_input_tokens": self.total_input_tokens, "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput, "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "max_concurrent_requests": self.max_concurrent_requests,
            "tokens_per_chunk": self.tokens_per_chunk, "client_cpu_s": self.client_cpu_s,
        }
        for metric, stats in self.latency_ms.items():
            for stat, value in stats.items():
                out[f"{stat}_{metric}_ms"] = value
        return out


def _stats(values_s: list[float], percentiles: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s or [0.0], dtype=np.float64) * 1000.0
    out = {"mean": float(ms.mean()), "median": float(np.median(ms)), "std": float(ms.std())}
    for p in percentiles:
        out[percentile_label(p)] = float(np.percentile(ms, p))
    return out


def max_in_flight(results: list[RequestResult]) -> int:
    """The largest number of requests between send and last chunk at the same moment."""
    events = sorted([(r.start, 1) for r in results] + [(r.start + r.latency, -1) for r in results])
    peak = now = 0
    for _, step in events:  # an end sorts before a start at the same instant
        now += step
        peak = max(peak, now)
    return peak


def calculate_metrics(results: list[RequestResult], duration_s: float, metrics: list[str],
                      percentiles: list[float], client_cpu_s: float = 0.0) -> BenchmarkMetrics:
    ok = [r for r in results if r.success]
    per_metric = {
        "ttft": [r.ttft for r in ok],
        "tpot": [r.tpot for r in ok if r.tpot is not None],
        "itl": [gap for r in ok for gap in r.itl],
        "e2el": [r.latency for r in ok],
    }
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    chunks = sum(r.chunks for r in ok)
    return BenchmarkMetrics(
        completed=len(ok), failed=len(results) - len(ok), duration_s=duration_s,
        total_input_tokens=total_in, total_output_tokens=total_out,
        request_throughput=len(ok) / duration_s, output_throughput=total_out / duration_s,
        total_token_throughput=(total_in + total_out) / duration_s,
        max_concurrent_requests=max_in_flight(ok), tokens_per_chunk=total_out / chunks if chunks else 0.0,
        client_cpu_s=client_cpu_s,
        latency_ms={m: _stats(per_metric[m], percentiles) for m in metrics},
    )


def summary(m: BenchmarkMetrics, max_concurrency: int | None, request_rate: float,
            percentiles: list[float]) -> str:
    """The result block `vllm bench serve` prints."""
    lines = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]

    def row(name: str, value: object, fmt: str = "") -> None:
        lines.append(f"{name + ':':<40} {value:<10{fmt}}")

    row("Successful requests", m.completed)
    row("Failed requests", m.failed)
    row("Maximum request concurrency", "none" if max_concurrency is None else max_concurrency)
    row("Request rate configured (RPS)", request_rate, ".2f")
    row("Benchmark duration (s)", m.duration_s, ".2f")
    row("Total input tokens", m.total_input_tokens)
    row("Total generated tokens", m.total_output_tokens)
    row("Request throughput (req/s)", m.request_throughput, ".2f")
    row("Output token throughput (tok/s)", m.output_throughput, ".2f")
    row("Total Token throughput (tok/s)", m.total_token_throughput, ".2f")
    row("Peak concurrent requests", m.max_concurrent_requests)
    row("Tokens per streamed chunk", m.tokens_per_chunk, ".2f")
    row("Client CPU time (s)", m.client_cpu_s, ".2f")
    for metric, stats in m.latency_ms.items():
        lines.append("{s:{c}^50}".format(s=METRICS[metric], c="-"))
        name = metric.upper()
        row(f"Mean {name} (ms)", stats["mean"], ".2f")
        row(f"Median {name} (ms)", stats["median"], ".2f")
        for p in percentiles:
            label = percentile_label(p)
            row(f"P{label[1:]} {name} (ms)", stats[label], ".2f")
    lines.append("=" * 50)
    return "\n".join(lines)


def table_header(metrics: list[str], percentiles: list[float]) -> str:
    cols = ["max concurrency", "ok", "failed", "req/s", "output tok/s", "total tok/s"]
    for metric in metrics:
        name = metric.upper()
        cols += [f"mean {name} ms"] + [f"{percentile_label(p)} {name} ms" for p in percentiles]
    return "| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols)


def table_row(m: BenchmarkMetrics, max_concurrency: int | None, metrics: list[str],
              percentiles: list[float]) -> str:
    cells = ["none" if max_concurrency is None else str(max_concurrency), str(m.completed), str(m.failed),
             f"{m.request_throughput:.2f}", f"{m.output_throughput:.1f}", f"{m.total_token_throughput:.1f}"]
    for metric in metrics:
        stats = m.latency_ms[metric]
        cells += [f"{stats['mean']:.2f}"] + [f"{stats[percentile_label(p)]:.2f}" for p in percentiles]
    return "| " + " | ".join(cells) + " |"


def result_json(args: argparse.Namespace, model: str, level: int | None, m: BenchmarkMetrics,
                results: list[RequestResult]) -> dict:
    """The result file of one level: the run's settings and vLLM's metric keys (per request with
    --save-detailed: input_lens, output_lens, ttfts, itls, e2els, errors; seconds)."""
    out = {"date": datetime.now().strftime("%Y%m%d-%H%M%S"), "backend": "jaxllm", "endpoint": args.endpoint,
           "model_id": model, "dataset_name": "random", "random_input_len": args.random_input_len,
           "random_output_len": args.random_output_len, "random_range_ratio": args.random_range_ratio,
           "num_prompts": len(results), "burstiness": args.burstiness,
           "max_concurrency": level, "ignore_eos": args.ignore_eos, "seed": args.seed,
           "request_rate": args.request_rate if args.request_rate < float("inf") else "inf", **m.to_json()}
    if args.save_detailed:
        out.update(input_lens=[r.prompt_len for r in results], output_lens=[r.output_tokens for r in results],
                   ttfts=[r.ttft for r in results], itls=[r.itl for r in results],
                   e2els=[r.latency for r in results], errors=[r.error for r in results])
    return out
