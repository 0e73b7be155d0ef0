"""Batch jobs over OpenAI batch files, without a server:

    jaxllm run-batch -i requests.jsonl -o answers.jsonl --model MODEL [--resume]
    python -m jaxllm.entrypoints.openai.run_batch -i requests.jsonl -o answers.jsonl --model MODEL

Each input line is `{"custom_id", "method": "POST", "url": "/v1/completions" | "/v1/chat/completions",
"body": {...}}`; each output line is `{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}`. The bodies are the server's: the same request models, checks and response builders
(`OpenAIServingCompletion`, `OpenAIServingChat`) on one `AsyncLLMEngine`, which gets every request at once
and batches them continuously. Answers are appended as they complete, one fsynced line each, so `--resume`
can pick up an interrupted job where it stopped.

Import-light: jax, fastapi and the engine are imported only when a batch runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

from jaxllm.entrypoints.openai.run_batch_io import (
    COMPLETIONS_URL,
    BatchLine,
    OutputWriter,
    check_paths,
    error_record,
    read_input,
    success_record,
)

logger = logging.getLogger("jaxllm.entrypoints.openai.run_batch")

_DESCRIPTION = "Run an OpenAI batch file (JSONL of /v1/completions and /v1/chat/completions requests) offline."


# ---- command line --------------------------------------------------------------------------------


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `jaxllm run-batch`: files, engine flags, and the server's frontend flags that shape bodies."""
    from jaxllm.engine.arg_utils import add_engine_arguments

    io = parser.add_argument_group("batch")
    io.add_argument("-i", "--input-file", required=True,
                    help="the batch input: a JSONL file, an http(s) URL, or - for stdin")
    io.add_argument("-o", "--output-file", required=True,
                    help="where the answers go (JSONL, one line per input line), or - for stdout")
    io.add_argument("--resume", action="store_true",
                    help="keep the answers already in the output file and run only the requests without one")
    io.add_argument("--max-concurrency", type=int, default=None,
                    help="at most this many requests in the engine at once (default: all of them)")
    io.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_arguments(parser)
    fe = parser.add_argument_group("responses (as in jaxllm serve)")
    fe.add_argument("--served-model-name", nargs="+", default=None,
                    help="names a request's `model` may use (the first is reported in answers); default: --model")
    fe.add_argument("--chat-template", default=None, help="a Jinja chat template: a file path or the template")
    fe.add_argument("--trust-request-chat-template", action="store_true",
                    help="let requests bring their own `chat_template`")
    fe.add_argument("--response-role", default="assistant", help="role of generated chat messages")
    fe.add_argument("--max-logprobs", type=int, default=20, help="largest `logprobs` / `top_logprobs` allowed")
    fe.add_argument("--generation-config", default="auto", choices=["auto", "vllm"],
                    help="auto: sampling defaults from the model's generation_config.json; vllm: ignore it")
    fe.add_argument("--enable-prompt-tokens-details", action="store_true",
                    help="report usage.prompt_tokens_details.cached_tokens")
    fe.add_argument("--return-tokens-as-token-ids", action="store_true",
                    help='logprob tokens as "token_id:<id>" strings')
    fe.add_argument("--enable-log-requests", action="store_true", help="log every request's prompt and params")
    fe.add_argument("--max-log-len", type=int, default=None, help="truncate logged prompts to this length")
    fe.add_argument("--tokenizer-mode", default="auto", choices=["auto", "hf", "slow"])
    fe.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"],
                    help="dummy: random weights of the model's shape")
    compat = parser.add_argument_group("accepted for compatibility with vLLM's run_batch (no effect)")
    compat.add_argument("--disable-log-requests", action="store_true")
    compat.add_argument("--disable-log-stats", action="store_true")
    compat.add_argument("--swap-space", type=float, default=None)
    compat.add_argument("--kv-cache-dtype", default=None)
    compat.add_argument("--enable-force-include-usage", action="store_true", help="(streams only)")
    compat.add_argument("--output-tmp-dir", default=None)
    compat.add_argument("--enable-metrics", action="store_true")
    compat.add_argument("--url", default=None, help="(vLLM's metrics address)")
    compat.add_argument("--port", type=int, default=8000, help="(vLLM's metrics port)")


