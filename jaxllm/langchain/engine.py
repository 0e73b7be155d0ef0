"""Engines shared between LangChain models, and the loop that drives one engine for all of them.

`get_engine(...)` builds a `jaxllm.LLM` once per set of engine arguments and hands the same object to
every model that asks for it while one of them still holds it (the cache holds engines weakly, so
`del llm; gc.collect()` frees the memory as it does with vLLM).

`EngineDriver` is the only thing that steps a shared engine: each call queues its requests, then
whichever caller holds the driver's lock runs one `LLMEngine.step` and files every output under
the request it belongs to. Concurrent calls (threads, `abatch`, several streams) are therefore
batched together by the engine, and no output is lost to another caller.
"""

from __future__ import annotations

import json
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jaxllm.llm import LLM
from jaxllm.outputs import RequestOutput
from jaxllm.sampling_params import BeamSearchParams, SamplingParams

_ENGINES: weakref.WeakValueDictionary[str, LLM] = weakref.WeakValueDictionary()
_ENGINES_LOCK = threading.Lock()
_DRIVERS: weakref.WeakKeyDictionary[LLM, EngineDriver] = weakref.WeakKeyDictionary()
_DRIVERS_LOCK = threading.Lock()


def _engine_key(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, default=repr)


def get_engine(model: str | None = None, **engine_args: Any) -> LLM:
    """`LLM(model, **engine_args)`, or the engine already built with exactly these arguments."""
    key = _engine_key({"model": model or None, **engine_args})
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = LLM(model or None, **engine_args)
            _ENGINES[key] = engine
        return engine


def clear_engine_cache() -> None:
    """Forget the cached engines; models that hold one keep using it, new models build their own."""
    with _ENGINES_LOCK:
        _ENGINES.clear()


def driver_for(llm: LLM) -> EngineDriver:
    """The one driver of `llm`'s engine, shared by every model that uses `llm`."""
    with _DRIVERS_LOCK:
        driver = _DRIVERS.get(llm)
        if driver is None:
            driver = _DRIVERS[llm] = EngineDriver()
        return driver


class EngineDriver:
    """Queues requests on one engine and steps it on behalf of all the callers waiting for outputs.

    The engine is only touched while the lock is held, and the lock is never held while a caller
    consumes its outputs (a stream can be left half-read without blocking anyone else).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[RequestOutput]] = {}
        self._cursors: dict[str, tuple[int, int]] = {}  # DELTA progress of each sequence

    def submit(self, llm: LLM, prompts: Sequence[Any], params: SamplingParams | BeamSearchParams) -> list[str]:
        """Queue one request per prompt; all of them or none (a bad prompt raises ValueError)."""
        engine = llm.llm_engine
        ids = [f"langchain-{uuid.uuid4().hex}" for _ in prompts]
        with self._lock:
            added: list[str] = []
            try:
                for rid, prompt in zip(ids, prompts):
                    if isinstance(params, BeamSearchParams):
                        engine.add_beam_request(rid, prompt, params)
                    else:
                        engine.add_request(rid, prompt, params)
                    added.append(rid)
                    self._queues[rid] = deque()
            except Exception:
                engine.abort_request(added)
                for rid in added:
                    del self._queues[rid]
                raise
        return ids

    def outputs(self, llm: LLM, request_ids: Sequence[str]) -> Iterator[RequestOutput]:
        """Each output of `request_ids` as the engine makes it, until all are finished.

        Leaving the iterator early (or an exception) aborts the requests that are still running.
        """
        engine = llm.llm_engine
        remaining = set(request_ids)
        try:
            while remaining:
                with self._lock:
                    ready = self._take(remaining)
                    if not ready:
                        if not engine.has_unfinished_requests():
                            raise RuntimeError(
                                "The engine finished these requests without reporting them: something else "
                                "drove the same jaxllm.LLM concurrently (use one LLM per caller, or only "
                                "the LangChain models, to share an engine)."
                            )
                        for out in engine.step(self._cursors):
                            queue = self._queues.get(out.request_id)
                            if queue is not None:
                                queue.append(out)
                        ready = self._take(remaining)
                for out in ready:
                    if out.finished:
                        remaining.discard(out.request_id)
                    yield out
        finally:
            with self._lock:
                if remaining:
                    engine.abort_request(list(remaining))
                for rid in request_ids:
                    self._queues.pop(rid, None)
                    prefix = rid + "-"
                    for key in [k for k in self._cursors if k.startswith(prefix)]:
                        del self._cursors[key]

    def _take(self, request_ids: set[str]) -> list[RequestOutput]:
        ready: list[RequestOutput] = []
        for rid in request_ids:
            queue = self._queues.get(rid)
            while queue:
                ready.append(queue.popleft())
        return ready

    def run(
        self, llm: LLM, prompts: Sequence[Any], params: SamplingParams | BeamSearchParams,
        on_finished: Callable[[RequestOutput], None] | None = None,
    ) -> list[RequestOutput]:
        """The final output of every prompt, in input order; `on_finished` sees each as it finishes."""
        ids = self.submit(llm, prompts, params)
        final: dict[str, RequestOutput] = {}
        for out in self.outputs(llm, ids):
            if out.finished:
                final[out.request_id] = out
                if on_finished is not None:
                    on_finished(out)
        return [final[rid] for rid in ids]
