"""Compile every step bucket ahead of time, in background threads, while the weights load.

    decode buckets (1, 2, 4, ..., max_num_seqs) + prefill token buckets (16, ..., max_num_batched_tokens)
    in both prefill layouts (fresh prompts: dense; rows after pool pages: ragged) = runner.num_buckets

Each bucket's example inputs are made by the runner's own `prepare` (the builders `dispatch` uses), from
stand-in requests with default `SamplingParams`, so their shapes cannot drift from real steps. Lowering
only needs shapes and shardings: the parameters, KV pool and token buffer go in as
`jax.ShapeDtypeStruct`s, so compilation can start before any weight is read. `jax.jit(...).lower(...)
.compile()` runs on a thread pool (XLA compiles without the GIL); `dispatch` calls the resulting
executables directly. A step whose bucket is not ready waits for that bucket alone, and one that has not
started yet is compiled at once by the step itself, ahead of the queue. With an ExecutableStore, each
bucket is first looked up there by a key computed without tracing (runner/executable_store.py) and, when
found, loaded instead of compiled; what is compiled is stored. Without compiling ahead (`ahead=False`,
precompile "off") only the stored buckets are loaded in the background; the others compile when a step
first needs them, and are stored then. A bucket that fails is logged at
once; the steps that need it raise its error (the engine then fails their requests, as it would have
after a lazy compilation failed), `wait()` raises it, and so does LLM(precompile="wait").

    LLM(precompile=...)   None: $JAXLLM_PRECOMPILE, else "background" on GPU/TPU and "off" on CPU
                          "background" (True): LLM() returns once the weights are loaded
                          "wait": LLM() returns once every bucket is compiled; "off" (False): lazy
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxllm import timeline
from jaxllm.engine.request import Request
from jaxllm.engine.scheduler import SchedulerOutput
from jaxllm.runner import compile_counter
from jaxllm.runner.executable_store import ExecutableStore
from jaxllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

MODES = ("off", "background", "wait")
_ALIASES = {"0": "off", "false": "off", "no": "off", "none": "off", "1": "background", "true": "background",
            "on": "background", "yes": "background", "auto": "auto"}
_RUNNING: weakref.WeakSet = weakref.WeakSet()


def _cancel_at_exit() -> None:
    """A script that ends while buckets are queued exits once those compiling finish, not all of them."""
    for precompiler in list(_RUNNING):
        precompiler.cancel()


if hasattr(threading, "_register_atexit"):  # runs before the interpreter joins the compile threads
    threading._register_atexit(_cancel_at_exit)


def resolve_mode(precompile: bool | str | None, enforce_eager: bool = False) -> str:
    """"off", "background" or "wait" from the LLM argument, vLLM's enforce_eager, $JAXLLM_PRECOMPILE and the
    platform (only accelerators precompile by default: on CPU, XLA compiles one program at a time)."""
    if precompile is None:
        precompile = "off" if enforce_eager else os.environ.get("JAXLLM_PRECOMPILE", "auto")
    if precompile is True or precompile is False:
        return "background" if precompile else "off"
    mode = _ALIASES.get(str(precompile).strip().lower(), str(precompile).strip().lower())
    if mode == "auto":
        return "off" if jax.default_backend() == "cpu" else "background"
    if mode not in MODES:
        raise ValueError(f"precompile must be one of {', '.join(MODES)}, 'auto', True, False or None; got {precompile!r}.")
    return mode


def default_workers() -> int:
    """Compile threads: $JAXLLM_PRECOMPILE_THREADS, else one per core up to 8."""
    return max(1, int(os.environ.get("JAXLLM_PRECOMPILE_THREADS") or 0) or min(8, os.cpu_count() or 1))


class _ShapeOnlyPool:
    """Stands in for the BlockManager when building example inputs: every token's slot is the null page."""

    def slot(self, request, position: int) -> int:
        return 0

    def block_table(self, rows, width: int) -> np.ndarray:
        return np.zeros((len(rows), width), np.int32)

    def slots(self, rows, positions) -> np.ndarray:
        return np.zeros(len(positions), np.int32)


