"""POST /v1/chat/completions: the chat template turns messages into a prompt; then it is a completion.

Streaming sends, per choice, a first chunk with `delta: {"role": "assistant", "content": ""}`, then content
deltas, the last one with `finish_reason`; with `stream_options.include_usage` a final chunk with
`choices: []` and the usage; then `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response, StreamingResponse

from jaxllm.entrypoints.openai.chat_tool_calls import ChatToolCalls, ToolChoiceError
from jaxllm.entrypoints.openai.errors import OpenAIError, stream_error_event
from jaxllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
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
from jaxllm.sampling_params import SamplingParams


class OpenAIServingChat(OpenAIServing):
    async def create_chat_completion(self, request: ChatCompletionRequest, raw_request: Any = None) -> Response:
        self.check_model(request.model)
        self.check_engine()
        try:
            tools = ChatToolCalls.for_request(request, self.config.tool_call_parser)
        except ToolChoiceError as err:
            raise OpenAIError(str(err), param=err.param) from err
        prompt, ids = await self.off_loop(self._prompt, request, size=input_size(request.messages))
        requested = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        top = request.top_logprobs or 0
        params = self.sampling_params(
            request, self.resolve_max_tokens(len(ids), requested), top if request.logprobs else None,
            request.prompt_logprobs,
        )
        forced = tools.structured_outputs()
        if forced is not None:
            if not isinstance(params, SamplingParams):
                raise OpenAIError("tool_choice `required` or a named function is not available with "
                                  "`use_beam_search`.")
            params.structured_outputs = forced
        request_id = self.request_id("chatcmpl", raw_request, request)
        created = int(time.time())
        streams = await self.add_requests(request_id, [(prompt, ids)], [params])
        if request.stream:
            return StreamingResponse(cooperative(self._stream(request, request_id, created, ids, streams, tools)),
                                     media_type="text/event-stream")
        (final,) = await self.collect(streams)
        body = await self.off_loop(self._response_json, request, request_id, created, ids, final, tools)
        return Response(content=body, media_type="application/json")

    def _prompt(self, request: ChatCompletionRequest) -> tuple[str, list[int]]:
        """(prompt text, token ids) of the conversation; blocking (run via `off_loop`)."""
        prompt = self.render_chat(request)
        ids = self.tokenize(prompt, request.add_special_tokens, request.truncate_prompt_tokens)
        if not ids:
            raise OpenAIError("The decoder prompt cannot be empty.")
        self.check_prompt_tokens(len(ids), param="messages")
        return prompt, ids

    def _role(self, request: ChatCompletionRequest) -> str:
        if request.add_generation_prompt:
            return self.config.response_role
        return str(request.messages[-1].get("role", self.config.response_role))

    def _echo_text(self, request: ChatCompletionRequest, role: str) -> str:
        """With `echo`, the last message's content when it has the response's role."""
        if not request.echo or not request.messages:
            return ""
        last = request.messages[-1]
        content = last.get("content")
        if last.get("role") != role:
            return ""
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content or ""

    def _logprobs(self, request: ChatCompletionRequest, out: CompletionOutput):
        if not request.logprobs:
            return None
        return self.chat_logprobs(list(out.token_ids), list(out.logprobs or []), request.top_logprobs or 0,
                                  bool(request.return_tokens_as_token_ids))

    def _response_json(self, request, request_id, created, ids, final: RequestOutput, tools: ChatToolCalls) -> str:
        return self._response(request, request_id, created, ids, final, tools).model_dump_json()

    def _response(self, request, request_id, created, ids, final: RequestOutput,
                  tools: ChatToolCalls) -> ChatCompletionResponse:
        role = self._role(request)
        echo = self._echo_text(request, role)
        choices = []
        for out in sorted(final.outputs, key=lambda o: o.index):
            if out.finish_reason == "error":
                raise GenerationError()
            content, calls = tools.calls(out.text)
            content = echo + content if content is not None else (echo or None)
            choices.append(
                ChatCompletionResponseChoice(
                    index=out.index,
                    message=ChatMessage(role=role, content=content, tool_calls=[c.to_dict() for c in calls]),
                    logprobs=self._logprobs(request, out),
                    finish_reason=tools.finish_reason(out.finish_reason, bool(calls)),
                    stop_reason=out.stop_reason,
                    token_ids=list(out.token_ids) if request.return_token_ids else None,
                )
            )
        usage = self.usage(len(ids), sum(len(o.token_ids) for o in final.outputs), final.num_cached_tokens or 0)
        return ChatCompletionResponse(
            id=request_id,
            created=created,
            model=self.model_name,
            choices=choices,
            usage=usage,
            prompt_logprobs=self.prompt_logprobs_json(final.prompt_logprobs) if request.prompt_logprobs is not None
            else None,
            prompt_token_ids=ids if request.return_token_ids else None,
        )

    def _chunk(self, request_id: str, created: int, choices: list[dict], usage: Any = None) -> str:
        body: dict[str, Any] = {
            "id": request_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage.model_dump()
        return sse(json.dumps(body, ensure_ascii=False, separators=(",", ":")))

    async def _stream(self, request, request_id, created, ids, streams, tools: ChatToolCalls) -> AsyncIterator[str]:
        include_usage, continuous = self.stream_usage_flags(request)
        role = self._role(request)
        num_tokens = [0] * request.n
        finished: set[int] = set()
        texts, calls = [""] * request.n, [tools.stream() for _ in range(request.n)]
        first = True
        try:
            async for _, res in merge_streams(streams):
                if first:  # the role chunk of every choice (and the echoed message) comes first
                    first = False
                    echo = self._echo_text(request, role)
                    for i in range(request.n):
                        usage = self.usage(len(ids), 0) if continuous else None
                        yield self._chunk(request_id, created, [
                            {"index": i, "delta": {"role": role, "content": ""}, "logprobs": None,
                             "finish_reason": None}], usage)
                        if echo:
                            yield self._chunk(request_id, created, [
                                {"index": i, "delta": {"content": echo}, "logprobs": None,
                                 "finish_reason": None}], usage)
                for out in res.outputs:
                    i = out.index
                    if i in finished:
                        continue
                    if out.finish_reason == "error":
                        raise GenerationError()
                    if not out.token_ids and out.finish_reason is None:
                        continue
                    num_tokens[i] += len(out.token_ids)
                    lps = self._logprobs(request, out)
                    texts[i] += out.text
                    content, tool_deltas = calls[i].feed(texts[i], out.finish_reason is not None)
                    delta: dict[str, Any] = {"content": content}
                    if tool_deltas:  # as OpenAI streams calls: no content beside them
                        delta = {"content": content or None, "tool_calls": tool_deltas}
                    choice: dict[str, Any] = {
                        "index": i, "delta": delta,
                        "logprobs": lps.model_dump() if lps is not None else None, "finish_reason": None,
                    }
                    if request.return_token_ids:
                        choice["token_ids"] = list(out.token_ids)
                    if out.finish_reason is not None:
                        finished.add(i)
                        choice["finish_reason"] = tools.finish_reason(out.finish_reason, calls[i].called)
                        choice["stop_reason"] = out.stop_reason
                    usage = self.usage(len(ids), num_tokens[i]) if continuous else None
                    yield self._chunk(request_id, created, [choice], usage)
            if include_usage:
                yield self._chunk(request_id, created, [], self.usage(len(ids), sum(num_tokens)))
        except Exception as err:
            yield stream_error_event(err)
        finally:
            for stream in streams:
                stream.close()
            self.tracker.untrack(streams)
        yield SSE_DONE
