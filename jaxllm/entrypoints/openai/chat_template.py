"""Chat templates: load `--chat-template`, turn OpenAI messages into a prompt string.

A template that rejects the conversation (Jinja's `raise_exception('System role not supported')`, as
Gemma's does) becomes a 400 with the template's own message.
"""

from __future__ import annotations

import codecs
import os
from typing import Any

from jaxllm.entrypoints.openai.errors import OpenAIError

NO_TEMPLATE_MESSAGE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
    "template if the tokenizer does not define one."
)


def load_chat_template(value: str | None) -> str | None:
    """`--chat-template`: a file path, or the template itself (anything with `{`, `}` or a newline)."""
    if value is None:
        return None
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    if any(c in value for c in "{}\n"):  # the template itself, given inline on the command line
        if "\\" in value and value.isascii():
            return codecs.decode(value, "unicode_escape")  # "\n" typed in a shell means a newline
        return value
    raise ValueError(
        f"The supplied chat template ({value}) looks like a file path, but it failed to be opened: "
        "no such file."
    )


def _text_of(content: Any) -> str | None:
    """OpenAI message content (a string, or a list of parts) as the string a text model sees."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(f"Message content must be a string or a list of content parts, got {content!r}.")
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
            raise OpenAIError(f"Unsupported content part type {kind!r}: this server serves text-only models.")
    return "\n".join(texts)


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with text content, ready for a Jinja chat template."""
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIError(f"messages[{i}] must be an object with a string `role`.")
        message = dict(message)
        message["content"] = _text_of(message.get("content"))
        out.append(message)
    return out


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
    """The prompt string for `messages`; an `OpenAIError` (400) when the template refuses them."""
    import jinja2

    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise OpenAIError(NO_TEMPLATE_MESSAGE)
    conversation = normalize_messages(messages)
    if continue_final_message and (not conversation or conversation[-1]["role"] != "assistant"):
        raise OpenAIError("continue_final_message is set but the last message is not from the assistant.")
    kwargs = dict(chat_template_kwargs or {})
    for reserved in ("tokenize", "conversation", "chat_template", "return_dict"):
        kwargs.pop(reserved, None)
    try:
        prompt = tokenizer.apply_chat_template(
            conversation,
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            **kwargs,
        )
    except jinja2.TemplateError as err:
        raise OpenAIError(str(err)) from err
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise OpenAIError(f"Failed to apply the chat template: {err}") from err
    if not isinstance(prompt, str):  # some tokenizers return a list for a batch of one
        prompt = prompt[0]
    return prompt
