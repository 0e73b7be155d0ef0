"""Llama 3.x JSON tool calls: the reply is `{"name": ..., "parameters": {...}}` (optionally after
`<|python_tag|>`), several calls separated by `;`. A reply that does not start so is plain content."""

from __future__ import annotations

import json

from jaxllm.entrypoints.openai.tool_parsers.tool_parser import ToolCall, ToolParser, call_from_json

_PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    start = "{"

    def _start_index(self, text: str) -> int:
        stripped = text.lstrip()
        if stripped.startswith(_PYTHON_TAG):
            return len(text) - len(stripped)
        if stripped.startswith("{"):
            return len(text) - len(stripped)
        return -1

    def _content_end(self, text: str) -> int:
        # a reply that is still whitespace or a prefix of the tag may yet become a call
        return 0 if _PYTHON_TAG.startswith(text.lstrip()) else len(text)

    def split_calls(self, text: str, final: bool) -> tuple[list[ToolCall], bool]:
        text = text.removeprefix(_PYTHON_TAG)
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n;":
                pos += 1
            if pos >= len(text):
                return calls, bool(calls)
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except ValueError:
                return calls, False  # not yet complete (streaming), or not JSON at all
            call = call_from_json(obj)
            if call is None:
                return calls, False
            calls.append(call)
