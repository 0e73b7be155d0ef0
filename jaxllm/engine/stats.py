"""What the engine thread of `AsyncLLMEngine` publishes after each loop iteration, and who receives it.

Plain Python: no jax import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class EngineSnapshot:
    """The scheduler's state after the last loop iteration (published by the engine thread)."""

    num_running: int = 0  # sequences in the running batch
    num_waiting: int = 0  # sequences queued (or preempted)
    kv_cache_usage: float = 0.0  # fraction of KV pages in use, 0..1
    num_unfinished_requests: int = 0  # requests with a live stream
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache, since start
    prefix_cache_hits: int = 0  # ... of which were found


@dataclass
class FinishedRequestStats:
    finish_reason: str
    e2e_latency: float
    num_prompt_tokens: int
    num_generation_tokens: int


@dataclass
class IterationStats:
    """What one loop iteration did: tokens, latencies and the requests that ended."""

    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_preemptions: int = 0
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)


class StatLogger(Protocol):
    """Receives statistics from the engine thread (it must be thread-safe and fast)."""

    def record(self, snapshot: EngineSnapshot, stats: IterationStats) -> None: ...
