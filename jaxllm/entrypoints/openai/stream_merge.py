"""Several engine request streams (one per prompt) read as one: `merge_streams`, `collect_final`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from jaxllm.engine.request_stream import RequestStream
from jaxllm.outputs import RequestOutput


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(index of the stream, output) from several request streams, as outputs arrive."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
        except Exception as err:
            queue.put_nowait((i, err))
        finally:
            queue.put_nowait((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.close()


async def collect_final(streams: list[RequestStream]) -> list[RequestOutput]:
    """Each stream's DELTA outputs merged into its final output."""
    finals: list[RequestOutput | None] = [None] * len(streams)
    try:
        async for i, out in merge_streams(streams):
            if finals[i] is None:
                finals[i] = out
            else:
                finals[i].add(out, aggregate=True)
    finally:
        for stream in streams:
            stream.close()
    return finals  # type: ignore[return-value]
