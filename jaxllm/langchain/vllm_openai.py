"""`VLLMOpenAI`: LangChain's completion client for a vLLM server, defaulting to a local `jaxllm serve`."""

from __future__ import annotations

import os
from typing import Any

from langchain_community.llms.vllm import VLLMOpenAI as _CommunityVLLMOpenAI
from pydantic import model_validator

DEFAULT_API_BASE = "http://localhost:8000/v1"  # where `jaxllm serve` listens by default


def _api_key_from_env() -> str:
    for name in ("JAXLLM_API_KEY", "VLLM_API_KEY", "OPENAI_API_KEY"):
        if os.environ.get(name):
            return os.environ[name]
    return "EMPTY"  # a server started without --api-key accepts any key


class VLLMOpenAI(_CommunityVLLMOpenAI):
    """`langchain_community.llms.VLLMOpenAI` with the arguments of the tutorials, for `jaxllm serve`.

        from jaxllm.langchain import VLLMOpenAI

        llm = VLLMOpenAI(openai_api_key="EMPTY", openai_api_base="http://localhost:8000/v1",
                         model_name="Qwen/Qwen2.5-1.5B-Instruct", model_kwargs={"stop": ["."]})
        print(llm.invoke("Rome is"))

    Left out, `openai_api_base` is $OPENAI_API_BASE or `http://localhost:8000/v1` and `openai_api_key` is
    the first of $JAXLLM_API_KEY, $VLLM_API_KEY, $OPENAI_API_KEY that is set, else "EMPTY".
    """

    @model_validator(mode="before")
    @classmethod
    def _jaxllm_server_defaults(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if not (values.get("openai_api_base") or values.get("base_url")):
            values["openai_api_base"] = os.environ.get("OPENAI_API_BASE") or DEFAULT_API_BASE
        if not (values.get("openai_api_key") or values.get("api_key")):
            values["openai_api_key"] = _api_key_from_env()
        return values
