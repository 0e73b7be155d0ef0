"""What a start-up spent its time on: named phases with the thread that ran them and wall-clock bounds.

    with timeline.phase("tokenizer"):
        ...
    timeline.events()  -> [Phase("tokenizer", "jaxllm-tokenizer", start, end), ...]

Phases are recorded for every process (a few per start, one per step bucket), from any thread;
`scripts/benchmark_startup.py` prints them as a table per start.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    thread: str
    start: float  # time.time()
    end: float


_lock = threading.Lock()
_events: list[Phase] = []


def record(name: str, start: float, end: float | None = None) -> None:
    with _lock:
        _events.append(Phase(name, threading.current_thread().name, start, time.time() if end is None else end))


@contextlib.contextmanager
def phase(name: str):
    start = time.time()
    try:
        yield
    finally:
        record(name, start)


def events() -> list[Phase]:
    with _lock:
        return sorted(_events, key=lambda p: p.start)


def as_dicts() -> list[dict]:
    return [asdict(p) for p in events()]
