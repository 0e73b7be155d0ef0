"""`ChatJaxLLM.with_structured_output` and `bind_tools` in-process, as LangChain documents them."""

from __future__ import annotations

from typing import Literal

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import AIMessage
from pydantic import BaseModel, Field

from jaxllm.langchain import ChatJaxLLM

ENGINE = {"max_model_len": 256, "max_num_seqs": 8}
ASK = [("user", "Describe a person.")]


class Person(BaseModel):
    """A person."""

    name: str = Field(pattern=r"^[A-Z][a-z]{1,7}$")
    age: int = Field(ge=0, le=120)
    colour: Literal["red", "green", "blue"]


def get_weather(city: Literal["Paris", "Oslo"], days: int) -> str:
    """Weather forecast for a city."""
    return "sunny"


@pytest.fixture(scope="module")
def chat(tiny_model_dir):
    return ChatJaxLLM(model=tiny_model_dir, vllm_kwargs=ENGINE, temperature=0.0, max_new_tokens=120)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_returns_the_model(chat, method):
    person = chat.with_structured_output(Person, method=method).invoke(ASK)
    assert isinstance(person, Person)


def test_json_mode_and_include_raw(chat):
    out = chat.with_structured_output(Person.model_json_schema(), method="json_schema", include_raw=True).invoke(ASK)
    assert isinstance(out["raw"], AIMessage) and out["parsing_error"] is None
    assert Person.model_validate(out["parsed"])
    assert isinstance(chat.with_structured_output(None, method="json_mode").invoke(ASK), dict)


@pytest.mark.parametrize("tool_choice", ["get_weather", "any"])
def test_bind_tools_returns_a_tool_call_and_streams_the_same(chat, tool_choice):
    bound = chat.bind_tools([get_weather], tool_choice=tool_choice, parallel_tool_calls=False)
    msg = bound.invoke("Weather in Oslo?")
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    args = msg.tool_calls[0]["args"]
    assert args["city"] in ("Paris", "Oslo") and isinstance(args["days"], int)
    merged = None
    for chunk in bound.stream("Weather in Oslo?"):
        merged = chunk if merged is None else merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("get_weather", args)]


def test_auto_tool_choice_parses_the_models_calls(tiny_model_dir):
    chat = ChatJaxLLM(model=tiny_model_dir, vllm_kwargs=ENGINE, temperature=0.0, max_new_tokens=120,
                      tool_call_parser="hermes")
    # a grammar stands in for a model trained to write hermes calls
    regex = r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "Oslo", "days": [1-7]\}\}</tool_call>'
    msg = chat.bind_tools([get_weather], tool_choice="auto").invoke("Weather?", structured_outputs={"regex": regex})
    assert msg.tool_calls[0]["name"] == "get_weather" and msg.tool_calls[0]["args"]["city"] == "Oslo"
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    plain = chat.invoke("Weather?", max_new_tokens=5)
    assert plain.tool_calls == []


def test_a_call_cut_short_is_an_invalid_tool_call(chat):
    msg = chat.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather?", max_new_tokens=3)
    assert msg.tool_calls == [] and msg.response_metadata["finish_reason"] == "length"
    [bad] = msg.invalid_tool_calls
    assert bad["name"] == "get_weather" and "not JSON" in bad["error"]
