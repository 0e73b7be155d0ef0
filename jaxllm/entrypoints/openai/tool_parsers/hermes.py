"""Hermes / Qwen tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block a call."""

from __future__ import annotations

import json
import re

from jaxllm.entrypoints.openai.tool_parsers.tool_parser import ToolCall, ToolParser, call_from_json

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_OPEN_TAIL = re.compile(r"<tool_call>((?:(?!</tool_call>).)*)$", re.DOTALL)


class HermesToolParser(ToolParser):
    name = "hermes"
    start = "<tool_call>"

    def split_calls(self, text: str, final: bool) -> tuple[list[ToolCall], bool]:
        calls, ok = [], True
        for body in _BLOCK.findall(text):
            call = _parse(body)
            if call is None:
                ok = False
                break
            calls.append(call)
        tail = _OPEN_TAIL.search(text)
        if final and tail is not None and ok:  # the last block was cut short of its closing tag
            call = _parse(tail.group(1))
            ok = call is not None
            if call is not None:
                calls.append(call)
        return calls, ok


def _parse(body: str) -> ToolCall | None:
    try:
        return call_from_json(json.loads(body))
    except ValueError:
        return None
