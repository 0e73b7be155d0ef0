"""Counts XLA executables built in this process, how many of them the persistent cache served, and traces.

Tests use it to prove that each bucket is built once and that a warm start traces and compiles nothing.
"""

from __future__ import annotations

import threading
from collections import Counter

import jax

_BUILD = "/jax/core/compile/backend_compile_duration"  # every executable built (compiled or loaded)
_HIT = "/jax/compilation_cache/cache_hits"  # ... of which the persistent cache served this many
_TRACE = "/jax/core/compile/jaxpr_trace_duration"  # every function traced to a jaxpr
_lock = threading.Lock()
_counts = {"built": 0, "hits": 0, "seconds": 0.0}
_traces: Counter = Counter()  # function name -> times traced
_builds: Counter = Counter()  # function name -> executables built
_installed = False


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == _BUILD:
        with _lock:
            _counts["built"] += 1
            _counts["seconds"] += duration
            _builds[str(kwargs.get("fun_name", ""))] += 1
    elif event == _TRACE:
        with _lock:
            _traces[str(kwargs.get("fun_name", ""))] += 1


def _on_event(event: str, **kwargs) -> None:
    if event == _HIT:
        with _lock:
            _counts["hits"] += 1


def install() -> None:
    global _installed
    with _lock:
        if not _installed:
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            jax.monitoring.register_event_listener(_on_event)
            _installed = True


def num_executables() -> int:
    """Executables built since `install()`, whether compiled or loaded from the persistent cache."""
    return _counts["built"]


def executables_by_name() -> Counter:
    """A copy of {function name: executables built} since `install()` (the model step is `_step`)."""
    with _lock:
        return Counter(_builds)


def num_compilations() -> int:
    """Real XLA compilations since `install()`: executables the persistent cache did not have."""
    return _counts["built"] - _counts["hits"]


def num_traces(name: str | None = None) -> int:
    """Functions traced since `install()`, or only those called `name` (the model step is `_step`)."""
    return sum(_traces.values()) if name is None else _traces[name]


def seconds_building() -> float:
    return _counts["seconds"]
