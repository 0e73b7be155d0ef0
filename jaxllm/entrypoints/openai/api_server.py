"""The OpenAI-compatible HTTP server: `jaxllm serve MODEL` or
`python -m jaxllm.entrypoints.openai.api_server --model MODEL` (FastAPI + uvicorn).

This module is the command line and the running server. The app and its routes are built in app.py
(`build_app`), its middleware is in middleware.py.

FastAPI and uvicorn are imported inside functions, so `jaxllm generate` works without the server extra.

Shutdown (SIGTERM, SIGINT): the listening socket closes, requests that still arrive on open connections
get a 503 (so does /health), in-flight requests run on; after `--shutdown-timeout` seconds every request
still open is answered with a 503 (an error event in a stream), whatever state it is in: generating,
waiting for the engine to admit it (e.g. while it compiles) or being tokenized. Then the engine stops and
the process exits at once (`os._exit`, after flushing the logs: no slow teardown of the heap): at most
`SHUTDOWN_GRACE_SECONDS` + `app.ENGINE_STOP_SECONDS` after the timeout.
"""

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from typing import Any, NoReturn

from jaxllm.engine.arg_utils import add_engine_arguments, engine_kwargs
from jaxllm.entrypoints.openai.app import build_app, serving_config
from jaxllm.entrypoints.openai.auth import API_KEY_VARIABLES, resolve_api_keys
from jaxllm.entrypoints.openai.cli_args import add_frontend_arguments, validate_args

logger = logging.getLogger("jaxllm.entrypoints.openai.api_server")


# ---- command line --------------------------------------------------------------------------------


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `serve` subcommand of `jaxllm` (`jaxllm serve [MODEL] [flags]`)."""
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
    parser = argparse.ArgumentParser(
        prog="python -m jaxllm.entrypoints.openai.api_server",
        description="Serve a model over vLLM's OpenAI-compatible HTTP API.",
    )
    add_engine_arguments(parser)
    add_frontend_arguments(parser)
    return parser


def serve_command(args: argparse.Namespace) -> NoReturn:
    if getattr(args, "model_tag", None):
        args.model = args.model_tag
    exit_now(run_server(args))


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


# After --shutdown-timeout answers the open requests with 503s: how long those answers may take to go out
# before uvicorn cancels what is left; then the engine thread gets app.ENGINE_STOP_SECONDS to stop.
SHUTDOWN_GRACE_SECONDS = 2.0
GIL_SWITCH_INTERVAL_S = 0.001  # sys.setswitchinterval while serving (Python's default: 0.005)


def create_server(args: argparse.Namespace, llm_engine: Any, tokenizer: Any, host: str | None = None) -> Any:
    """The `uvicorn.Server` that serves `llm_engine` with these flags (not started; `.run()` it).

    Its app is `server.config.app`; the engine thread starts and stops with the server.
    """
    import uvicorn

    from jaxllm.engine.async_engine import AsyncLLMEngine
    from jaxllm.entrypoints.openai.request_tracker import ShutdownAbortError

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
    if not api_keys:
        logger.warning("API key authentication is off: /v1 routes answer anyone who can reach this server "
                       "(set --api-key or $%s to require a key).", API_KEY_VARIABLES[0])
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
    from jaxllm.sampling_params import set_max_logprobs_limit

    set_max_logprobs_limit(args.max_logprobs)
    logger.info("Loading model %s", args.model or "(embedded default model)")
    return LLM(args.model, max_logprobs=args.max_logprobs, tokenizer_mode=args.tokenizer_mode,
               load_format=args.load_format, usage_context="OPENAI_API_SERVER", **engine_kwargs(args))


def run_server(args: argparse.Namespace) -> int:
    """Load the model, then serve until SIGTERM/SIGINT (in-flight requests finish first). Exit code."""
    _setup_logging()
    host = args.host or "0.0.0.0"
    try:
        validate_args(args)
        resolve_api_keys(args.api_key)  # an empty key is an error before the (long) model load
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
    freeze_startup_heap()
    # The engine thread and the event loop share the GIL. When the engine's wait for the device ends, it
    # must get the GIL back at once, not after the 5 ms the busy loop may hold it by default: with
    # hundreds of streams that wait would be added to every step.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    server.run()
    logger.info("Server stopped.")
    return 0 if server.started else 1


def freeze_startup_heap() -> None:
    """Keep the garbage collector off what startup built (the model, jax, the tokenizer: millions of
    objects that live until exit). Otherwise every full collection walks all of it, stopping the event
    loop and the engine for seconds at a time under load."""
    gc.collect()
    gc.freeze()


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once the server has stopped: logs and stdio are flushed, then `os._exit`.

    Skips the interpreter's teardown, which on a large heap (a loaded model, compiled programs) spends
    seconds in garbage collection, and which could wait on an engine thread still inside a compilation.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    args = make_arg_parser().parse_args(argv)
    exit_now(run_server(args))


if __name__ == "__main__":
    main()
