"""`--tool-call-parser NAME` -> its `ToolParser` class."""

from __future__ import annotations

from jaxllm.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from jaxllm.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from jaxllm.entrypoints.openai.tool_parsers.tool_parser import ToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {p.name: p for p in (HermesToolParser, Llama3JsonToolParser)}


def get_tool_parser(name: str) -> type[ToolParser]:
    if name not in TOOL_PARSERS:
        raise ValueError(f"invalid tool call parser: {name} (chose from {{ {', '.join(sorted(TOOL_PARSERS))} }})")
    return TOOL_PARSERS[name]
