"""OpenAIServing: what every endpoint shares (model check, prompt checks, sampling params, logprobs, SSE).

Prompts are tokenized here, so that context-length errors are 400s with vLLM's messages before anything
reaches the engine; the engine gets `{"prompt", "prompt_token_ids"}`. Work that grows with the input
(chat templates, tokenizing, detokenizing, building a response) runs on worker threads (`off_loop`), so
the event loop keeps answering every other request, /health and /metrics whatever one request costs.

`use_beam_search=true` turns a request into a beam search with `n` beams (`BeamSearchParams`): its one
engine output holds the n best beams, best first, which the endpoints answer like n ordinary choices.

Operator limits (`--max-n`, `--max-prompt-tokens`) are 400s here; `RequestTracker` enforces
`--request-timeout` (408) and aborts what is still running when a shutdown outlasts `--shutdown-timeout`
(503): it fails the request's streams, which aborts their engine requests and frees their KV blocks.

See also: `ServingConfig` (serving_config.py), `RequestTracker` and its errors (request_tracker.py), the
logprobs formatting (serving_logprobs.py), `merge_streams` / `collect_final` (stream_merge.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from jaxllm.chat_utils import apply_chat_template
from jaxllm.engine.async_engine import AsyncLLMEngine
from jaxllm.engine.request_stream import RequestStream
from jaxllm.entrypoints.openai.errors import OpenAIError
from jaxllm.entrypoints.openai.protocol import PromptTokenUsageInfo, UsageInfo, random_id
from jaxllm.entrypoints.openai.request_tracker import RequestTracker
from jaxllm.entrypoints.openai.response_format import structured_outputs_from_request
from jaxllm.entrypoints.openai.serving_config import ServingConfig
from jaxllm.entrypoints.openai.serving_logprobs import OpenAIServingLogprobs
from jaxllm.entrypoints.openai.stream_merge import collect_final
from jaxllm.outputs import RequestOutput
from jaxllm.sampling_params import BeamSearchParams, SamplingParams

logger = logging.getLogger(__name__)

T = TypeVar("T")

SSE_DONE = "data: [DONE]\n\n"
# A beam's score divides by len ** length_penalty; past this bound the length term swamps the
# log-probabilities (and for long beams leaves the float range).
MAX_ABS_LENGTH_PENALTY = 10.0


# A stream lets the event loop run other work after this many events (a step of an n=5000 request makes
# 5000 of them).
EVENTS_PER_YIELD = 32


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


async def cooperative(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """`events`, giving the event loop a turn every `EVENTS_PER_YIELD` events."""
    count = 0
    try:
        async for event in events:
            yield event
            count += 1
            if count % EVENTS_PER_YIELD == 0:
                await asyncio.sleep(0)
    finally:
        await events.aclose()


# Requests with at least this much text (or this many token ids) are prepared on a pool of their own with
# LARGE_INPUT_WORKERS threads: a few huge bodies cannot take every worker thread from the small requests.
LARGE_INPUT_SIZE = 256 * 1024
LARGE_INPUT_WORKERS = 2
_large_input_pool: concurrent.futures.ThreadPoolExecutor | None = None
_large_input_pool_lock = threading.Lock()


def _large_input_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _large_input_pool
    with _large_input_pool_lock:
        if _large_input_pool is None:
            _large_input_pool = concurrent.futures.ThreadPoolExecutor(
                LARGE_INPUT_WORKERS, thread_name_prefix="jaxllm-large-input")
        return _large_input_pool


def input_size(value: Any) -> int:
    """Characters of text plus token ids in a request field (strings, lists and dicts, however nested)."""
    size, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            if item and isinstance(item[0], int):
                size += len(item)
            else:
                stack.extend(item)
    return size


class OpenAIServing(OpenAIServingLogprobs):
    def __init__(self, engine: AsyncLLMEngine, tokenizer: Any, config: ServingConfig,
                 tracker: RequestTracker | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.tracker = tracker if tracker is not None else RequestTracker(config.request_timeout)
        self._decoded: dict[int, str] = {}

    @property
    def model_name(self) -> str:
        return self.config.served_model_names[0]

    async def off_loop(self, fn: Callable[..., T], *args: Any, size: int = 0) -> T:
        """`fn(*args)` on a worker thread; the shutdown abort (`--shutdown-timeout`) ends the wait with a 503.

        `size` (see `input_size`) at or over `LARGE_INPUT_SIZE` sends the work to the large-input pool.
        """
        loop = asyncio.get_running_loop()
        executor = _large_input_executor() if size >= LARGE_INPUT_SIZE else None
        return await self.tracker.guard(loop.run_in_executor(executor, functools.partial(fn, *args)))

    # ---- checks ------------------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model and model not in self.config.served_model_names:
            raise OpenAIError(f"The model `{model}` does not exist.", 404)

    def check_engine(self) -> None:
        self.engine.check_health()

    def chat_template_for(self, request: Any) -> str | None:
        """The template a chat request uses; one sent in the request only with --trust-request-chat-template."""
        if request.chat_template is None:
            return self.config.chat_template
        if not self.config.trust_request_chat_template:
            raise OpenAIError(
                "Chat template is passed with request, but --trust-request-chat-template is not set. "
                "Refused request with untrusted chat template."
            )
        return request.chat_template

    def render_chat(self, request: Any) -> str:
        """The prompt string of a chat (or tokenize-chat) request; a template that refuses it is a 400."""
        try:
            return apply_chat_template(
                self.tokenizer,
                request.messages,
                chat_template=self.chat_template_for(request),
                add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
                tools=request.tools,
                documents=request.documents,
                chat_template_kwargs=request.chat_template_kwargs,
            )
        except ValueError as err:
            raise OpenAIError(str(err)) from err

    def request_id(self, prefix: str, raw_request: Any, request: Any = None) -> str:
        given = getattr(request, "request_id", None) or (
            raw_request.headers.get("x-request-id") if raw_request is not None else None
        )
        return f"{prefix}-{given}" if given else random_id(prefix)

    # ---- prompts -----------------------------------------------------------------------------

    def tokenize(self, text: str, add_special_tokens: bool, truncate: int | None = None) -> list[int]:
        """The token ids of `text`; text the tokenizer refuses is a 400. Blocking: call it via `off_loop`."""
        try:
            ids = list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)
        except (TypeError, UnicodeError) as err:  # e.g. an unpaired surrogate that slipped past validation
            raise OpenAIError(f"The text could not be tokenized: {err}") from err
        return self.truncate(ids, truncate)

    def truncate(self, ids: list[int], truncate: int | None) -> list[int]:
        if truncate is None:
            return ids
        keep = self.config.max_model_len if truncate == -1 else truncate
        return ids[-keep:] if keep > 0 else ids

    def check_prompt_tokens(self, num_prompt_tokens: int, param: str = "prompt") -> None:
        """`--max-prompt-tokens`: a longer prompt is a 400."""
        limit = self.config.max_prompt_tokens
        if limit is not None and num_prompt_tokens > limit:
            raise OpenAIError(
                f"This server accepts prompts of at most {limit} tokens (--max-prompt-tokens); your prompt "
                f"has {num_prompt_tokens} tokens.", param=param)

    def check_n(self, request: Any) -> None:
        """`--max-n`: more completions (n, best_of) or beams per prompt than allowed is a 400."""
        limit = self.config.max_n
        if limit is None:
            return
        for name in ("n", "best_of"):
            value = getattr(request, name, None)
            if isinstance(value, int) and value > limit:
                raise OpenAIError(f"`{name}` must be at most {limit} on this server (--max-n), got {value}.",
                                  param=name)

    def check_token_ids(self, ids: list[int]) -> None:
        vocab = self.config.vocab_size
        for t in ids:
            if not 0 <= t < vocab:
                raise OpenAIError(f"Token id {t} is out of vocabulary (vocabulary size {vocab}).")

    def resolve_max_tokens(self, num_prompt_tokens: int, requested: int | None) -> int:
        """The output budget: vLLM's context checks (400s), then min(requested, room, model cap)."""
        limit = self.config.max_model_len
        if num_prompt_tokens >= limit:
            raise OpenAIError(
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{num_prompt_tokens} input tokens. Please reduce the length of the input messages."
            )
        room = limit - num_prompt_tokens
        if requested is not None and requested > room:
            raise OpenAIError(
                f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's maximum "
                f"context length is {limit} tokens and your request has {num_prompt_tokens} input tokens "
                f"({requested} > {limit} - {num_prompt_tokens})."
            )
        return min(v for v in (room, requested, self.config.default_max_tokens) if v is not None)

    def sampling_params(
        self, request: Any, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None
    ) -> SamplingParams | BeamSearchParams:
        """The engine parameters of a completion or chat request; invalid values raise 400s.

        `SamplingParams`, or `BeamSearchParams` when the request sets `use_beam_search`.
        """
        structured = structured_outputs_from_request(request)
        self.check_n(request)
        if request.use_beam_search:
            if structured is not None:
                raise OpenAIError("Structured outputs are not available with `use_beam_search`.")
            return self.beam_search_params(request, max_tokens, logprobs, prompt_logprobs)
        defaults = self.config.default_sampling

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(request, name)
            return defaults.get(name, fallback) if value is None else value

        params = SamplingParams(
            n=request.n,
            best_of=request.best_of,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=pick("repetition_penalty", 1.0),
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0),
            seed=request.seed,
            stop=request.stop,
            stop_token_ids=request.stop_token_ids,
            bad_words=request.bad_words or None,
            ignore_eos=request.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=request.skip_special_tokens,
            spaces_between_special_tokens=request.spaces_between_special_tokens,
            include_stop_str_in_output=request.include_stop_str_in_output,
            logit_bias=request.logit_bias,
            allowed_token_ids=request.allowed_token_ids,
            length_penalty=request.length_penalty,
            structured_outputs=structured,
        )
        params.verify(max_logprobs=self.config.max_logprobs, vocab_size=self.config.vocab_size)
        return params

    def beam_search_params(
        self, request: Any, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None
    ) -> BeamSearchParams:
        """BeamSearchParams of a `use_beam_search` request, as vLLM reads it: `n` beams, `best_of` ignored.

        `length_penalty`, `ignore_eos`, `include_stop_str_in_output` and the token budget are honoured;
        `temperature` is accepted. Prompt logprobs are not computed by a beam search: asking for them is a 400.
        """
        if prompt_logprobs is not None:
            raise OpenAIError(
                "Prompt logprobs (`prompt_logprobs`, or `echo` with `logprobs`) are not available with "
                "`use_beam_search`."
            )
        if not abs(request.length_penalty) <= MAX_ABS_LENGTH_PENALTY:
            raise OpenAIError(f"length_penalty must be between -{MAX_ABS_LENGTH_PENALTY:g} and "
                              f"{MAX_ABS_LENGTH_PENALTY:g}, got {request.length_penalty}.", param="length_penalty")
        temperature = request.temperature
        if temperature is None:
            temperature = self.config.default_sampling.get("temperature", 1.0)
        try:
            # the same limit on `logprobs` / `top_logprobs` as a sampled request
            SamplingParams(logprobs=logprobs).verify(max_logprobs=self.config.max_logprobs,
                                                     vocab_size=self.config.vocab_size)
            return BeamSearchParams(
                beam_width=request.n,
                max_tokens=max_tokens,
                ignore_eos=request.ignore_eos,
                temperature=temperature,
                length_penalty=request.length_penalty,
                include_stop_str_in_output=request.include_stop_str_in_output,
            )
        except ValueError as err:
            raise OpenAIError(str(err)) from err

    async def add_requests(
        self,
        request_id: str,
        prompts: list[tuple[str | None, list[int]]],
        params: list[SamplingParams | BeamSearchParams],
    ) -> list[RequestStream]:
        """Submit one engine request per prompt (ids `<request_id>-<i>`); all or none are kept.

        The engine's `ValueError` (an invalid prompt, a beam width over its limit) is a 400.
        """
        streams: list[RequestStream] = []
        try:
            for i, ((text, ids), sp) in enumerate(zip(prompts, params)):
                prompt = {"prompt_token_ids": ids} if text is None else {"prompt": text, "prompt_token_ids": ids}
                if self.config.log_requests:
                    self._log_request(f"{request_id}-{i}", text, ids, sp)
                streams.append(await self.tracker.guard(self.engine.add_request(f"{request_id}-{i}", prompt, sp)))
        except BaseException as err:
            for stream in streams:
                stream.close()
            if isinstance(err, ValueError):
                raise OpenAIError(str(err)) from err
            raise
        self.tracker.track(streams)
        return streams

    async def collect(self, streams: list[RequestStream]) -> list[RequestOutput]:
        """The final outputs of a non-streaming request (its streams are closed and untracked after)."""
        try:
            return await collect_final(streams)
        finally:
            self.tracker.untrack(streams)

    def _log_request(
        self, request_id: str, text: str | None, ids: list[int], params: SamplingParams | BeamSearchParams
    ) -> None:
        limit = self.config.max_log_len
        if limit is not None:
            text = text[:limit] if text is not None else None
            ids = ids[:limit]
        logger.info("Received request %s: prompt: %r, params: %r, prompt_token_ids: %s", request_id, text, params, ids)

    # ---- outputs -----------------------------------------------------------------------------

    def usage(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> UsageInfo:
        """Usage; with --enable-prompt-tokens-details, how many prompt tokens the prefix cache served."""
        details = (PromptTokenUsageInfo(cached_tokens=cached_tokens)
                   if self.config.enable_prompt_tokens_details else None)
        return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens, prompt_tokens_details=details)

    def stream_usage_flags(self, request: Any) -> tuple[bool, bool]:
        """(include_usage, continuous_usage_stats) for a streaming request."""
        opts = request.stream_options
        include = self.config.enable_force_include_usage or bool(opts is not None and opts.include_usage)
        continuous = include and bool(opts is not None and opts.continuous_usage_stats)
        return include, continuous


class GenerationError(OpenAIError):
    """A model step failed for this request (finish_reason "error")."""

    def __init__(self) -> None:
        super().__init__("Internal server error", 500)