def _requests(count: int, new: int, computed: int = 0) -> list[Request]:
    params = SamplingParams()
    out = []
    for i in range(count):
        r = Request(f"precompile-{i}", [1] * (computed + new), params, seed=0)
        r.num_computed_tokens, r.num_new_tokens, r.block_ids = computed, new, [1]
        out.append(r)
    return out


def example_steps(prepare: Callable, decode_buckets: list[int], prefill_buckets: list[int]) -> list[tuple[str, Any]]:
    """(name, InputBatch) of every bucket for default sampling, smallest first (what a first request needs)."""
    pool, out = _ShapeOnlyPool(), []
    for i in range(max(len(decode_buckets), len(prefill_buckets))):
        if i < len(prefill_buckets):
            t = prefill_buckets[i]
            out.append((f"prefill step for {t} tokens", prepare(SchedulerOutput(True, _requests(1, t)), pool)))
        if i < len(decode_buckets):
            b = decode_buckets[i]
            out.append((f"decode step for {b} sequences", prepare(SchedulerOutput(False, _requests(b, 1)), pool)))
        if i < len(prefill_buckets):  # a row continuing after pages already in the pool: the ragged layout
            t = prefill_buckets[i]
            batch = prepare(SchedulerOutput(True, _requests(1, t, computed=1)), pool)
            out.append((f"prefill step for {t} tokens after cached pages", batch))
    return out


def shape_key(inputs: tuple) -> tuple:
    """What selects an executable: the pytree of a step's per-call inputs and each leaf's shape and dtype."""
    leaves, tree = jax.tree_util.tree_flatten(inputs)
    return tree, tuple((np.shape(x), np.result_type(x)) for x in leaves)


def _abstract(x):
    return jax.ShapeDtypeStruct(np.shape(x), np.result_type(x))


@dataclass(eq=False)
class _Bucket:
    name: str
    fn: Any  # the jitted step for this bucket's flags
    inputs: tuple  # ShapeDtypeStructs of the per-call inputs
    key: str | None = None  # in the ExecutableStore
    future: Any = None  # None: built when a step first needs it
    compiled: Any = None
    error: Exception | None = None


class Precompiler:
    """Builds a list of step shapes on a thread pool (loaded from an ExecutableStore, else compiled and stored);
    `get(inputs)` hands out the executable for a shape."""

    def __init__(self, steps: list[tuple[str, Any, tuple, Any]], fixed: tuple, mesh_context: Callable, workers: int,
                 progress: bool = True, store: ExecutableStore | None = None, context: Any = None,
                 ahead: bool = True, devices: list | None = None):
        """steps: (name, jitted step function, per-call inputs as arrays or ShapeDtypeStructs, what else selects
        the program, e.g. its flags), in priority order; fixed: the arguments every step shares (parameters,
        KV pool, token buffer), abstract; store and context: where executables are kept and what, besides
        each step, their keys hold; ahead: compile the buckets not stored (else only load the stored ones);
        devices: those the steps run on, in the mesh's order (where stored executables are loaded)."""
        self._buckets: dict[tuple, _Bucket] = {}
        for name, fn, inputs, tag in steps:
            shape = shape_key(inputs)
            if shape not in self._buckets:
                key = store.key(context, name, tag, repr(shape)) if store is not None else None
                self._buckets[shape] = _Bucket(name, fn, jax.tree_util.tree_map(_abstract, inputs), key)
        self._store, self._devices = store, devices
        scheduled = [b for b in self._buckets.values() if ahead or (b.key is not None and store.has(b.key))]
        self.total = len(scheduled)
        self.loaded = 0  # buckets that came from the store
        self.error: Exception | None = None
        self._cancelled = False
        self._fixed, self._mesh_context = fixed, mesh_context
        self._done = 0
        self._cond = threading.Condition()
        self._lowering = threading.Lock()
        self._started = time.perf_counter()
        self._hits = compile_counter.num_executables() - compile_counter.num_compilations()
        self._bar = None
        if progress and self.total:
            from tqdm.auto import tqdm

            verb = "Loading" if all(b.key is not None and store.has(b.key) for b in scheduled) else "Compiling"
            self._bar = tqdm(total=self.total, desc=f"{verb} {self.total} step buckets", dynamic_ncols=True)
        self._pool = ThreadPoolExecutor(max(1, min(workers, self.total)), thread_name_prefix="jaxllm-precompile")
        for bucket in scheduled:
            bucket.future = self._pool.submit(self._build, bucket)
        if not self.total:
            self._pool.shutdown(wait=False)
        _RUNNING.add(self)

    def _compile(self, bucket: _Bucket):
        # Tracing and lowering are Python and hold the GIL: one at a time, so that the thread loading the
        # weights keeps its share; XLA's compilation runs without the GIL, in parallel.
        with self._lowering, self._mesh_context():
            lowered = bucket.fn.lower(*self._fixed, *bucket.inputs)
        return lowered.compile()

    def _load_or_compile(self, bucket: _Bucket):
        if bucket.key is not None and self._store.has(bucket.key):
            with timeline.phase(f"load stored {bucket.name}"):
                compiled = self._store.load(bucket.key, self._devices, bucket.name)
            if compiled is not None:
                with self._cond:
                    self.loaded += 1
                return compiled
        with timeline.phase(f"compile {bucket.name}"):
            compiled = self._compile(bucket)
        if bucket.key is not None:
            self._store.save(bucket.key, compiled, bucket.name)
        return compiled

    def _build(self, bucket: _Bucket):
        try:
            bucket.compiled = self._load_or_compile(bucket)
        except Exception as err:
            bucket.error = RuntimeError(f"Compiling the {bucket.name} ahead of time failed: {type(err).__name__}: {err}")
            bucket.error.__cause__ = err
            if not self._cancelled:  # a cancelled run's failures are nobody's concern
                logger.error("%s (the steps that need this bucket will fail with this error)", bucket.error)
                with self._cond:
                    self.error = self.error or bucket.error
        self._finish_one()
        if bucket.error is not None:
            raise bucket.error
        return bucket.compiled

    def _finish_one(self) -> None:
        with self._cond:
            self._done += 1
            if self._bar is not None:
                self._bar.update(1)
            if self._done < self.total:
                return
            if self._bar is not None:
                self._bar.close()
            hits = compile_counter.num_executables() - compile_counter.num_compilations() - self._hits
            logger.log(
                logging.DEBUG if self._cancelled else logging.INFO,
                "Built %d step buckets ahead of time in %.1f s (%d loaded from stored executables, %d from the "
                "persistent cache)%s",
                self.total, time.perf_counter() - self._started, self.loaded, min(hits, self.total),
                "; some failed" if self.error else "",
            )
            self._cond.notify_all()
        self._pool.shutdown(wait=False)

    @property
    def done(self) -> bool:
        return self._done >= self.total

    def get(self, inputs: tuple):
        """The executable for these per-call inputs, or None if their shape is not precompiled. Waits for
        this one bucket only; one still queued is compiled here and now. Raises if its compilation failed."""
        bucket = self._buckets.get(shape_key(inputs))
        if bucket is None:
            return None
        if bucket.compiled is not None:
            return bucket.compiled
        if bucket.future is None:  # not built ahead: now, on first use (as a lazy compilation: a failure
            bucket.compiled = self._load_or_compile(bucket)  # raises here and is tried again next time)
            return bucket.compiled
        if bucket.future.cancel():  # still queued: jump the queue
            return self._build(bucket)
        return bucket.future.result()

    def wait(self, timeout: float | None = None) -> None:
        """Block until every bucket is compiled; raise the first compilation error, if any."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._done >= self.total, timeout):
                raise TimeoutError(f"{self.total - self._done} of {self.total} step buckets are still compiling.")
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def cancel(self, wait: bool = False) -> None:
        """Drop the buckets not started yet (those compiling finish, unused; with `wait`, before this returns)."""
        self._cancelled = True
        for bucket in self._buckets.values():
            if bucket.future is not None and bucket.future.cancel():
                self._finish_one()
        if wait:
            self._pool.shutdown(wait=True)