def add_run_batch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `run-batch` subcommand of `jaxllm`."""
    parser = subparsers.add_parser("run-batch", help="run an OpenAI batch file offline", description=_DESCRIPTION)
    add_batch_arguments(parser)
    parser.set_defaults(func=run_batch_command)
    return parser


def make_arg_parser() -> argparse.ArgumentParser:
    """The parser of `python -m jaxllm.entrypoints.openai.run_batch`."""
    parser = argparse.ArgumentParser(prog="python -m jaxllm.entrypoints.openai.run_batch", description=_DESCRIPTION)
    add_batch_arguments(parser)
    return parser


def frontend_namespace(args: argparse.Namespace) -> argparse.Namespace:
    """`args` completed with the defaults of every `jaxllm serve` frontend flag (what `serving_config` reads)."""
    from jaxllm.entrypoints.openai.cli_args import add_frontend_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_frontend_arguments(parser)
    merged = parser.parse_args([])
    merged.max_n = None  # the server's default cap on `n` protects other clients; a batch has none
    for name, value in vars(args).items():
        setattr(merged, name, value)
    return merged


# ---- running a batch -----------------------------------------------------------------------------


class TokenCounter:
    """A stat logger: prompt and generated tokens so far (written by the engine thread, read by the loop)."""

    def __init__(self) -> None:
        self.prompt = 0
        self.generated = 0

    def record(self, snapshot: Any, stats: Any) -> None:
        self.prompt += stats.num_prompt_tokens
        self.generated += stats.num_generation_tokens


class BatchRunner:
    """Sends every pending line to one engine through the server's handlers; writes answers as they come."""

    def __init__(self, engine: Any, tokenizer: Any, config: Any, writer: OutputWriter, *,
                 max_concurrency: int | None = None, progress: bool = True):
        from jaxllm.entrypoints.openai.serving_chat import OpenAIServingChat
        from jaxllm.entrypoints.openai.serving_completion import OpenAIServingCompletion

        self.engine = engine
        self.writer = writer
        self.completions = OpenAIServingCompletion(engine, tokenizer, config)
        self.chat = OpenAIServingChat(engine, tokenizer, config)
        self.tokens = TokenCounter()
        engine.stat_loggers.append(self.tokens)
        self.max_concurrency = max_concurrency
        self.progress = progress
        self.answered = 0
        self.failed = 0
        self.dead: BaseException | None = None
        self.elapsed = 0.0
        self._bar: Any = None

    # -- one line --

    @staticmethod
    def parse_body(line: BatchLine) -> Any:
        """The line's body as the server's request model; invalid bodies raise a 400 `OpenAIError`."""
        from pydantic import ValidationError

        from jaxllm.entrypoints.openai.errors import OpenAIError, format_validation_errors
        from jaxllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest

        model = CompletionRequest if line.url == COMPLETIONS_URL else ChatCompletionRequest
        try:
            request = model.model_validate(line.body)
        except ValidationError as err:
            raise OpenAIError(format_validation_errors(list(err.errors())), 400) from None
        if request.stream:
            raise OpenAIError("Streaming (`stream: true`) is not supported in batch jobs; leave `stream` out.")
        return request

    def write_error(self, line: BatchLine, err: Any) -> None:
        self.writer.write(error_record(line.custom_id, err.response_body().model_dump(), err.status))
        self.failed += 1

    async def answer(self, line: BatchLine, slots: asyncio.Semaphore | None) -> None:
        from jaxllm.engine.async_engine import EngineDeadError
        from jaxllm.entrypoints.openai.errors import OpenAIError, to_openai_error

        try:
            if not line.ok:
                self.write_error(line, OpenAIError(line.message or "Invalid request.", line.status))
                return
            if slots is not None:
                await slots.acquire()
            try:
                request = self.parse_body(line)
                if line.url == COMPLETIONS_URL:
                    response = await self.completions.create_completion(request, None)
                else:
                    response = await self.chat.create_chat_completion(request, None)
            finally:
                if slots is not None:
                    slots.release()
            self.writer.write(success_record(line.key, bytes(response.body).decode("utf-8"), response.status_code))
            self.answered += 1
        except EngineDeadError as err:  # no answer is written: `--resume` runs this line again
            self.dead = self.dead or err
        except Exception as err:
            self.write_error(line, to_openai_error(err))
        finally:
            if self._bar is not None:
                self._bar.update(1)

    # -- the whole batch --

    def _postfix(self, start: float) -> str:
        elapsed = max(time.monotonic() - start, 1e-9)
        return f"input {self.tokens.prompt / elapsed:.1f} tok/s, output {self.tokens.generated / elapsed:.1f} tok/s"

    async def _tick(self, start: float) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._bar.set_postfix_str(self._postfix(start), refresh=True)

    async def run(self, lines: list[BatchLine]) -> None:
        """Answer `lines` (all sent at once, or `max_concurrency` at a time)."""
        from tqdm.auto import tqdm

        start = time.monotonic()
        self._bar = tqdm(total=len(lines), desc="Running batch", unit="req", dynamic_ncols=True,
                         disable=not self.progress, file=sys.stderr)
        ticker = asyncio.ensure_future(self._tick(start)) if self.progress else None
        slots = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
        self.engine.start()
        try:
            await asyncio.gather(*(self.answer(line, slots) for line in lines))
        finally:
            if ticker is not None:
                ticker.cancel()
            self._bar.set_postfix_str(self._postfix(start), refresh=False)
            self._bar.close()
            self.elapsed = time.monotonic() - start


