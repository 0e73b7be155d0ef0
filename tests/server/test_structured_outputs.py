"""Structured outputs and tool calls against a real server, through httpx, the openai client and LangChain."""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import jsonschema_rs
import pytest
from pydantic import BaseModel, Field

from tests.server.conftest import SERVED_NAME

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}
WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
}
TIME = {"type": "object", "properties": {"tz": {"enum": ["CET", "UTC"]}}, "required": ["tz"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


class Person(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z]{1,8}$")
    age: int = Field(ge=0, le=120)
    colour: Literal["red", "green", "blue"]
    tags: list[Literal["a", "b"]] = Field(max_length=3)


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(["--served-model-name", SERVED_NAME, "--enable-auto-tool-choice",
                         "--tool-call-parser", "hermes"])


def chat(server, **body):
    body = {"model": SERVED_NAME, "messages": MESSAGES, "max_completion_tokens": 120, "temperature": 0, **body}
    return httpx.post(server.url_for("v1/chat/completions"), json=body, timeout=120)


def stream_chat(server, **body):
    """(content, reassembled tool calls, finish_reason) of a streamed chat completion."""
    body = {"model": SERVED_NAME, "messages": MESSAGES, "max_completion_tokens": 120, "temperature": 0,
            "stream": True, **body}
    content, calls, finish = "", {}, None
    with httpx.stream("POST", server.url_for("v1/chat/completions"), json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            content += choice["delta"].get("content") or ""
            for d in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(d["index"], {"id": None, "type": None, "name": "", "arguments": ""})
                call["id"] = d.get("id", call["id"])
                call["type"] = d.get("type", call["type"])
                call["name"] += d.get("function", {}).get("name") or ""
                call["arguments"] += d.get("function", {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return content, [calls[i] for i in sorted(calls)], finish


def test_openai_parse_with_a_pydantic_model(server):
    client = server.client()
    r = client.beta.chat.completions.parse(model=SERVED_NAME, messages=MESSAGES, response_format=Person,
                                           temperature=0, max_completion_tokens=150, extra_body=COMPACT)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("extra", "check"), [
    ({"guided_regex": r"[a-z]{3}-\d{2}"}, lambda t: re.fullmatch(r"[a-z]{3}-\d{2}", t)),
    ({"guided_choice": ["alpha", "beta"]}, lambda t: t in ("alpha", "beta")),
    ({"structured_outputs": {"choice": ["x y", "z"]}}, lambda t: t in ("x y", "z")),
    ({"guided_json": WEATHER, **COMPACT}, lambda t: jsonschema_rs.validate(WEATHER, json.loads(t)) is None),
    ({"response_format": {"type": "json_object"}}, lambda t: isinstance(json.loads(t, strict=False), dict)),
    ({"guided_grammar": 'root ::= "n=" [0-9] [0-9]?'}, lambda t: re.fullmatch(r"n=\d\d?", t)),
])
@pytest.mark.parametrize("endpoint", ["v1/completions", "v1/chat/completions"])
def test_request_fields_constrain_the_output(server, extra, check, endpoint):
    body = {"model": SERVED_NAME, "max_tokens": 100, "temperature": 1.0, "seed": 4, **extra}
    body.update({"prompt": "hello"} if endpoint == "v1/completions" else {"messages": MESSAGES})
    r = httpx.post(server.url_for(endpoint), json=body, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    text = choice.get("text", choice.get("message", {}).get("content"))
    if choice["finish_reason"] == "length":  # json_object may run its whitespace to the limit
        assert "response_format" in extra
        return
    assert choice["finish_reason"] == "stop" and check(text), text


@pytest.mark.parametrize(("extra", "message"), [
    ({"guided_regex": "a(b"}, "Invalid regex in structured_outputs.regex"),
    ({"guided_grammar": "root ::= nothing"}, "Invalid grammar in structured_outputs.grammar"),
    ({"guided_json": {"type": "object", "properties": {"a": {"type": "nope"}}}}, "Invalid JSON schema"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "only use one kind"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "must carry the JSON schema"),
    ({"structured_outputs": {"disable_any_whitespace": True}}, "none are specified"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope' has not been"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "Invalid tool_choice"),
    ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools[0] must be"),
])
def test_bad_constraints_are_400_naming_them(server, extra, message):
    r = chat(server, **extra)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]


def _check_calls(calls):
    assert calls
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
        jsonschema_rs.validate(SCHEMAS[call["function"]["name"]], json.loads(call["function"]["arguments"]))


@pytest.mark.parametrize(("tool_choice", "finish"), [
    ({"type": "function", "function": {"name": "get_weather"}}, "stop"),
    ("required", "tool_calls"),
])
def test_forced_tool_calls_and_their_stream(server, tool_choice, finish):
    r = chat(server, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == finish and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    _check_calls(calls)
    if isinstance(tool_choice, dict):
        assert [c["function"]["name"] for c in calls] == ["get_weather"]
    content, streamed, stream_finish = stream_chat(server, tools=TOOLS, tool_choice=tool_choice,
                                                   parallel_tool_calls=False)
    assert content == "" and stream_finish == finish
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == \
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
    assert all(c["id"].startswith("chatcmpl-tool-") and c["type"] == "function" for c in streamed)


def test_auto_tool_choice_reads_hermes_calls(server):
    # the tiny model writes garbage; a grammar makes it write a hermes tool call for the parser to find
    regex = r'Sure\.<tool_call>\{"name": "get_time", "arguments": \{"tz": "(CET|UTC)"\}\}</tool_call>'
    r = chat(server, tools=TOOLS, tool_choice="auto", structured_outputs={"regex": regex}, temperature=1.0, seed=2)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Sure."
    _check_calls(choice["message"]["tool_calls"])
    content, streamed, finish = stream_chat(server, tools=TOOLS, structured_outputs={"regex": regex},
                                            temperature=1.0, seed=2)  # tools without tool_choice: auto
    assert content == "Sure." and finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in streamed] == \
        [(c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]]


def test_tool_choice_none_is_plain_text(server):
    r = chat(server, tools=TOOLS, tool_choice="none", max_completion_tokens=8)
    choice = r.json()["choices"][0]
    assert choice["message"]["tool_calls"] == [] and isinstance(choice["message"]["content"], str)


def test_langchain_structured_output_and_tools(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model=SERVED_NAME, base_url=server.url + "/v1", api_key="EMPTY",
                                      temperature=0, max_tokens=150, extra_body=COMPACT, max_retries=0)
    person = llm.with_structured_output(Person).invoke("Describe someone")
    assert isinstance(person, Person)

    def get_weather(city: Literal["Paris", "Oslo"], days: int) -> str:
        """Weather forecast for a city."""
        return "sunny"

    plain = langchain_openai.ChatOpenAI(model=SERVED_NAME, base_url=server.url + "/v1", api_key="EMPTY",
                                        temperature=0, max_tokens=150, max_retries=0)
    msg = plain.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Oslo?")
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    assert msg.tool_calls[0]["args"]["city"] in ("Paris", "Oslo") and isinstance(msg.tool_calls[0]["args"]["days"], int)
    streamed = None
    for chunk in plain.bind_tools([get_weather], tool_choice="any").stream("Weather in Oslo?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls and streamed.tool_calls[0]["name"] == "get_weather"
