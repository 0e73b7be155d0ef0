"""`ToolParser`: finds the tool calls in a model's output text, at the end or as the text streams in.

A parser names the markers of its format (`start`: where tool calls begin) and how to read complete
calls out of the text after it. Streaming holds back text that may be the start of a marker, sends
plain text as content, and sends each call once it is complete: a first delta with the call's id and
name, then one with its arguments, the shapes OpenAI streams.
"""

from __future__ import annotations

import abc
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar


def tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=tool_call_id)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def stream_delta(self, index: int, arguments: str | None = None) -> dict[str, Any]:
        """The first `delta.tool_calls` entry of this call (later ones carry only more `arguments`)."""
        return {"index": index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments if arguments is None else arguments}}


@dataclass
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None


def call_from_json(obj: Any, arguments_keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall | None:
    """`{"name": ..., "arguments"|"parameters": {...}}` -> ToolCall; None for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = next((obj[k] for k in arguments_keys if k in obj), {})
    return ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))


class ToolParser(abc.ABC):
    """Base class; subclasses set `name`, `start` and implement `split_calls`."""

    name: ClassVar[str]
    start: ClassVar[str]

    def __init__(self, tokenizer: Any = None):
        self.tokenizer = tokenizer
        self._streamed_text = 0  # characters of content already sent
        self._calls_sent = 0

    @abc.abstractmethod
    def split_calls(self, text: str, final: bool) -> tuple[list[ToolCall], bool]:
        """The complete calls in `text` (which begins at `start`); and whether all of it parsed.

        With `final` False, a call still being written is not an error: it is simply not returned.
        """

    def _start_index(self, text: str) -> int:
        return text.find(self.start)

    def _content_end(self, text: str) -> int:
        """While streaming text without calls: how much of it is surely content (the rest may be a marker)."""
        return _safe_prefix_len(text, self.start)

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        at = self._start_index(text)
        if at < 0:
            return ExtractedToolCalls(False, [], text)
        calls, ok = self.split_calls(text[at:], final=True)
        if not calls or not ok:
            return ExtractedToolCalls(False, [], text)  # not well-formed: the text is plain content
        content = text[:at].strip() or None
        return ExtractedToolCalls(True, calls, content)

    def extract_streaming(self, text: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        """Given all text so far: (new content to send, new `tool_calls` delta entries)."""
        at = self._start_index(text)
        if at < 0:
            keep = len(text) if final else self._content_end(text)
            content = text[self._streamed_text : keep]
            self._streamed_text = max(self._streamed_text, keep)
            return content, []
        content = text[self._streamed_text : at]
        self._streamed_text = max(self._streamed_text, at)
        calls, ok = self.split_calls(text[at:], final)
        if final and not ok and not calls:  # never became a tool call: it was content after all
            content += text[max(self._streamed_text, at) :]
            self._streamed_text = len(text)
            return content, []
        deltas = []
        for call in calls[self._calls_sent :]:
            deltas.append(call.stream_delta(self._calls_sent))
            self._calls_sent += 1
        return content, deltas


def _safe_prefix_len(text: str, marker: str) -> int:
    """Length of `text` that cannot be the beginning of `marker` (the rest is held back)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return len(text) - n
    return len(text)
