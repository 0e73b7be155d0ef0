"""RequestTracker: `--request-timeout` (408) and the abort at the end of `--shutdown-timeout` (503).

Both fail the request's streams, which aborts their engine requests and frees their KV blocks. A request
that has no stream yet (its prompt is being tokenized, or the engine has not admitted it, e.g. while it
compiles) waits through `guard`, which gives up with the shutdown error as soon as the abort comes.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable
from typing import TypeVar

from jaxllm.engine.request_stream import RequestStream
from jaxllm.entrypoints.openai.errors import OpenAIError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RequestTimeoutError(OpenAIError):
    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"The request did not finish within the server's request timeout of {timeout:g} seconds "
            "(--request-timeout) and was aborted.", 408)


class ShutdownAbortError(OpenAIError):
    def __init__(self) -> None:
        super().__init__("The server is shutting down; the request was aborted when the shutdown timeout "
                         "(--shutdown-timeout) ran out.", 503)


def fail_stream(stream: RequestStream, err: BaseException) -> None:
    """Make `stream`'s consumer raise `err` at its next output (it then aborts the engine request).

    Uses the stream's own queue, the way the engine thread reports a dead engine; runs on the event loop.
    """
    if not stream.finished:
        stream._put(err)


class RequestTracker:
    """The engine requests the HTTP handlers are waiting on: their deadlines, and the shutdown abort.

    Streams are held weakly: a stream nobody consumes any more (its engine request finished or was
    aborted) drops out by itself. Every method runs on the event loop.
    """

    def __init__(self, timeout: float | None = None):
        self.timeout = timeout
        self.draining = False
        self._streams: weakref.WeakSet[RequestStream] = weakref.WeakSet()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._abort_error: BaseException | None = None
        self._abort_signal: asyncio.Future[None] | None = None  # resolved by abort_all
        self._guarded = 0  # requests waiting in `guard`

    def track(self, streams: list[RequestStream]) -> None:
        """Watch the streams of one HTTP request (until `untrack`); its timeout runs from now."""
        if not streams:
            return
        for stream in streams:
            self._streams.add(stream)
        if self._abort_error is not None:
            for stream in streams:
                fail_stream(stream, self._abort_error)
        elif self.timeout is not None:
            loop = asyncio.get_running_loop()
            key = id(streams[0])
            self._timers[key] = loop.call_later(self.timeout, self._expire, key, list(streams))

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` unless `abort_all` comes first: then cancel it and raise the abort's error."""
        if self._abort_error is not None:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise self._abort_error
        task = asyncio.ensure_future(awaitable)
        loop = asyncio.get_running_loop()
        if self._abort_signal is None or self._abort_signal.get_loop() is not loop:
            self._abort_signal = loop.create_future()
        self._guarded += 1
        try:
            await asyncio.wait({task, self._abort_signal}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._guarded -= 1
        if task.done():
            return task.result()
        task.cancel()
        raise self._abort_error

    def untrack(self, streams: list[RequestStream]) -> None:
        for stream in streams:
            self._streams.discard(stream)
        if streams:
            timer = self._timers.pop(id(streams[0]), None)
            if timer is not None:
                timer.cancel()

    def _expire(self, key: int, streams: list[RequestStream]) -> None:
        self._timers.pop(key, None)
        if any(not s.finished for s in streams):
            logger.warning("Request %s timed out after %gs; aborting it", streams[0].request_id, self.timeout)
        for stream in streams:
            fail_stream(stream, RequestTimeoutError(self.timeout))

    def abort_all(self, err: BaseException) -> int:
        """Fail every tracked or guarded request (and any later) with `err`; returns how many there were."""
        self._abort_error = err
        waiting = self._guarded
        if self._abort_signal is not None and not self._abort_signal.done():
            self._abort_signal.set_result(None)
        live = [s for s in list(self._streams) if not s.finished]
        for stream in live:
            fail_stream(stream, err)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        return len(live) + waiting
