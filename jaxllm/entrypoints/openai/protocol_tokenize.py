"""Request and response bodies of /tokenize and /detokenize (vLLM's extra endpoints)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from jaxllm.entrypoints.openai.protocol_base import (
    _MESSAGE,
    OpenAIBaseModel,
    OpenAIRequestModel,
    _doc,
    _token_ids,
)


class TokenizeCompletionRequest(OpenAIRequestModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(OpenAIRequestModel):
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


class DetokenizeRequest(OpenAIRequestModel):
    model: str | None = None
    tokens: list[int] = Field(**_token_ids())


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str
