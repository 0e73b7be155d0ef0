"""Chat templates: OpenAI-style messages -> the prompt string a model was trained on.

Shared by `LLM.chat` and the server. Everything the caller got wrong (a role the template rejects,
content it cannot read, no template at all) is a `ValueError` with the template's own message.
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Any

NO_TEMPLATE_MESSAGE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
    "template if the tokenizer does not define one."
)


def load_chat_template(value: str | None) -> str | None:
    """A `--chat-template` / `chat_template=` value: a file path, or the Jinja template itself."""
    if value is None:
        return None
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    if any(c in value for c in "{}\n"):  # the template itself
        if "\\" in value and value.isascii() and "\n" not in value:
            return codecs.decode(value, "unicode_escape")  # "\n" typed in a shell means a newline
        return value
    raise ValueError(
        f"The supplied chat template ({value}) looks like a file path, but it failed to be opened: no such file."
    )


def content_text(content: Any) -> str | None:
    """Message content (a string, or a list of OpenAI content parts) as the text a text model sees."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"Message content must be a string or a list of content parts, got {type(content).__name__}.")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise ValueError(f"Unsupported content part type {kind!r}: only text content is supported.")
    return "\n".join(texts)


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise ValueError(f"A conversation must be a list of messages, got {type(messages).__name__}.")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{i}] must be a dict with a string 'role'.")
        normalized = {**message, "content": content_text(message.get("content"))}
        if isinstance(message.get("tool_calls"), list):
            normalized["tool_calls"] = [_template_tool_call(c) for c in message["tool_calls"]]
        out.append(normalized)
    return out


def _template_tool_call(call: Any) -> Any:
    """A tool call as chat templates read it: `function.arguments` a dict, not OpenAI's JSON string."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    try:
        arguments = json.loads(fn["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**fn, "arguments": arguments}}


def apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, str]] | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The prompt string for one conversation."""
    import jinja2

    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be true.")
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(NO_TEMPLATE_MESSAGE)
    conversation = normalize_messages(messages)
    if continue_final_message and (not conversation or conversation[-1]["role"] != "assistant"):
        raise ValueError("continue_final_message is set but the last message is not from the assistant.")
    kwargs = {k: v for k, v in (chat_template_kwargs or {}).items()
              if k not in ("tokenize", "conversation", "chat_template", "return_dict")}
    try:
        prompt = tokenizer.apply_chat_template(
            conversation, chat_template=chat_template, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, tools=tools, documents=documents, **kwargs,
        )
    except jinja2.TemplateError as err:
        raise ValueError(str(err)) from err
    except (TypeError, KeyError, IndexError) as err:
        raise ValueError(f"Failed to apply the chat template: {err}") from err
    return prompt if isinstance(prompt, str) else prompt[0]