def mark_duplicates(lines: list[BatchLine]) -> None:
    """A custom_id seen on an earlier line makes the later line a 400 (custom_ids name answers)."""
    first: dict[str, int] = {}
    for line in lines:
        if line.custom_id is None:
            continue
        seen = first.setdefault(line.custom_id, line.lineno)
        if seen != line.lineno and line.ok:
            line.status, line.message = 400, (
                f"Duplicate custom_id {line.custom_id!r} (first on line {seen}); each request needs its own."
            )


def _setup_logging() -> None:
    root = logging.getLogger("jaxllm")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s", "%m-%d %H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def load_engine(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(AsyncLLMEngine, tokenizer, ServingConfig) as `jaxllm serve` builds them from the same flags."""
    from jaxllm import LLM
    from jaxllm.engine.arg_utils import engine_kwargs
    from jaxllm.engine.async_engine import AsyncLLMEngine
    from jaxllm.entrypoints.openai.app import serving_config
    from jaxllm.entrypoints.openai.cli_args import validate_args
    from jaxllm.sampling_params import set_max_logprobs_limit

    ns = frontend_namespace(args)
    validate_args(ns)
    set_max_logprobs_limit(ns.max_logprobs)
    logger.info("Loading model %s", args.model or "(embedded default model)")
    llm = LLM(args.model, max_logprobs=ns.max_logprobs, tokenizer_mode=ns.tokenizer_mode,
              load_format=ns.load_format, **engine_kwargs(args))
    config = serving_config(ns, llm.llm_engine)
    engine = AsyncLLMEngine(llm.llm_engine, log_requests=config.log_requests)
    return engine, llm.tokenizer, config


def run_batch_command(args: argparse.Namespace) -> int:
    """Run the batch the flags describe. Exit code: 0 done, 1 the engine died, 2 bad flags or files."""
    _setup_logging()
    if args.max_concurrency is not None and args.max_concurrency < 1:
        print("error: --max-concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        check_paths(args.input_file, args.output_file)
        lines = read_input(args.input_file)
        writer = OutputWriter(args.output_file, resume=args.resume)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with contextlib.closing(writer):
        mark_duplicates(lines)
        todo = [line for line in lines if line.key not in writer.done]
        skipped = len(lines) - len(todo)
        if skipped:
            logger.info("Resuming: %d of %d requests already answered in %s", skipped, len(lines), args.output_file)
        if not todo:
            logger.info("Nothing to run: every request has an answer.")
            return 0
        try:
            engine, tokenizer, config = load_engine(args)
        except ImportError as err:
            print(f"error: {err} (run-batch needs the server extra: pip install 'jaxllm[serve]')", file=sys.stderr)
            return 2
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        runner = BatchRunner(engine, tokenizer, config, writer, max_concurrency=args.max_concurrency,
                             progress=not args.quiet)
        try:
            asyncio.run(runner.run(todo))
        except KeyboardInterrupt:
            logger.warning("Interrupted: %d answers written; rerun with --resume to finish.", writer.count)
            return 130
        except OSError as err:  # the output cannot be written (a full disk, ...)
            logger.error("Writing %s failed (%s); rerun with --resume once it is fixed.", args.output_file, err)
            return 1
        finally:
            engine.shutdown()
    tokens = runner.tokens
    logger.info(
        "Batch done in %.1f s: %d answered, %d errors, %d skipped (already answered); %d prompt + %d generated "
        "tokens (%.1f output tok/s).", runner.elapsed, runner.answered, runner.failed, skipped, tokens.prompt,
        tokens.generated, tokens.generated / max(runner.elapsed, 1e-9),
    )
    if runner.dead is not None:
        logger.error("The engine died (%s); rerun with --resume to finish the batch.", runner.dead)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_batch_command(make_arg_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
