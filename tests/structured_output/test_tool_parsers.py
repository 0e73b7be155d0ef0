"""hermes and llama3_json tool-call parsers (whole outputs, and streamed in pieces); tool_choice checks."""

import json

import pytest

from jaxllm.entrypoints.openai.chat_tool_calls import ChatToolCalls, ToolChoiceError
from jaxllm.entrypoints.openai.tool_parsers.registry import get_tool_parser

HERMES = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n'
          '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>')
LLAMA = ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}; '
         '{"name": "get_time", "parameters": {"tz": "CET"}}')
EXPECTED = [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {"tz": "CET"})]


def _plain(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize(("name", "text", "content"), [("hermes", HERMES, "Let me check."), ("llama3_json", LLAMA, None)])
def test_whole_output(name, text, content):
    found = get_tool_parser(name)().extract_tool_calls(text)
    assert found.tools_called and found.content == content
    assert _plain(found.tool_calls) == EXPECTED
    assert all(c.id.startswith("chatcmpl-tool-") for c in found.tool_calls)


@pytest.mark.parametrize("name", ["hermes", "llama3_json"])
@pytest.mark.parametrize("text", ["Just text, no calls.", "<tool_call>{not json}</tool_call>", "{\"no_name\": 1}"])
def test_text_without_valid_calls_is_content(name, text):
    found = get_tool_parser(name)().extract_tool_calls(text)
    assert not found.tools_called and found.content == text and found.tool_calls == []


def _stream(name, text, step):
    parser, content, entries = get_tool_parser(name)(), "", []
    for end in range(step, len(text) + step, step):
        piece, deltas = parser.extract_streaming(text[:end], final=end >= len(text))
        content += piece
        entries += deltas
    return content, entries


def _reassemble(entries):
    calls = {}
    for d in entries:
        call = calls.setdefault(d["index"], {"id": None, "name": "", "arguments": ""})
        call["id"] = d.get("id", call["id"])
        call["name"] += d.get("function", {}).get("name", "")
        call["arguments"] += d.get("function", {}).get("arguments", "")
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize(("name", "text", "content"), [("hermes", HERMES, "Let me check.\n"), ("llama3_json", LLAMA, "")])
@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_streamed_deltas_reassemble_to_the_same_calls(name, text, content, step):
    got_content, entries = _stream(name, text, step)
    assert got_content == content
    calls = _reassemble(entries)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == EXPECTED
    assert all(c["id"] for c in calls)
    firsts = [d for d in entries if "id" in d]
    assert all(d["type"] == "function" for d in firsts) and [d["index"] for d in firsts] == [0, 1]


def test_streaming_holds_back_a_partial_marker_and_releases_plain_text():
    content, entries = _stream("hermes", "a < b and <tool_ca", 1)
    assert content == "a < b and <tool_ca" and entries == []


def test_unknown_parser():
    with pytest.raises(ValueError, match="invalid tool call parser: nope"):
        get_tool_parser("nope")


@pytest.mark.parametrize(("choice", "message"), [
    ({"type": "function", "function": "get_time"}, "Tool 'None' has not been passed"),
    ({"type": "function", "function": {"name": "nope"}}, "Tool 'nope' has not been passed"),
    ("auto", '"auto" tool choice requires'),
    (7, "Invalid tool_choice"),
])
def test_bad_tool_choices_name_the_parameter(choice, message):
    tools = [{"type": "function", "function": {"name": "get_time"}}]
    with pytest.raises(ToolChoiceError, match=message) as err:
        ChatToolCalls.create(tools, choice, None, auto_parser=None)
    assert err.value.param == "tool_choice"
