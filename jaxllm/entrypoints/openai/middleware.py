"""The server's ASGI middleware: the request-body size limit, the shutdown drain, X-Request-Id headers.

Starlette is imported inside functions, so importing this module works without the server extra.
"""

import asyncio
import uuid
from typing import Any


async def _send_error(send: Any, err: Any) -> None:
    """Answer with an `OpenAIError` straight from ASGI middleware."""
    body = err.response_body().model_dump_json().encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def body_too_large_message(limit: int) -> str:
    return f"The request body is larger than this server's limit of {limit} bytes (--max-request-body-bytes)."


class BodySizeLimitMiddleware:
    """`--max-request-body-bytes`: a 413 for a larger body, from its Content-Length before it is read, or
    as soon as a body sent without one (chunked) grows past the limit."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.exceptions import HTTPException

        from jaxllm.entrypoints.openai.errors import OpenAIError

        limit = self.max_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _send_error(send, OpenAIError(body_too_large_message(limit), 413))
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # FastAPI's body parsing lets HTTPException through to our handler
                    raise HTTPException(413, body_too_large_message(limit))
            return message

        await self.app(scope, limited_receive, send)


class DrainMiddleware:
    """While the server shuts down, requests that still arrive on open connections get a 503.

    Also the backstop's answer: a request that uvicorn cancels at the end of the graceful shutdown before it
    has answered gets a 503 in OpenAI's shape instead of uvicorn's plain-text 500.
    """

    def __init__(self, app: Any, tracker: Any):
        self.app = app
        self.tracker = tracker

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from jaxllm.entrypoints.openai.errors import OpenAIError

        if self.tracker.draining and scope.get("method") == "POST":
            await _send_error(send, OpenAIError("The server is shutting down.", 503))
            return
        started = False

        async def send_tracking(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except asyncio.CancelledError:
            if started or not self.tracker.draining:
                raise
            await _send_error(send, OpenAIError("The server is shutting down; the request was cancelled.", 503))


class RequestIdHeaderMiddleware:
    """`--enable-request-id-headers`: echo the caller's X-Request-Id, or send a fresh one."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"x-request-id") or uuid.uuid4().hex.encode()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [(b"x-request-id", given)])
            await send(message)

        await self.app(scope, receive, send_with_id)
