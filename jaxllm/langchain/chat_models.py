"""`ChatJaxLLM`: a LangChain chat model (`BaseChatModel`) that renders the model's chat template and
generates in-process with jaxllm."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from jaxllm.chat_utils import apply_chat_template, load_chat_template
from jaxllm.langchain.base import JaxLLMFields


def _message_dict(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message as the OpenAI-style dict chat templates read."""
    if isinstance(message, SystemMessage):
        role = "system"
    elif isinstance(message, HumanMessage):
        role = "user"
    elif isinstance(message, AIMessage):
        role = "assistant"
    elif isinstance(message, ToolMessage):
        role = "tool"
    elif isinstance(message, ChatMessage):
        role = message.role
    else:
        raise ValueError(f"Unsupported message type {type(message).__name__}.")
    out: dict[str, Any] = {"role": role, "content": message.content}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["args"])}}
            for call in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out


def _usage_metadata(usage: dict[str, int]) -> dict[str, int]:
    return {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }


class ChatJaxLLM(JaxLLMFields, BaseChatModel):
    """A jaxllm model as a LangChain chat model: messages go through the tokenizer's chat template.

        from jaxllm.langchain import ChatJaxLLM

        chat = ChatJaxLLM(model="Qwen/Qwen2.5-1.5B-Instruct", temperature=0, max_new_tokens=128)
        chat.invoke([("system", "You are terse."), ("user", "Name a prime number.")]).content

    Takes the same fields as `JaxLLM` (a model that shares an engine with a `JaxLLM` reuses it), plus
    `chat_template` (a template or a file holding one, instead of the tokenizer's) and
    `chat_template_kwargs` (extra template variables, e.g. `{"enable_thinking": False}`). A template
    that rejects a message (e.g. "System role not supported") raises ValueError with its message.
    """

    chat_template: str | None = None
    """A Jinja chat template, or the path of a file holding one, used instead of the tokenizer's."""

    chat_template_kwargs: dict[str, Any] | None = None
    """Extra variables passed to the chat template."""

    @property
    def _llm_type(self) -> str:
        return "jaxllm-chat"

    def _prompt(self, messages: list[BaseMessage]) -> dict[str, Any]:
        tokenizer = self.client.get_tokenizer()
        if tokenizer is None:
            raise ValueError("ChatJaxLLM needs a tokenizer (the LLM was built with skip_tokenizer_init=True).")
        conversation = [_message_dict(m) for m in messages]
        text = apply_chat_template(
            tokenizer, conversation, chat_template=load_chat_template(self.chat_template),
            add_generation_prompt=True, chat_template_kwargs=self.chat_template_kwargs,
        )
        # the template already wrote the special tokens
        return {"prompt": text, "prompt_token_ids": tokenizer(text, add_special_tokens=False).input_ids}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = self._generate_batch([self._prompt(messages)], stop, kwargs)
        usage = result.token_usage()
        generations = [
            ChatGeneration(
                message=AIMessage(
                    content=c.text,
                    response_metadata={**c.info, "model_name": self.model},
                    usage_metadata=_usage_metadata(usage) if i == 0 else None,
                ),
                generation_info=c.info,
            )
            for i, c in enumerate(result.completions[0])
        ]
        return ChatResult(generations=generations, llm_output={"token_usage": usage, "model_name": self.model})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for piece in self._stream_deltas(self._prompt(messages), stop, kwargs):
            info = dict(piece.info)
            usage = info.pop("usage", None)
            message = AIMessageChunk(
                content=piece.text,
                response_metadata={**info, "model_name": self.model} if info else {},
                usage_metadata=_usage_metadata(usage) if usage else None,
            )
            chunk = ChatGenerationChunk(message=message, generation_info=info or None)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk
