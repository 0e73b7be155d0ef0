"""POST /v1/completions: one engine request per prompt, choices ordered prompt-major (index = p * n + i)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response, StreamingResponse

from jaxllm.entrypoints.openai.errors import OpenAIError, stream_error_event
from jaxllm.entrypoints.openai.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from jaxllm.entrypoints.openai.serving_engine import (
    SSE_DONE,
    GenerationError,
    OpenAIServing,
    cooperative,
    input_size,
    sse,
)
from jaxllm.entrypoints.openai.stream_merge import merge_streams
from jaxllm.outputs import CompletionOutput, RequestOutput

_NO_PROMPT = "Either prompt or prompt_embeds must be provided and non-empty."


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(self, request: CompletionRequest, raw_request: Any = None) -> Response:
        self.check_model(request.model)
        self.check_engine()
        if request.suffix is not None:
            raise OpenAIError("suffix is not currently supported")
        if request.prompt_embeds is not None:
            raise OpenAIError("prompt_embeds is not supported.")
        prompts = await self.off_loop(self._prompts, request, size=input_size(request.prompt))
        logprobs = request.logprobs
        prompt_logprobs = request.prompt_logprobs
        if request.echo and logprobs is not None:
            prompt_logprobs = max(prompt_logprobs or 0, logprobs)
        params = [
            self.sampling_params(request, self.resolve_max_tokens(len(ids), request.max_tokens), logprobs,
                                 prompt_logprobs)
            for _, ids in prompts
        ]
        request_id = self.request_id("cmpl", raw_request, request)
        created = int(time.time())
        streams = await self.add_requests(request_id, prompts, params)
        if request.stream:
            return StreamingResponse(
                cooperative(self._stream(request, request_id, created, prompts, streams)), media_type="text/event-stream"
            )
        finals = await self.collect(streams)
        body = await self.off_loop(self._response_json, request, request_id, created, prompts, finals)
        return Response(content=body, media_type="application/json")

    def _prompts(self, request: CompletionRequest) -> list[tuple[str | None, list[int]]]:
        """[(text or None, token ids)] for every prompt in the request."""
        prompt = request.prompt
        if prompt is None or (isinstance(prompt, list) and not prompt):
            raise OpenAIError(_NO_PROMPT)
        if isinstance(prompt, str):
            items: list = [prompt]
        elif isinstance(prompt[0], int):
            items = [list(prompt)]
        else:
            items = list(prompt)
        result = []
        for item in items:
            if isinstance(item, str):
                ids = self.tokenize(item, request.add_special_tokens, request.truncate_prompt_tokens)
                text = item
            else:
                ids, text = self.truncate(list(item), request.truncate_prompt_tokens), None
                self.check_token_ids(ids)
            if not ids:
                raise OpenAIError("The decoder prompt cannot be empty.")
            self.check_prompt_tokens(len(ids))
            result.append((text, ids))
        return result

    def _echo(self, text: str | None, ids: list[int]) -> str:
        return text if text is not None else self.tokenizer.decode(ids)

    def _choice_logprobs(self, request, res: RequestOutput, out: CompletionOutput, with_prompt: bool,
                         prompt_ids: list[int], offset: int):
        if request.logprobs is None:
            return None
        ids, steps = list(out.token_ids), list(out.logprobs or [])
        if with_prompt:
            prompt_steps = list(res.prompt_logprobs or [None] * len(prompt_ids))
            ids, steps = prompt_ids + ids, prompt_steps + steps
        return self.completion_logprobs(ids, steps, offset, bool(request.return_tokens_as_token_ids))

    def _response_json(self, request, request_id, created, prompts, finals: list[RequestOutput]) -> str:
        return self._response(request, request_id, created, prompts, finals).model_dump_json()

    def _response(self, request, request_id, created, prompts, finals: list[RequestOutput]) -> CompletionResponse:
        choices = []
        num_generated = 0
        for p, (res, (text, ids)) in enumerate(zip(finals, prompts)):
            for out in sorted(res.outputs, key=lambda o: o.index):
                if out.finish_reason == "error":
                    raise GenerationError()
                num_generated += len(out.token_ids)
                body = (self._echo(text, ids) + out.text) if request.echo else out.text
                choices.append(
                    CompletionResponseChoice(
                        index=p * request.n + out.index,
                        text=body,
                        logprobs=self._choice_logprobs(request, res, out, request.echo, ids, 0),
                        finish_reason=out.finish_reason,
                        stop_reason=out.stop_reason,
                        token_ids=list(out.token_ids) if request.return_token_ids else None,
                        prompt_logprobs=(self.prompt_logprobs_json(res.prompt_logprobs)
                                         if request.prompt_logprobs is not None else None),
                        prompt_token_ids=ids if request.return_token_ids else None,
                    )
                )
        choices.sort(key=lambda c: c.index)
        usage = self.usage(sum(len(ids) for _, ids in prompts), num_generated,
                           sum(res.num_cached_tokens or 0 for res in finals))
        return CompletionResponse(id=request_id, created=created, model=self.model_name, choices=choices,
                                  usage=usage)

    async def _stream(self, request, request_id, created, prompts, streams) -> AsyncIterator[str]:
        include_usage, continuous = self.stream_usage_flags(request)
        n = request.n
        started: set[int] = set()
        finished: set[int] = set()
        text_len: dict[int, int] = {}
        num_tokens: dict[int, int] = {}
        try:
            async for p, res in merge_streams(streams):
                text, ids = prompts[p]
                for out in res.outputs:
                    index = p * n + out.index
                    if index in finished:
                        continue
                    first = index not in started
                    if out.finish_reason == "error":
                        raise GenerationError()
                    if not out.token_ids and out.finish_reason is None and not (first and request.echo):
                        continue
                    started.add(index)
                    echo = first and request.echo
                    delta = (self._echo(text, ids) + out.text) if echo else out.text
                    logprobs = self._choice_logprobs(request, res, out, echo, ids, text_len.get(index, 0))
                    text_len[index] = text_len.get(index, 0) + len(delta)
                    num_tokens[index] = num_tokens.get(index, 0) + len(out.token_ids)
                    if out.finish_reason is not None:
                        finished.add(index)
                    chunk = CompletionStreamResponse(
                        id=request_id,
                        created=created,
                        model=self.model_name,
                        choices=[
                            CompletionResponseStreamChoice(
                                index=index,
                                text=delta,
                                logprobs=logprobs,
                                finish_reason=out.finish_reason,
                                stop_reason=out.stop_reason,
                                token_ids=list(out.token_ids) if request.return_token_ids else None,
                                prompt_token_ids=ids if first and request.return_token_ids else None,
                            )
                        ],
                    )
                    if continuous:
                        chunk.usage = self.usage(len(ids), num_tokens[index])
                    yield sse(chunk.model_dump_json())
            if include_usage:
                usage = self.usage(sum(len(ids) for _, ids in prompts), sum(num_tokens.values()))
                final = CompletionStreamResponse(id=request_id, created=created, model=self.model_name,
                                                 choices=[], usage=usage)
                yield sse(final.model_dump_json())
        except Exception as err:
            yield stream_error_event(err)
        finally:
            for stream in streams:
                stream.close()
            self.tracker.untrack(streams)
        yield SSE_DONE
