"""The OpenAI-compatible HTTP server: `jaxllm serve MODEL` or
`python -m jaxllm.entrypoints.openai.api_server --model MODEL` (FastAPI + uvicorn).

    GET  /health /ping /version /metrics /v1/models
    POST /v1/completions /v1/chat/completions /tokenize /detokenize

FastAPI and uvicorn are imported inside functions, so `jaxllm generate` works without the server extra.
(No `from __future__ import annotations` here: FastAPI reads the route functions' annotations as objects.)

Shutdown (SIGTERM, SIGINT): the listening socket closes, requests that still arrive on open connections
get a 503 (so does /health), in-flight requests run on; after `--shutdown-timeout` seconds the ones still
running are aborted with a 503 (an error event in a stream), then the engine stops.
"""

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import uuid
from typing import Any

from jaxllm.entrypoints.openai.cli_args import DEFAULT_SERVED_NAME, add_frontend_arguments, validate_args

logger = logging.getLogger("jaxllm.entrypoints.openai.api_server")

_JSON_ONLY = "Unsupported Media Type: Only 'application/json' is allowed"


# ---- command line --------------------------------------------------------------------------------


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `serve` subcommand of `jaxllm` (`jaxllm serve [MODEL] [flags]`)."""
    from jaxllm.entrypoints.cli import add_engine_arguments

    parser = subparsers.add_parser(
        "serve", help="start the OpenAI-compatible API server",
        description="Serve a model over vLLM's OpenAI-compatible HTTP API.",
    )
    parser.add_argument("model_tag", nargs="?", default=None, help="the model to serve (overrides --model)")
    add_engine_arguments(parser)
    add_frontend_arguments(parser)
    parser.set_defaults(func=serve_command)
    return parser


def make_arg_parser() -> argparse.ArgumentParser:
    """The parser of `python -m jaxllm.entrypoints.openai.api_server`."""
    from jaxllm.entrypoints.cli import add_engine_arguments

    parser = argparse.ArgumentParser(
        prog="python -m jaxllm.entrypoints.openai.api_server",
        description="Serve a model over vLLM's OpenAI-compatible HTTP API.",
    )
    add_engine_arguments(parser)
    add_frontend_arguments(parser)
    return parser


def serve_command(args: argparse.Namespace) -> int:
    if getattr(args, "model_tag", None):
        args.model = args.model_tag
    return run_server(args)


# ---- the app -------------------------------------------------------------------------------------


def serving_config(args: argparse.Namespace, llm_engine: Any) -> Any:
    """The frontend's `ServingConfig` from the flags and the engine it serves."""
    from jaxllm.chat_utils import load_chat_template
    from jaxllm.entrypoints.openai.serving_engine import ServingConfig

    generation_config = getattr(llm_engine, "generation_config", None) if args.generation_config == "auto" else {}
    defaults, max_tokens_cap = ServingConfig.sampling_defaults(generation_config)
    return ServingConfig(
        served_model_names=list(args.served_model_name or [args.model or DEFAULT_SERVED_NAME]),
        model_root=args.model or llm_engine.model_config.path,
        max_model_len=llm_engine.scheduler_config.max_model_len,
        vocab_size=llm_engine.model_config.vocab_size,
        max_logprobs=args.max_logprobs,
        chat_template=load_chat_template(args.chat_template),
        response_role=args.response_role,
        trust_request_chat_template=args.trust_request_chat_template,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        enable_force_include_usage=args.enable_force_include_usage,
        return_tokens_as_token_ids=args.return_tokens_as_token_ids,
        log_requests=args.enable_log_requests and not args.disable_log_requests,
        max_log_len=args.max_log_len,
        default_sampling=defaults,
        default_max_tokens=max_tokens_cap,
        max_n=getattr(args, "max_n", None),
        max_prompt_tokens=getattr(args, "max_prompt_tokens", None),
        request_timeout=getattr(args, "request_timeout", None),
    )


async def _wait_for_disconnect(raw_request: Any) -> None:
    while True:
        message = await raw_request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnected(raw_request: Any, coro: Any) -> Any:
    """Await a handler, cancelling it (which aborts its engine requests) if the client goes away."""
    from fastapi.responses import Response

    handler = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_wait_for_disconnect(raw_request))
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not handler.done():
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler
    if handler.cancelled():
        return Response(status_code=499)  # the client is gone; nobody reads this
    return handler.result()


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
    """While the server shuts down, requests that still arrive on open connections get a 503."""

    def __init__(self, app: Any, tracker: Any):
        self.app = app
        self.tracker = tracker

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.tracker.draining and scope.get("method") == "POST":
            from jaxllm.entrypoints.openai.errors import OpenAIError

            await _send_error(send, OpenAIError("The server is shutting down.", 503))
            return
        await self.app(scope, receive, send)


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


