"""The FastAPI app of the OpenAI-compatible server: `build_app`, and the `ServingConfig` it serves with.

    GET  /health /ping /version /metrics /v1/models
    POST /v1/completions /v1/chat/completions /tokenize /detokenize

FastAPI is imported inside functions, so `jaxllm generate` works without the server extra.
(No `from __future__ import annotations` here: FastAPI reads the route functions' annotations as objects.)
"""

import argparse
import asyncio
import contextlib
from typing import Any

from jaxllm.entrypoints.openai.cli_args import DEFAULT_SERVED_NAME
from jaxllm.entrypoints.openai.middleware import (
    BodySizeLimitMiddleware,
    DrainMiddleware,
    RequestIdHeaderMiddleware,
)

_JSON_ONLY = "Unsupported Media Type: Only 'application/json' is allowed"
# When the server stops, how long the engine thread gets to finish its step (the process exits after,
# even if it is still inside a compilation).
ENGINE_STOP_SECONDS = 5.0


def serving_config(args: argparse.Namespace, llm_engine: Any) -> Any:
    """The frontend's `ServingConfig` from the flags and the engine it serves."""
    from jaxllm.chat_utils import load_chat_template
    from jaxllm.entrypoints.openai.serving_config import ServingConfig

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
        tool_call_parser=args.tool_call_parser if getattr(args, "enable_auto_tool_choice", False) else None,
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
    from jaxllm.entrypoints.openai.request_tracker import RequestTracker
    from jaxllm.entrypoints.openai.serving_chat import OpenAIServingChat
    from jaxllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
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
            await asyncio.get_running_loop().run_in_executor(None, engine.shutdown, ENGINE_STOP_SECONDS)

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
    async def tokenize(request: TokenizeRequest) -> Response:
        response = await tokenization.create_tokenize(request)
        body = await tokenization.off_loop(response.model_dump_json, size=response.count)
        return Response(body, media_type="application/json")

    @app.post("/detokenize", responses={200: {"model": DetokenizeResponse}, **errors}, **post)
    async def detokenize(request: DetokenizeRequest) -> Response:
        response = await tokenization.create_detokenize(request)
        body = await tokenization.off_loop(response.model_dump_json, size=len(response.prompt))
        return Response(body, media_type="application/json")

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
