"""RequestStream: the outputs of one `AsyncLLMEngine` request, delivered on the caller's event loop.

Plain Python: no jax import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from jaxllm.outputs import RequestOutput


class RequestStream:
    """The outputs of one request, as an async iterator of DELTA `RequestOutput`s.

    Iteration ends after the finished output. Leaving the iteration early (an exception, a cancelled
    task, a `break` followed by `close()`) aborts the request, which frees its KV blocks: `abort` is
    called with the request id (the engine's `_abort_soon`, callable from any thread).
    """

    def __init__(self, request_id: str, abort: Callable[[str], None], loop: asyncio.AbstractEventLoop):
        self.request_id = request_id
        self._abort = abort
        self._loop = loop
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._pending_error: BaseException | None = None
        self.finished = False

    def _put(self, item: RequestOutput | BaseException) -> None:  # runs on the event loop
        self._queue.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        try:
            item = self._pending_error or await self._queue.get()
            self._pending_error = None
            if isinstance(item, BaseException):
                raise item
            while not item.finished and not self._queue.empty():  # catch up: merge queued deltas
                nxt = self._queue.get_nowait()
                if isinstance(nxt, BaseException):
                    self._pending_error = nxt
                    break
                item.add(nxt, aggregate=True)
        except BaseException:
            self.close()
            raise
        if item.finished:
            self.finished = True
        return item

    def close(self) -> None:
        """Abort the request unless it has finished (idempotent)."""
        if not self.finished:
            self.finished = True
            self._abort(self.request_id)

    async def aclose(self) -> None:
        self.close()
