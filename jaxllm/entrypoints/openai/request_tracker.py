"""RequestTracker: `--request-timeout` (408) and the abort at the end of `--shutdown-timeout` (503).

Both fail the request's streams, which aborts their engine requests and frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from jaxllm.engine.request_stream import RequestStream
from jaxllm.entrypoints.openai.errors import OpenAIError

logger = logging.getLogger(__name__)


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
        """Fail every tracked request (and any tracked later) with `err`; returns how many were running."""
        self._abort_error = err
        live = [s for s in list(self._streams) if not s.finished]
        for stream in live:
            fail_stream(stream, err)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        return len(live)