def _cache_info(llm_engine: Any) -> dict | None:
    """The labels of vllm:cache_config_info, from the engine's KV pool (None when it has none)."""
    bm = getattr(llm_engine, "block_manager", None)
    if not isinstance(getattr(bm, "num_blocks", None), int):
        return None
    return {"block_size": bm.block_size, "num_gpu_blocks": bm.num_blocks - 1,  # page 0 is never handed out
            "enable_prefix_caching": bool(getattr(bm, "enable_prefix_caching", False))}


def build_app(engine: Any, tokenizer: Any, config: Any, args: argparse.Namespace, api_keys: list[str]) -> Any:
    """The FastAPI app around a (not yet started) `AsyncLLMEngine`; the app's lifespan runs the engine."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse, Response

    import jaxllm
    from jaxllm.entrypoints.openai.auth import AuthenticationMiddleware
    from jaxllm.entrypoints.openai.errors import OpenAIError, install_exception_handlers
    from jaxllm.entrypoints.openai.metrics import LoggingStatLogger, PrometheusStatLogger
    from jaxllm.entrypoints.openai.protocol import (
        ChatCompletionRequest,
        ChatCompletionResponse,
        CompletionRequest,
        CompletionResponse,
        DetokenizeRequest,
        DetokenizeResponse,
        ErrorResponse,
        ModelList,
        TokenizeRequest,
        TokenizeResponse,
    )
    from jaxllm.entrypoints.openai.serving_chat import OpenAIServingChat
    from jaxllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
    from jaxllm.entrypoints.openai.serving_engine import RequestTracker
    from jaxllm.entrypoints.openai.serving_models import OpenAIServingModels
    from jaxllm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization

    metrics = PrometheusStatLogger(config.served_model_names[0], config.max_model_len,
                                   cache_info=_cache_info(getattr(engine, "engine", None)))
    engine.stat_loggers.append(metrics)
    if not args.disable_log_stats:
        engine.stat_loggers.append(LoggingStatLogger())
    tracker = RequestTracker(config.request_timeout)
    completions = OpenAIServingCompletion(engine, tokenizer, config, tracker)
    chat = OpenAIServingChat(engine, tokenizer, config, tracker)
    tokenization = OpenAIServingTokenization(engine, tokenizer, config, tracker)
    models = OpenAIServingModels(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)

    docs = {} if not args.disable_fastapi_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="jaxllm OpenAI-compatible API", version=jaxllm.__version__, lifespan=lifespan, **docs)
    if args.root_path:
        app.root_path = args.root_path
    app.state.engine, app.state.metrics, app.state.config = engine, metrics, config
    app.state.tracker = tracker
    install_exception_handlers(app)

    async def json_only(raw_request: Request) -> None:
        media = raw_request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise OpenAIError(_JSON_ONLY)

    # What the routes answer, for /openapi.json: errors are ErrorResponse (never FastAPI's 422).
    error = {"model": ErrorResponse, "description": "an error in OpenAI's shape"}
    errors = {"4XX": error, "5XX": error}
    unauthorized = {401: {"description": "missing or wrong API key (with --api-key)", "content": {
        "application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}}
    sse = {"text/event-stream": {"schema": {  # one server-sent event (OpenAPI < 3.2: `schema` is per event)
        "type": "object", "required": ["data"], "properties": {"data": {
            "type": "string", "description": 'a JSON chunk, an error object {"error": ...}, or the final [DONE]'}}}}}
    post = {"dependencies": [Depends(json_only)]}

    async def health() -> Response:
        return Response(status_code=503 if engine.errored or tracker.draining else 200)

    health_docs = {200: {"description": "the engine is running", "content": {}},
                   503: {"description": "the engine is dead, or the server is shutting down", "content": {}}}
    app.add_api_route("/health", health, methods=["GET"], response_class=Response, responses=health_docs)
    for method in ("GET", "POST"):  # one route each: one operation id each in /openapi.json
        app.add_api_route("/ping", health, methods=[method], response_class=Response, responses=health_docs,
                          name=f"ping_{method.lower()}")

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": jaxllm.__version__}

    @app.get("/metrics", response_class=Response, responses={200: {
        "description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(content=body, media_type=content_type)

    @app.get("/v1/models", responses={200: {"model": ModelList}, **unauthorized, **errors})
    async def list_models() -> JSONResponse:
        return JSONResponse(models.show_available_models().model_dump())

    @app.post("/tokenize", responses={200: {"model": TokenizeResponse}, **errors}, **post)
    async def tokenize(request: TokenizeRequest) -> JSONResponse:
        return JSONResponse(tokenization.create_tokenize(request).model_dump())

    @app.post("/detokenize", responses={200: {"model": DetokenizeResponse}, **errors}, **post)
    async def detokenize(request: DetokenizeRequest) -> JSONResponse:
        return JSONResponse(tokenization.create_detokenize(request).model_dump())

    @app.post("/v1/completions", **post, responses={
        200: {"model": CompletionResponse, "description": "the completion, or a stream of chunks",
              "content": sse}, **unauthorized, **errors})
    async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
        return await run_until_disconnected(raw_request, completions.create_completion(request, raw_request))

    @app.post("/v1/chat/completions", **post, responses={
        200: {"model": ChatCompletionResponse, "description": "the chat completion, or a stream of chunks",
              "content": sse}, **unauthorized, **errors})
    async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Response:
        return await run_until_disconnected(raw_request, chat.create_chat_completion(request, raw_request))

    if api_keys:
        app.add_middleware(AuthenticationMiddleware, api_keys=api_keys)
    if args.enable_request_id_headers:
        app.add_middleware(RequestIdHeaderMiddleware)
    app.add_middleware(DrainMiddleware, tracker=tracker)
    max_body = getattr(args, "max_request_body_bytes", 0)
    if max_body:
        app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body)
    app.add_middleware(CORSMiddleware, allow_origins=args.allowed_origins, allow_credentials=args.allow_credentials,
                       allow_methods=args.allowed_methods, allow_headers=args.allowed_headers)
    return app


# ---- running it ----------------------------------------------------------------------------------


def _setup_logging() -> None:
    root = logging.getLogger("jaxllm")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s", "%m-%d %H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _check_port_free(host: str, port: int) -> None:
    """Fail before the (long) model load if the address is taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ValueError(f"Cannot listen on {host}:{port}: {err.strerror}. Is another server running there?") from err


