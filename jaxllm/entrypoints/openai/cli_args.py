"""Frontend flags of `jaxllm serve`, spelled as vLLM spells them (engine flags live in entrypoints/cli.py).

Flags that tune parts of vLLM this engine does not have (CUDA graphs, swap space, ...) are accepted and
ignored, so that existing `vllm serve` command lines, systemd units and Dockerfiles run unchanged.
"""

from __future__ import annotations

import argparse
import json

from jaxllm.entrypoints.openai.tool_parsers.registry import TOOL_PARSERS

DEFAULT_SERVED_NAME = "jaxllm-default"  # the name of the embedded default model when no model is given
DEFAULT_MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_N = 128  # OpenAI's own limit on `n`


def _json_list(value: str) -> list[str]:
    parsed = json.loads(value)
    if not isinstance(parsed, list):
        raise argparse.ArgumentTypeError(f"expected a JSON list, got {value!r}")
    return [str(v) for v in parsed]


def add_frontend_arguments(parser: argparse.ArgumentParser) -> None:
    srv = parser.add_argument_group("server")
    srv.add_argument("--host", default=None, help="address to bind (default: all interfaces)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", nargs="+", default=None,
                     help="require `Authorization: Bearer <key>` on /v1 routes; one or more keys, none empty "
                          "(default: $JAXLLM_API_KEY, else $VLLM_API_KEY; none: no authentication)")
    srv.add_argument("--served-model-name", nargs="+", default=None,
                     help="names clients use in `model` (the first is reported in responses); default: --model")
    srv.add_argument("--chat-template", default=None, help="a Jinja chat template: a file path or the template")
    srv.add_argument("--chat-template-content-format", choices=["auto", "string", "openai"], default="auto",
                     help="accepted for compatibility; text content parts are always joined into a string")
    srv.add_argument("--trust-request-chat-template", action="store_true",
                     help="let requests bring their own `chat_template` (refused by default)")
    srv.add_argument("--response-role", default="assistant", help="role of generated chat messages")
    srv.add_argument("--root-path", default=None, help="path prefix when served behind a path-based proxy")
    srv.add_argument("--allowed-origins", type=_json_list, default=["*"], help="CORS origins (JSON list)")
    srv.add_argument("--allowed-methods", type=_json_list, default=["*"], help="CORS methods (JSON list)")
    srv.add_argument("--allowed-headers", type=_json_list, default=["*"], help="CORS headers (JSON list)")
    srv.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    srv.add_argument("--ssl-keyfile", default=None)
    srv.add_argument("--ssl-certfile", default=None)
    srv.add_argument("--ssl-ca-certs", default=None)
    srv.add_argument("--max-logprobs", type=int, default=20, help="largest `logprobs` / `top_logprobs` allowed")
    srv.add_argument("--generation-config", default="auto", choices=["auto", "vllm"],
                     help="auto: sampling defaults from the model's generation_config.json; vllm: ignore it")
    srv.add_argument("--enable-log-requests", action="store_true", help="log every request's prompt and params")
    srv.add_argument("--disable-log-requests", action="store_true", help="do not log requests (the default)")
    srv.add_argument("--max-log-len", type=int, default=None, help="truncate logged prompts to this length")
    srv.add_argument("--disable-log-stats", action="store_true", help="no periodic throughput log lines")
    srv.add_argument("--uvicorn-log-level", default="info",
                     choices=["critical", "error", "warning", "info", "debug", "trace"])
    srv.add_argument("--disable-uvicorn-access-log", action="store_true")
    srv.add_argument("--enable-prompt-tokens-details", action="store_true",
                     help="report usage.prompt_tokens_details.cached_tokens")
    srv.add_argument("--enable-force-include-usage", action="store_true",
                     help="send the usage chunk at the end of every stream")
    srv.add_argument("--enable-request-id-headers", action="store_true", help="send an X-Request-Id header")
    srv.add_argument("--return-tokens-as-token-ids", action="store_true",
                     help='logprob tokens as "token_id:<id>" strings')
    srv.add_argument("--disable-fastapi-docs", action="store_true", help="no /docs, /redoc, /openapi.json")
    srv.add_argument("--shutdown-timeout", type=float, default=None,
                     help="on SIGTERM, seconds to let in-flight requests finish; then every request still "
                          "open, admitted or not, is answered with a 503 and the process exits within a few "
                          "seconds more (default: wait for all)")
    tools = parser.add_argument_group("tool calling")
    tools.add_argument("--enable-auto-tool-choice", action="store_true",
                       help='let the model decide when to call tools (tool_choice "auto"); needs --tool-call-parser')
    tools.add_argument("--tool-call-parser", default=None, choices=sorted(TOOL_PARSERS),
                       help="how the model writes tool calls")
    lim = parser.add_argument_group("limits")
    lim.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_REQUEST_BODY_BYTES,
                     help="largest request body accepted; larger bodies get a 413 (0: no limit; "
                          "default: %(default)s = 16 MiB)")
    lim.add_argument("--max-n", type=int, default=DEFAULT_MAX_N,
                     help="largest `n` / `best_of` (and beam width) per prompt; more is a 400 "
                          "(default: %(default)s, as OpenAI)")
    lim.add_argument("--max-prompt-tokens", type=int, default=None,
                     help="largest prompt, in tokens, after truncation; longer prompts get a 400 "
                          "(default: max_model_len - 1)")
    lim.add_argument("--request-timeout", type=float, default=None,
                     help="seconds a completion or chat request may take once queued; then it is aborted "
                          "with a 408 (default: no limit)")
    srv.add_argument("--tokenizer-mode", default="auto", choices=["auto", "hf", "slow"])
    srv.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"],
                     help="dummy: random weights of the model's shape (for benchmarks)")

    compat = parser.add_argument_group("accepted for compatibility with vllm serve (no effect)")
    compat.add_argument("--disable-custom-all-reduce", action="store_true")
    compat.add_argument("--disable-frontend-multiprocessing", action="store_true")
    compat.add_argument("--swap-space", type=float, default=None)
    compat.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)


def validate_args(args: argparse.Namespace) -> None:
    """Checks argparse cannot express; raises ValueError with the fix."""
    if args.pipeline_parallel_size != 1:
        raise ValueError("--pipeline-parallel-size > 1 is not supported; use --tensor-parallel-size.")
    if args.max_logprobs < 0 and args.max_logprobs != -1:
        raise ValueError("--max-logprobs must be non-negative (or -1 for no limit).")
    if args.port < 0 or args.port > 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}.")
    for name in ("max_request_body_bytes",):
        if getattr(args, name, 0) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be non-negative (0 means no limit).")
    for name in ("max_n", "max_prompt_tokens"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1.")
    if getattr(args, "enable_auto_tool_choice", False) and not getattr(args, "tool_call_parser", None):
        raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
    timeout = getattr(args, "request_timeout", None)
    if timeout is not None and not timeout > 0:
        raise ValueError("--request-timeout must be a positive number of seconds.")
    timeout = getattr(args, "shutdown_timeout", None)
    if timeout is not None and not timeout >= 0:
        raise ValueError("--shutdown-timeout must be a non-negative number of seconds.")
