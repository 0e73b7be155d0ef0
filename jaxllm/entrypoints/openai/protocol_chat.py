"""Request and response bodies of /v1/chat/completions, field for field as OpenAI and vLLM spell them."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, model_validator

from jaxllm.entrypoints.openai.protocol_base import (
    _MESSAGE,
    OpenAIBaseModel,
    UsageInfo,
    _doc,
    _SamplingFields,
    random_id,
)


class ChatCompletionRequest(_SamplingFields):
    messages: list[dict[str, Any]] = Field(**_doc(items=_MESSAGE, minItems=1))
    logprobs: bool | None = False
    top_logprobs: int | None = Field(0, **_doc(minimum=-1))
    max_tokens: int | None = Field(None, **_doc(minimum=1))  # deprecated: max_completion_tokens
    max_completion_tokens: int | None = Field(None, **_doc(minimum=1))
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = False
    reasoning_effort: str | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_logprobs(cls, data: Any) -> Any:
        if isinstance(data, dict):
            top = data.get("top_logprobs")
            if top is not None:
                if not data.get("logprobs"):
                    raise ValueError("when using `top_logprobs`, `logprobs` must be set to true.")
                if isinstance(top, int) and top < 0 and top != -1:
                    raise ValueError("`top_logprobs` must be a positive value.")
        return data

    @model_validator(mode="before")
    @classmethod
    def _check_tool_choice(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tool_choice") not in (None, "none") and not data.get("tools"):
            raise ValueError("When using `tool_choice`, `tools` must be set.")
        return data

    @model_validator(mode="before")
    @classmethod
    def _check_generation_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt", True):
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return data


class ChatLogProb(OpenAIBaseModel):
    token: str
    logprob: float = -9999.0
    bytes: list[int] | None = None


class ChatLogProbsContent(ChatLogProb):
    top_logprobs: list[ChatLogProb] = Field(default_factory=list)


class ChatCompletionLogProbs(OpenAIBaseModel):
    content: list[ChatLogProbsContent] | None = None


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | None = None
    refusal: str | None = None
    annotations: Any = None
    audio: Any = None
    function_call: Any = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    reasoning_content: str | None = None


class ChatCompletionResponseChoice(OpenAIBaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = "stop"
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseChoice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: UsageInfo
    prompt_logprobs: list[dict[int, Any] | None] | None = None
    prompt_token_ids: list[int] | None = None
    kv_transfer_params: dict[str, Any] | None = None