SHUTDOWN_GRACE_SECONDS = 5.0  # after --shutdown-timeout aborts requests, how long their answers may take


def create_server(args: argparse.Namespace, llm_engine: Any, tokenizer: Any, host: str | None = None) -> Any:
    """The `uvicorn.Server` that serves `llm_engine` with these flags (not started; `.run()` it).

    Its app is `server.config.app`; the engine thread starts and stops with the server.
    """
    import uvicorn

    from jaxllm.engine.async_engine import AsyncLLMEngine
    from jaxllm.entrypoints.openai.auth import resolve_api_keys
    from jaxllm.entrypoints.openai.serving_engine import ShutdownAbortError

    config = serving_config(args, llm_engine)
    engine = AsyncLLMEngine(llm_engine, log_requests=config.log_requests)
    api_keys = resolve_api_keys(args.api_key)
    app = build_app(engine, tokenizer, config, args, api_keys)
    tracker = app.state.tracker
    shutdown_timeout = args.shutdown_timeout

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            tracker.draining = True
            if shutdown_timeout is not None:
                asyncio.get_running_loop().call_later(shutdown_timeout, abort_remaining)
            await super().shutdown(sockets)

    def abort_remaining() -> None:
        aborted = tracker.abort_all(ShutdownAbortError())
        if aborted:
            logger.warning("Shutdown timeout (%gs) reached: aborted %d running request(s).", shutdown_timeout, aborted)

    logger.info("Serving %s as %s%s", config.model_root, ", ".join(config.served_model_names),
                " (API key required on /v1)" if api_keys else "")
    return Server(
        uvicorn.Config(
            app,
            host=host or args.host or "0.0.0.0",
            port=args.port,
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            # a backstop: requests still running after the abort are cancelled outright
            timeout_graceful_shutdown=None if shutdown_timeout is None else shutdown_timeout + SHUTDOWN_GRACE_SECONDS,
            timeout_keep_alive=5,
            ssl_keyfile=args.ssl_keyfile,
            ssl_certfile=args.ssl_certfile,
            ssl_ca_certs=args.ssl_ca_certs,
        )
    )


def load_llm(args: argparse.Namespace) -> Any:
    """The `LLM` that `jaxllm serve` builds from its flags."""
    from jaxllm import LLM
    from jaxllm.entrypoints.cli import engine_kwargs
    from jaxllm.sampling_params import set_max_logprobs_limit

    set_max_logprobs_limit(args.max_logprobs)
    logger.info("Loading model %s", args.model or "(embedded default model)")
    return LLM(args.model, max_logprobs=args.max_logprobs, tokenizer_mode=args.tokenizer_mode,
               load_format=args.load_format, **engine_kwargs(args))


def run_server(args: argparse.Namespace) -> int:
    """Load the model, then serve until SIGTERM/SIGINT (in-flight requests finish first). Exit code."""
    _setup_logging()
    host = args.host or "0.0.0.0"
    try:
        validate_args(args)
        _check_port_free(host, args.port)
        llm = load_llm(args)
        server = create_server(args, llm.llm_engine, llm.tokenizer, host)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal; these no-op handlers make that re-raise
    # a clean exit (status 0) instead of a kill by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    logger.info("Server stopped.")
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    args = make_arg_parser().parse_args(argv)
    return run_server(args)


if __name__ == "__main__":
    sys.exit(main())
