"""What the request and response bodies of the OpenAI-compatible API share: the base model, errors,
usage, and the sampling fields of completion and chat requests.

Requests accept unknown fields (`extra="allow"`), as vLLM does, so clients that send newer OpenAI fields
keep working. Nullable fields accept JSON `null` (LangChain sends `"logit_bias": null`, `"seed": null`).

Every text in a request, however deeply nested (a prompt, chat content parts, `stop`, `bad_words`), must be
valid Unicode: JSON can spell an unpaired surrogate (`"\\ud800"`), which no tokenizer accepts, so such a
request is refused with a 400 naming the field.

`_doc(...)` puts a field's valid range into /openapi.json only: the server checks it later, with vLLM's
error messages (a 400 naming the field), rather than pydantic's.
"""

from __future__ import annotations

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


def _unpaired_surrogate(text: str) -> int | None:
    """The position of the first character that UTF-8 cannot encode (an unpaired surrogate), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def check_unicode(value: Any, path: str = "") -> None:
    """Raise ValueError if a string anywhere in `value` (dicts, lists, their keys) is not valid Unicode."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            pos = _unpaired_surrogate(item)
            if pos is not None:
                name = f"`{where}`" if where else "The request"
                raise ValueError(f"{name} is not valid Unicode: it has an unpaired surrogate "
                                 f"(U+{ord(item[pos]):04X}) at character {pos}. Text must be encodable as UTF-8.")
        elif isinstance(item, dict):
            for key, val in item.items():
                stack.append((key, where))
                stack.append((val, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, (list, tuple)):
            if item and isinstance(item[0], int) and isinstance(item[-1], int):
                continue  # token ids: no text
            stack.extend((v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(item))


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class OpenAIRequestModel(OpenAIBaseModel):
    """A request body: before validation, every text in it (however deeply nested) must be valid Unicode.

    Only the top-level request classes carry the check (it walks the whole body once); the models the
    server builds for its answers, one per streamed chunk, pay nothing for it.
    """

    @model_validator(mode="before")
    @classmethod
    def _check_unicode(cls, data: Any) -> Any:
        check_unicode(data)
        return data


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


class _SamplingFields(OpenAIRequestModel):
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
    # structured outputs (response_format.py merges them into one StructuredOutputsParams)
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
