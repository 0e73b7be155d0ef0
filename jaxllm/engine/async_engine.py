"""AsyncLLMEngine: one background thread owns the `LLMEngine`; asyncio handlers talk to it by message.

    handler (event loop)                     engine thread
    --------------------                     -------------
    await add_request(id, prompt, params) -> commands: ("add", ...)  -> engine.add_request()
         (ValueError comes back here)    <- future resolved           (queued, or rejected)
    async for out in stream:             <- per-request asyncio.Queue <- engine.step() outputs (DELTA)
    stream.abort() / client gone         -> commands: ("abort", id)   -> engine.abort_request(): blocks freed

A beam search is submitted the same way, with `BeamSearchParams` instead of `SamplingParams`: the engine
thread calls `engine.add_beam_request()`, and the stream yields one output, when the search has finished,
holding the best beams best-first.

The engine is not thread-safe, so only the engine thread touches it. While requests are unfinished the
thread runs `step()` back to back (continuous batching across every connection); when there are none it
sleeps on the command queue. Outputs of a step are handed to the event loop in one
`call_soon_threadsafe` call per loop. A stream merges outputs that queued up while its consumer was busy.

Plain Python: no jax import (the runner inside the `LLMEngine` does the device work).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from jaxllm.engine.request_stream import RequestStream
from jaxllm.engine.stats import EngineSnapshot, FinishedRequestStats, IterationStats, StatLogger
from jaxllm.outputs import RequestOutput
from jaxllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop has stopped (it crashed, or it was shut down); no request can be served."""


@dataclass
class _Live:
    """Engine-thread bookkeeping of one request."""

    stream: RequestStream
    num_sequences: int
    arrival: float
    first_token_time: float | None = None
    last_token_time: float = 0.0
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0


