"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with vLLM's status codes.

    400 BadRequestError      invalid parameters (pydantic validation too: never 422), too-long prompts,
                             a chat template that raises, a wrong Content-Type, over --max-n or
                             --max-prompt-tokens
    404 NotFoundError        an unknown model (or route)
    408 RequestTimeoutError  the request ran past --request-timeout (it was aborted)
    413 RequestTooLargeError the body is over --max-request-body-bytes
    500 InternalServerError  a failed generation step, or a bug (still in this shape, never plain text)
    503 ServiceUnavailable   the engine is dead, or the server is shutting down
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from jaxllm.engine.async_engine import EngineDeadError
from jaxllm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    413: "RequestTooLargeError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


class OpenAIError(Exception):
    """Raised by handlers; answered as an `ErrorResponse` with `status`."""

    def __init__(self, message: str, status: int = 400, err_type: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type or _TYPES.get(status) or HTTPStatus(status).phrase
        self.param = param

    def response_body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.err_type, param=self.param,
                                             code=self.status))


def to_openai_error(err: BaseException) -> OpenAIError:
    """The error a handler's exception stands for (ValueError is the engine's "invalid input")."""
    if isinstance(err, OpenAIError):
        return err
    if isinstance(err, EngineDeadError):
        return OpenAIError(str(err), 503)
    if isinstance(err, (ValueError, TypeError, OverflowError)):
        return OpenAIError(str(err), 400)
    logger.exception("Unhandled error while serving a request", exc_info=err)
    return OpenAIError("Internal server error", 500)


def stream_error_event(err: BaseException) -> str:
    """The SSE event that reports an error after a stream has started."""
    return f"data: {to_openai_error(err).response_body().model_dump_json()}\n\n"


def format_validation_errors(errors: list[dict[str, Any]]) -> str:
    """pydantic's error list as one line; value errors keep their own message (vLLM's wording)."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        kind = err.get("type", "")
        if kind == "value_error" and err.get("ctx", {}).get("error") is not None:
            parts.append(str(err["ctx"]["error"]))
            continue
        if kind == "json_invalid":
            parts.append(f"JSON decode error: {err.get('ctx', {}).get('error', 'invalid JSON')} (json_invalid)")
            continue
        parts.append(f"{loc}: {err.get('msg', '')} ({kind})" if loc != "body" else f"{err.get('msg', '')} ({kind})")
    return "; ".join(dict.fromkeys(parts)) or "Invalid request."  # a union's members repeat a message


def install_exception_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def reply(err: OpenAIError) -> JSONResponse:
        return JSONResponse(err.response_body().model_dump(), status_code=err.status)

    async def on_validation_error(_request, exc: RequestValidationError) -> JSONResponse:
        return reply(OpenAIError(format_validation_errors(list(exc.errors())), 400))

    async def on_http_error(_request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        code = exc.status_code
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI could not decode the JSON body
            detail = f"The request body is not valid UTF-8: {exc.__cause__}."
        return reply(OpenAIError(detail, code, _TYPES[code] if code in (400, 413) else HTTPStatus(code).phrase))

    async def on_openai_error(_request, exc: OpenAIError) -> JSONResponse:
        return reply(exc)

    async def on_engine_dead(_request, exc: EngineDeadError) -> JSONResponse:
        return reply(to_openai_error(exc))

    async def on_value_error(_request, exc: ValueError) -> JSONResponse:
        return reply(to_openai_error(exc))

    async def on_unexpected_error(_request, exc: Exception) -> JSONResponse:
        return reply(to_openai_error(exc))

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(OpenAIError, on_openai_error)
    app.add_exception_handler(EngineDeadError, on_engine_dead)
    app.add_exception_handler(ValueError, on_value_error)
    app.add_exception_handler(Exception, on_unexpected_error)
