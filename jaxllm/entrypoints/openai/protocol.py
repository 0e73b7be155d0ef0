"""Request and response bodies of the OpenAI-compatible API, field for field as OpenAI and vLLM spell them.

Requests accept unknown fields (`extra="allow"`), as vLLM does, so clients that send newer OpenAI fields
keep working. Nullable fields accept JSON `null` (LangChain sends `"logit_bias": null`, `"seed": null`).

`_doc(...)` puts a field's valid range into /openapi.json only: the server checks it later, with vLLM's
error messages (a 400 naming the field), rather than pydantic's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _doc(**schema: Any) -> dict[str, Any]:
    """JSON-schema keywords for /openapi.json that the request model itself does not enforce."""
    return {"json_schema_extra": schema}


def _token_ids(**schema: Any) -> dict[str, Any]:
    return _doc(items={"type": "integer", "minimum": 0}, **schema)


_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string"},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
    },
}


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- errors ------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo


# ---- shared pieces -----------------------------------------------------------------------------


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: dict[str, Any] | None = None


class PromptTokenUsageInfo(OpenAIBaseModel):
    cached_tokens: int | None = None


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: PromptTokenUsageInfo | None = None


class _SamplingFields(OpenAIBaseModel):
    """Fields shared by completion and chat requests (OpenAI's, then vLLM's extras)."""

    model: str | None = None
    frequency_penalty: float | None = Field(0.0, **_doc(minimum=-2, maximum=2))
    logit_bias: dict[str, float] | None = None
    n: int = Field(1, **_doc(minimum=1))
    presence_penalty: float | None = Field(0.0, **_doc(minimum=-2, maximum=2))
    seed: int | None = Field(None, ge=_INT64_MIN, le=_INT64_MAX)
    stop: str | list[str] | None = Field(default_factory=list)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, **_doc(minimum=0, maximum=2))
    top_p: float | None = Field(None, **_doc(exclusiveMinimum=0, maximum=1))
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM's sampling extras
    best_of: int | None = Field(None, **_doc(minimum=1))
    use_beam_search: bool = False
    top_k: int | None = Field(None, **_doc(minimum=-1))
    min_p: float | None = Field(None, **_doc(minimum=0, maximum=1))
    repetition_penalty: float | None = Field(None, **_doc(exclusiveMinimum=0))
    length_penalty: float = Field(1.0, **_doc(minimum=-10, maximum=10))  # beam search only
    stop_token_ids: list[int] | None = Field(default_factory=list, **_token_ids())
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = Field(0, **_doc(minimum=0))
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    allowed_token_ids: list[int] | None = Field(None, **_token_ids(minItems=1))
    bad_words: list[str] = Field(default_factory=list)
    prompt_logprobs: int | None = Field(None, **_doc(minimum=-1))
    echo: bool = False
    priority: int = 0
    request_id: str | None = None
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    # structured outputs: accepted in the schema, refused with a 400 (this build has no guided decoding)
    structured_outputs: dict[str, Any] | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @field_validator("n", "echo", mode="before")
    @classmethod
    def _null_means_default(cls, value: Any, info: Any) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _check_stream_options(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stream_options") is not None and not data.get("stream"):
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return data

    @model_validator(mode="before")
    @classmethod
    def _check_prompt_logprobs(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("prompt_logprobs") is not None:
            if data.get("stream"):
                raise ValueError("`prompt_logprobs` are not available when `stream=True`.")
            value = data["prompt_logprobs"]
            if isinstance(value, int) and value < 0 and value != -1:
                raise ValueError("`prompt_logprobs` must be a positive value or -1.")
        return data

    def wants_structured_output(self) -> bool:
        fmt = self.response_format
        return bool(
            (fmt is not None and fmt.type != "text")
            or self.structured_outputs
            or any(v is not None for v in (self.guided_json, self.guided_regex, self.guided_choice,
                                           self.guided_grammar))
        )


# ---- /v1/completions ---------------------------------------------------------------------------


class CompletionRequest(_SamplingFields):
    prompt: list[int] | list[list[int]] | str | list[str] | None = None
    prompt_embeds: Any = None
    logprobs: int | None = Field(None, **_doc(minimum=0))
    max_tokens: int | None = Field(16, **_doc(minimum=1))
    suffix: str | None = None
    add_special_tokens: bool = True

    @model_validator(mode="before")
    @classmethod
    def _check_logprobs(cls, data: Any) -> Any:
        if isinstance(data, dict):
            value = data.get("logprobs")
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ValueError("`logprobs` must be a positive value.")
        return data


class CompletionLogProbs(OpenAIBaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionResponseChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: list[dict[int, Any] | None] | None = None
    prompt_token_ids: list[int] | None = None


class CompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: UsageInfo
    kv_transfer_params: dict[str, Any] | None = None


class CompletionResponseStreamChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class CompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseStreamChoice]
    usage: UsageInfo | None = None


# ---- /v1/chat/completions ----------------------------------------------------------------------


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


# ---- /v1/models --------------------------------------------------------------------------------


class ModelPermission(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("modelperm"))
    object: str = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(OpenAIBaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "jaxllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=list)


class ModelList(OpenAIBaseModel):
    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


# ---- /tokenize, /detokenize --------------------------------------------------------------------


class TokenizeCompletionRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(OpenAIBaseModel):
    model: str | None = None
    messages: list[dict[str, Any]] = Field(**_doc(items=_MESSAGE, minItems=1))
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False
    tools: list[dict[str, Any]] | None = None
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_generation_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt", True):
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return data


TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int] = Field(**_token_ids())


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str