class AsyncLLMEngine:
    """Serves an `LLMEngine` to asyncio code from a dedicated thread.

        engine = AsyncLLMEngine(llm.llm_engine)
        engine.start()
        async for out in engine.generate("Hello", SamplingParams(max_tokens=8), "req-1"):
            print(out.outputs[0].text, end="")   # DELTA outputs: only the new text
        engine.shutdown()
    """

    def __init__(self, engine: Any, stat_loggers: list[StatLogger] | None = None, log_requests: bool = False):
        self.engine = engine
        self.stat_loggers = list(stat_loggers or [])
        self.log_requests = log_requests
        self._commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._dead: EngineDeadError | None = None
        self._live: dict[str, _Live] = {}
        self._cursors: dict[str, tuple[int, int]] = {}
        self._snapshot = EngineSnapshot()
        self._last_preemptions = 0
        self._aborted: list[FinishedRequestStats] = []  # reported with the next published stats

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        with self._lock:
            if self._thread is None and self._dead is None:
                self._thread = threading.Thread(target=self._run, name="jaxllm-engine", daemon=True)
                self._thread.start()

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Stop the loop: unfinished requests are aborted and their streams get `EngineDeadError`."""
        with self._lock:
            thread = self._thread
            if thread is None and self._dead is None:
                self._dead = EngineDeadError("The engine was shut down.")
        if thread is not None and thread.is_alive():
            self._commands.put(("stop",))
            thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    @property
    def errored(self) -> bool:
        return self._dead is not None or (self._thread is not None and not self._thread.is_alive())

    @property
    def dead_error(self) -> EngineDeadError | None:
        if self._dead is None and self._thread is not None and not self._thread.is_alive():
            return EngineDeadError("The engine thread has exited.")
        return self._dead

    def check_health(self) -> None:
        """Raise `EngineDeadError` if the engine can no longer serve requests."""
        err = self.dead_error
        if err is not None:
            raise err

    def snapshot(self) -> EngineSnapshot:
        return self._snapshot

    # ---- requests ------------------------------------------------------------------------------

    async def add_request(
        self, request_id: str, prompt: Any, params: SamplingParams | BeamSearchParams
    ) -> RequestStream:
        """Queue a request; return its stream. Raises the engine's `ValueError` for invalid input.

        With `BeamSearchParams` the request is a beam search (`LLMEngine.add_beam_request`): its stream
        yields a single finished output whose `outputs` are the best beams, best first.
        """
        self.start()
        loop = asyncio.get_running_loop()
        if isinstance(params, BeamSearchParams):
            params = dataclasses.replace(params)
        else:
            params = params.clone()
            params.output_kind = RequestOutputKind.DELTA
            if params.structured_outputs is not None and hasattr(self.engine, "compile_grammar"):
                # a grammar can take seconds to compile: here, not on the engine thread (which then finds it cached)
                await loop.run_in_executor(None, self.engine.compile_grammar, params.structured_outputs)
        stream = RequestStream(request_id, self._abort_soon, loop)
        accepted: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self.check_health()
            self._commands.put(("add", request_id, prompt, params, stream, accepted, time.monotonic()))
        try:
            await accepted
        except asyncio.CancelledError:
            self._abort_soon(request_id)
            raise
        return stream

    async def add_beam_request(self, request_id: str, prompt: Any, params: BeamSearchParams) -> RequestStream:
        """Queue a beam search; its stream yields one output (the best beams) when the search has finished."""
        if not isinstance(params, BeamSearchParams):
            raise ValueError(f"params must be BeamSearchParams, got {type(params).__name__}.")
        return await self.add_request(request_id, prompt, params)

    async def generate(
        self, prompt: Any, params: SamplingParams | BeamSearchParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        """Yield the request's DELTA outputs (a beam search: its one final output); leaving early aborts it."""
        stream = await self.add_request(request_id, prompt, params)
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    async def abort(self, request_id: str) -> None:
        self._abort_soon(request_id)

    def _abort_soon(self, request_id: str) -> None:
        if self._dead is None:
            self._commands.put(("abort", request_id))

    # ---- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                busy = self.engine.has_unfinished_requests()
                if not self._handle_commands(block=not busy):
                    break
                stats = IterationStats()
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step(self._cursors)
                    self._dispatch(outputs, stats)
                self._publish(stats)
        except BaseException as err:  # any failure here kills the engine; the streams are told below
            logger.exception("The engine loop failed; the engine is dead")
            error = err
        self._finish(error)

    def _handle_commands(self, block: bool) -> bool:
        """Run queued commands; False once told to stop."""
        while True:
            try:
                cmd = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            kind = cmd[0]
            if kind == "stop":
                return False
            if kind == "add":
                self._add(*cmd[1:])
            elif kind == "abort":
                self._abort(cmd[1])

    def _add(self, request_id, prompt, params, stream, accepted, arrival) -> None:
        if accepted.cancelled():  # the caller gave up waiting (it left, or the server is shutting down)
            return
        try:
            if request_id in self._live:
                raise ValueError(f"Request id {request_id!r} is already in use.")
            if isinstance(params, BeamSearchParams):
                self.engine.add_beam_request(request_id, prompt, params)
                num_sequences = 0  # beams keep no DELTA cursors
            else:
                self.engine.add_request(request_id, prompt, params)
                num_sequences = params.best_of or params.n
        except Exception as err:
            self._call_soon(stream._loop, [(_resolve, (accepted, err))])
            return
        if self.log_requests:
            logger.info("Added request %s.", request_id)
        self._live[request_id] = _Live(stream, num_sequences, arrival)
        if not self._call_soon(stream._loop, [(_resolve, (accepted, None))]):
            self._abort(request_id)

    def _abort(self, request_id: str) -> None:
        live = self._live.pop(request_id, None)
        if live is None:
            return
        self.engine.abort_request(request_id)
        self._forget_cursors(request_id, live.num_sequences)
        if self.log_requests:
            logger.info("Aborted request %s.", request_id)
        self._aborted.append(FinishedRequestStats("abort", time.monotonic() - live.arrival, live.num_prompt_tokens,
                                                  live.num_generation_tokens))

    def _forget_cursors(self, request_id: str, num_sequences: int) -> None:
        for i in range(num_sequences):
            self._cursors.pop(f"{request_id}-{i}", None)

    def _dispatch(self, outputs: list[RequestOutput], stats: IterationStats) -> None:
        now = time.monotonic()
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            live = self._live.get(out.request_id)
            if live is None:
                continue
            self._account(live, out, now, stats)
            if out.finished:
                del self._live[out.request_id]
                self._forget_cursors(out.request_id, live.num_sequences)
            by_loop.setdefault(live.stream._loop, []).append((live.stream._put, (out,)))
        for loop, calls in by_loop.items():
            if not self._call_soon(loop, calls):  # the loop is closed: nobody is listening any more
                for fn, _ in calls:
                    self._abort(fn.__self__.request_id)

    @staticmethod
    def _account(live: _Live, out: RequestOutput, now: float, stats: IterationStats) -> None:
        new_tokens = sum(len(o.token_ids) for o in out.outputs)
        if live.first_token_time is None and (new_tokens or out.finished):
            live.first_token_time = now
            live.num_prompt_tokens = len(out.prompt_token_ids or ())
            stats.num_prompt_tokens += live.num_prompt_tokens
            stats.time_to_first_tokens.append(now - live.arrival)
        elif new_tokens:
            stats.inter_token_latencies.append(now - live.last_token_time)
        if new_tokens:
            live.last_token_time = now
            live.num_generation_tokens += new_tokens
            stats.num_generation_tokens += new_tokens
        if out.finished:
            reason = out.outputs[0].finish_reason if out.outputs else "abort"
            stats.finished_requests.append(
                FinishedRequestStats(reason or "stop", now - live.arrival, live.num_prompt_tokens,
                                     live.num_generation_tokens)
            )

    @staticmethod
    def _call_soon(loop: asyncio.AbstractEventLoop, calls: list) -> bool:
        """Run `calls` on `loop`; False if that loop is closed."""
        try:
            loop.call_soon_threadsafe(_run_calls, calls)
        except RuntimeError:
            return False
        return True

    def _make_snapshot(self) -> EngineSnapshot:
        sched = self.engine.scheduler
        return EngineSnapshot(
            num_running=len(sched.running),
            num_waiting=len(sched.waiting),
            kv_cache_usage=float(self.engine.block_manager.usage()),
            prefix_cache_queries=getattr(self.engine.block_manager, "prefix_queries", 0),
            prefix_cache_hits=getattr(self.engine.block_manager, "prefix_hits", 0),
            num_unfinished_requests=len(self._live),
        )

    def _publish(self, stats: IterationStats) -> None:
        stats.finished_requests.extend(self._aborted)
        self._aborted.clear()
        preemptions = self.engine.stats.get("preemptions", 0)
        stats.num_preemptions, self._last_preemptions = preemptions - self._last_preemptions, preemptions
        self._snapshot = self._make_snapshot()
        for stat_logger in self.stat_loggers:
            try:
                stat_logger.record(self._snapshot, stats)
            except Exception:  # statistics never take the engine down
                logger.exception("A stat logger failed")

    def _finish(self, error: BaseException | None) -> None:
        """The loop is over: fail every stream and every pending add, then refuse new requests."""
        if error is None:
            dead = EngineDeadError("The engine was shut down.")
        else:
            dead = EngineDeadError(f"The engine loop failed: {type(error).__name__}: {error}")
        with self._lock:
            self._dead = dead
            pending = []
            while True:
                try:
                    pending.append(self._commands.get_nowait())
                except queue.Empty:
                    break
        for cmd in pending:
            if cmd[0] == "add":
                stream, accepted = cmd[4], cmd[5]
                self._call_soon(stream._loop, [(_resolve, (accepted, dead))])
        for request_id, live in list(self._live.items()):
            try:
                self.engine.abort_request(request_id)
            except Exception:  # the engine may be broken; the streams still get told
                logger.debug("abort_request(%s) failed on a dead engine", request_id, exc_info=True)
            self._call_soon(live.stream._loop, [(live.stream._put, (dead,))])
        self._live.clear()
        self._snapshot = EngineSnapshot()


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _run_calls(calls: list) -> None:
    for fn, args in calls:
        fn(*args)
