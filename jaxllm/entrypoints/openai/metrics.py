"""GET /metrics: Prometheus metrics under vLLM's names (`vllm:` prefix), so vLLM dashboards work unchanged.

Every server has its own `CollectorRegistry` (several servers can live in one process). The engine
thread feeds `record()` after each loop iteration; prometheus_client's metrics are thread-safe.

    vllm:num_requests_running        gauge      sequences in the running batch
    vllm:num_requests_waiting        gauge      sequences queued or preempted
    vllm:kv_cache_usage_perc         gauge      fraction of KV-cache pages in use (0..1)
    vllm:gpu_cache_usage_perc        gauge      the same, under the name of vLLM < 0.10
    vllm:prompt_tokens_total         counter    prompt tokens of started requests
    vllm:generation_tokens_total     counter    generated tokens
    vllm:num_preemptions_total       counter    sequences preempted for lack of KV pages
    vllm:request_success_total       counter    finished requests, label finished_reason
    vllm:time_to_first_token_seconds histogram  arrival to first token
    vllm:inter_token_latency_seconds histogram  between consecutive outputs of a request
    vllm:e2e_request_latency_seconds histogram  arrival to finish
    vllm:request_prompt_tokens       histogram  prompt length per finished request
    vllm:request_generation_tokens   histogram  output length per finished request
    vllm:cache_config_info           gauge (1)  labels block_size, num_gpu_blocks (usable KV pages),
                                                enable_prefix_caching: pages in use =
                                                kv_cache_usage_perc * num_gpu_blocks
"""

from __future__ import annotations

import logging
import threading
import time

from jaxllm.engine.stats import EngineSnapshot, IterationStats

logger = logging.getLogger(__name__)

_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0]
_E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0]


def _token_buckets(max_model_len: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_model_len (vLLM's 1-2-5 series)."""
    buckets, scale = [], 1
    while True:
        for m in (1, 2, 5):
            value = m * scale
            if value > max_model_len:
                return buckets
            buckets.append(value)
        scale *= 10


class PrometheusStatLogger:
    """Engine statistics as Prometheus metrics in a registry of its own."""

    def __init__(self, model_name: str, max_model_len: int, registry=None, cache_info: dict | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["model_name"]
        reg = self.registry

        def gauge(name, doc):
            return Gauge(name, doc, labels, registry=reg).labels(model_name)

        def counter(name, doc):
            return Counter(name, doc, labels, registry=reg).labels(model_name)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(model_name)

        self.running = gauge("vllm:num_requests_running", "Number of requests in the running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.gpu_usage = gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (older name). 1 means 100 percent.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.prefix_queries = counter("vllm:prefix_cache_queries",
                                      "Prefix cache queries, in prompt tokens looked up.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in prompt tokens found.")
        self.prefix_hit_rate = gauge("vllm:prefix_cache_hit_rate",
                                     "Share of looked-up prompt tokens found in the prefix cache since start.")
        self._prefix_seen = (0, 0)
        self._success = Counter("vllm:request_success", "Count of finished requests.",
                                labels + ["finished_reason"], registry=reg)
        for reason in ("stop", "length", "abort", "error"):
            self._success.labels(model_name, reason)
        self._model_name = model_name
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token in seconds.",
                              _TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", _ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End to end request latency in seconds.",
                             _E2E_BUCKETS)
        token_buckets = _token_buckets(max_model_len)
        self.request_prompt = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                        token_buckets)
        self.request_generation = histogram("vllm:request_generation_tokens",
                                            "Number of generation tokens processed.", token_buckets)
        if cache_info:
            names = sorted(cache_info)
            Gauge("vllm:cache_config_info", "Information of the KV cache configuration.", names,
                  registry=reg).labels(*(str(cache_info[n]) for n in names)).set(1)

    def record(self, snapshot: EngineSnapshot, stats: IterationStats) -> None:
        self.running.set(snapshot.num_running)
        self.waiting.set(snapshot.num_waiting)
        self.kv_usage.set(snapshot.kv_cache_usage)
        self.gpu_usage.set(snapshot.kv_cache_usage)
        queries, hits = snapshot.prefix_cache_queries, snapshot.prefix_cache_hits
        if queries > self._prefix_seen[0]:
            self.prefix_queries.inc(queries - self._prefix_seen[0])
            self.prefix_hits.inc(hits - self._prefix_seen[1])
            self._prefix_seen = (queries, hits)
            self.prefix_hit_rate.set(hits / queries)
        if stats.num_prompt_tokens:
            self.prompt_tokens.inc(stats.num_prompt_tokens)
        if stats.num_generation_tokens:
            self.generation_tokens.inc(stats.num_generation_tokens)
        if stats.num_preemptions:
            self.preemptions.inc(stats.num_preemptions)
        for value in stats.time_to_first_tokens:
            self.ttft.observe(value)
        for value in stats.inter_token_latencies:
            self.itl.observe(value)
        for req in stats.finished_requests:
            self._success.labels(self._model_name, req.finish_reason).inc()
            self.e2e.observe(req.e2e_latency)
            self.request_prompt.observe(req.num_prompt_tokens)
            self.request_generation.observe(req.num_generation_tokens)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class LoggingStatLogger:
    """Logs throughput and queue sizes every `interval` seconds while the server is busy."""

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._prompt = 0
        self._generated = 0

    def record(self, snapshot: EngineSnapshot, stats: IterationStats) -> None:
        with self._lock:
            self._prompt += stats.num_prompt_tokens
            self._generated += stats.num_generation_tokens
            now = time.monotonic()
            elapsed = now - self._last
            if elapsed < self.interval:
                return
            if self._prompt or self._generated or snapshot.num_running or snapshot.num_waiting:
                logger.info(
                    "Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                    "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%",
                    self._prompt / elapsed, self._generated / elapsed, snapshot.num_running,
                    snapshot.num_waiting, 100 * snapshot.kv_cache_usage,
                )
            self._last, self._prompt, self._generated = now, 0, 0
