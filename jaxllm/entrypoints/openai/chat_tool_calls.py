"""Tool calling on /v1/chat/completions: `tools`, `tool_choice` and `parallel_tool_calls`.

    tool_choice   how the model's calls are produced                 finish_reason when it calls
    none          not at all (the template still sees the tools)      -
    named         the output is constrained to that tool's arguments  stop
    required      constrained to a JSON list of {name, parameters}    tool_calls
    auto          free text, read by --tool-call-parser               tool_calls

Without `tool_choice`, requests with tools are `auto` when a tool-call parser is configured
(--enable-auto-tool-choice --tool-call-parser NAME), otherwise `none`. Plain Python (no server imports):
the LangChain chat model uses it too. Invalid tools or choices raise `ToolChoiceError` (a ValueError).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jaxllm.entrypoints.openai.tool_parsers.registry import get_tool_parser
from jaxllm.entrypoints.openai.tool_parsers.tool_parser import ToolCall, ToolParser
from jaxllm.structured_output.params import StructuredOutputsParams

_NO_ARGUMENTS = {"type": "object", "properties": {}}


class ToolChoiceError(ValueError):
    """Invalid `tools` or `tool_choice`; `param` names which (the server's 400 reports it)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass
class ChatToolCalls:
    """How one chat request's tool calls are produced and read back."""

    mode: str  # "none" | "named" | "required" | "auto"
    tools: dict[str, dict[str, Any]]  # name -> the function's JSON schema of parameters
    function: str | None = None  # the named function
    parser: type[ToolParser] | None = None
    parallel: bool = True

    @classmethod
    def for_request(cls, request: Any, auto_parser: str | None) -> ChatToolCalls:
        """From a chat request's `tools`, `tool_choice` and `parallel_tool_calls`."""
        return cls.create(request.tools, request.tool_choice, request.parallel_tool_calls, auto_parser)

    @classmethod
    def create(cls, tools: list[dict[str, Any]] | None, choice: Any, parallel_tool_calls: bool | None,
               auto_parser: str | None) -> ChatToolCalls:
        """Validate the tools and the choice; `auto_parser` is the tool-call parser when auto is enabled."""
        tools = _functions(tools or [])
        if choice is None:
            choice = "auto" if tools and auto_parser else "none"
        parallel = parallel_tool_calls is not False
        if choice == "none":
            return cls("none", tools)
        if choice == "auto":
            if auto_parser is None:
                raise ToolChoiceError('"auto" tool choice requires --enable-auto-tool-choice and '
                                      "--tool-call-parser to be set", "tool_choice")
            return cls("auto", tools, parser=get_tool_parser(auto_parser), parallel=parallel)
        if choice == "required":
            return cls("required", tools, parallel=parallel)
        if isinstance(choice, dict) and choice.get("type") == "function":
            fn = choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            if name not in tools:
                raise ToolChoiceError(f"Tool '{name}' has not been passed in `tools`.", "tool_choice")
            return cls("named", tools, function=name, parallel=False)
        raise ToolChoiceError(f"Invalid tool_choice: {choice!r}; use none, auto, required or "
                              '{"type": "function", "function": {"name": ...}}.', "tool_choice")

    def structured_outputs(self) -> StructuredOutputsParams | None:
        """The constraint that enforces `required` or a named function (compact JSON)."""
        if self.mode == "named":
            return StructuredOutputsParams(json=self.tools[self.function], disable_any_whitespace=True)
        if self.mode != "required":
            return None
        call = [{"type": "object", "properties": {"name": {"enum": [name]}, "parameters": schema},
                 "required": ["name", "parameters"]} for name, schema in self.tools.items()]
        schema = {"type": "array", "minItems": 1, "items": call[0] if len(call) == 1 else {"anyOf": call}}
        if not self.parallel:
            schema["maxItems"] = 1
        return StructuredOutputsParams(json=schema, disable_any_whitespace=True)

    def calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of a finished output."""
        if self.mode == "named":
            return None, [ToolCall(self.function, text)]
        if self.mode == "required":
            calls = _required_calls(text)
            return (None, calls) if calls else (text, [])
        if self.mode == "auto":
            found = self.parser().extract_tool_calls(text)
            return found.content, found.tool_calls
        return text, []

    def finish_reason(self, finish_reason: str | None, called: bool) -> str | None:
        if called and finish_reason == "stop" and self.mode in ("auto", "required"):
            return "tool_calls"
        return finish_reason

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self)


class ToolCallStream:
    """One choice's streamed deltas: feed the whole text so far, get (content, tool_calls entries)."""

    def __init__(self, tool_calls: ChatToolCalls):
        self.owner = tool_calls
        self.parser = tool_calls.parser() if tool_calls.parser is not None else None
        self.sent = 0  # characters of the output already turned into deltas
        self.called = False
        self._call: ToolCall | None = None

    def feed(self, text: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        mode = self.owner.mode
        if mode == "none":
            delta, self.sent = text[self.sent :], len(text)
            return delta, []
        if mode == "auto":
            content, deltas = self.parser.extract_streaming(text, final)
            self.called = self.called or bool(deltas)
            return content, deltas
        if mode == "named":  # the arguments stream as they are written
            new, self.sent = text[self.sent :], len(text)
            if self._call is None:
                self._call, self.called = ToolCall(self.owner.function, ""), True
                return "", [self._call.stream_delta(0, new)]
            return "", [{"index": 0, "function": {"arguments": new}}] if new else []
        if not final:  # required: the list is read once it is complete
            return "", []
        calls = _required_calls(text)
        if not calls:
            return text, []
        self.called = True
        return "", [call.stream_delta(i) for i, call in enumerate(calls)]


def _functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str):
            raise ToolChoiceError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                                  "\"parameters\": {...}}}.", "tools")
        params = fn.get("parameters")
        out[fn["name"]] = params if isinstance(params, dict) and params else _NO_ARGUMENTS
    return out


def _required_calls(text: str) -> list[ToolCall]:
    try:
        items = json.loads(text, strict=False)
    except ValueError:
        return []  # cut short (length): no calls
    return [ToolCall(it["name"], json.dumps(it.get("parameters", {}), ensure_ascii=False))
            for it in items if isinstance(it, dict) and isinstance(it.get("name"), str)] \
        if isinstance(items, list) else []
