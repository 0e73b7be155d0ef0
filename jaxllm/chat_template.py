"""Rendering a model's Jinja chat template, as Hugging Face tokenizers do, without importing transformers.

The template runs in Jinja's immutable sandbox with the options chat templates are written for
(`trim_blocks`, `lstrip_blocks`, loop controls), the helpers they call (`raise_exception`,
`strftime_now`, a `tojson` that keeps non-ASCII text) and a `{% generation %}` block that renders its body.
Variables: `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens
(`bos_token`, `eos_token`, ...) and any extra keyword the caller passes.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

CONTINUE_ERROR = ("continue_final_message is set but the final message does not appear in the chat after applying "
                  "the chat template! This can happen if the chat template deletes portions of the final message.")


def _raise_exception(message: str):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_template(source: str):
    """A compiled Jinja template (cached: a server renders the same template for every request)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's text for training; rendered as is."""

        tags = frozenset({"generation"})

        def parse(self, parser) -> list[nodes.Node]:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def select_template(templates: str | dict[str, str] | None, requested: str | None, tools: Any) -> str:
    """The template source: `requested` (itself, or the name of one of the model's templates), else the
    model's ("tool_use" when tools are given and the model has it, else "default")."""
    if isinstance(templates, dict):
        if requested is not None and requested in templates:
            return templates[requested]
        if requested is not None:
            return requested
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ValueError(f"The model has chat templates named {sorted(templates)}, none of them 'default'; pass one.")
    if requested is not None:
        return requested
    if templates is None:
        raise ValueError("Cannot use chat template functions because tokenizer.chat_template is not set and no "
                         "template argument was passed!")
    return templates


# Appended to the final message to find where its text ends. Its trailing space tells whether the template
# stripped the message: then the text is cut before the marker and stripped too, as the template would.
_MARK = "JAXLLM_CONTINUE_FINAL_MESSAGE "


def _marked(messages: list[dict]) -> list[dict]:
    """The conversation with the marker after the text of the final message (its last text part)."""
    if not messages:
        raise ValueError("continue_final_message is set but the conversation is empty!")
    final = dict(messages[-1])
    content = final.get("content")
    if isinstance(content, (list, tuple)):
        parts = [dict(p) if isinstance(p, dict) else p for p in content]
        texts = [i for i, p in enumerate(parts) if isinstance(p, dict) and "text" in p]
        if not texts:
            raise ValueError("continue_final_message is set but the final message has no text to continue.")
        parts[texts[-1]]["text"] += _MARK
        final["content"] = parts
    elif isinstance(content, str):
        final["content"] = content + _MARK
    else:
        raise ValueError('continue_final_message is set but the final message has no "content" to continue!')
    return [*messages[:-1], final]


def render(source: str, messages: list[dict], *, tools: list | None = None, documents: list | None = None,
           add_generation_prompt: bool = False, continue_final_message: bool = False,
           special_tokens: dict[str, Any] | None = None, **kwargs: Any) -> str:
    """The prompt text of one conversation. With `continue_final_message`, the text ends where the last
    message's content ends (the model continues it instead of starting a new message)."""
    if tools is not None and any(callable(t) for t in tools):
        raise ValueError("Tools must be given as JSON schema dicts.")
    rendered = compile_template(source).render(
        messages=_marked(messages) if continue_final_message else messages, tools=tools, documents=documents,
        add_generation_prompt=add_generation_prompt, **{**(special_tokens or {}), **kwargs},
    )
    if continue_final_message:
        if _MARK.strip() not in rendered:
            raise ValueError(CONTINUE_ERROR)
        end = rendered.rindex(_MARK.strip())
        rendered = rendered[:end] if rendered.startswith(_MARK, end) else rendered[:end].rstrip()
    return rendered
