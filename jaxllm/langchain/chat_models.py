"""`ChatJaxLLM`: a LangChain chat model (`BaseChatModel`) that renders the model's chat template and
generates in-process with jaxllm."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

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
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from jaxllm.chat_utils import apply_chat_template, load_chat_template
from jaxllm.entrypoints.openai.chat_tool_calls import ChatToolCalls
from jaxllm.langchain.base import JaxLLMFields
from jaxllm.structured_output.params import StructuredOutputsParams


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


def _split_calls(calls: list[Any]) -> tuple[list[dict], list[dict]]:
    """LangChain's `tool_calls` and `invalid_tool_calls` (arguments that are not a JSON object, e.g. cut
    short by the token limit)."""
    valid, invalid = [], []
    for call in calls:
        try:
            args = json.loads(call.arguments, strict=False)
        except ValueError as err:
            args, error = None, f"arguments are not JSON: {err}"
        else:
            error = None if isinstance(args, dict) else "arguments are not a JSON object"
        if error is None:
            valid.append({"name": call.name, "args": args, "id": call.id})
        else:
            invalid.append({"name": call.name, "args": call.arguments, "id": call.id, "error": error})
    return valid, invalid


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

    tool_call_parser: str | None = None
    """How the model writes tool calls (`hermes`, `llama3_json`), for `tool_choice="auto"`."""

    @property
    def _llm_type(self) -> str:
        return "jaxllm-chat"

    def _prompt(self, messages: list[BaseMessage], tools: list[dict] | None = None) -> dict[str, Any]:
        tokenizer = self.client.get_tokenizer()
        if tokenizer is None:
            raise ValueError("ChatJaxLLM needs a tokenizer (the LLM was built with skip_tokenizer_init=True).")
        conversation = [_message_dict(m) for m in messages]
        text = apply_chat_template(
            tokenizer, conversation, chat_template=load_chat_template(self.chat_template),
            add_generation_prompt=True, chat_template_kwargs=self.chat_template_kwargs, tools=tools,
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
        plan, kwargs = self._tool_plan(kwargs)
        result = self._generate_batch([self._prompt(messages, kwargs.get("tools"))], stop, kwargs)
        usage = result.token_usage()
        generations = []
        for i, c in enumerate(result.completions[0]):
            content, calls = plan.calls(c.text)
            info = {**c.info, "finish_reason": plan.finish_reason(c.info.get("finish_reason"), bool(calls))}
            valid, invalid = _split_calls(calls)
            message = AIMessage(
                content=content or "",
                tool_calls=valid,
                invalid_tool_calls=invalid,
                response_metadata={**info, "model_name": self.model},
                usage_metadata=_usage_metadata(usage) if i == 0 else None,
            )
            generations.append(ChatGeneration(message=message, generation_info=info))
        return ChatResult(generations=generations, llm_output={"token_usage": usage, "model_name": self.model})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        plan, kwargs = self._tool_plan(kwargs)
        calls, text = plan.stream(), ""
        for piece in self._stream_deltas(self._prompt(messages, kwargs.get("tools")), stop, kwargs):
            info = dict(piece.info)
            usage = info.pop("usage", None)
            text += piece.text
            content, deltas = calls.feed(text, "finish_reason" in info)
            if "finish_reason" in info:
                info["finish_reason"] = plan.finish_reason(info["finish_reason"], calls.called)
            message = AIMessageChunk(
                content=content,
                tool_call_chunks=[{"name": d.get("function", {}).get("name"), "id": d.get("id"),
                                   "args": d.get("function", {}).get("arguments"), "index": d["index"]}
                                  for d in deltas],
                response_metadata={**info, "model_name": self.model} if info else {},
                usage_metadata=_usage_metadata(usage) if usage else None,
            )
            chunk = ChatGenerationChunk(message=message, generation_info=info or None)
            if run_manager is not None:
                run_manager.on_llm_new_token(content, chunk=chunk)
            yield chunk

    def _tool_plan(self, kwargs: dict[str, Any]) -> tuple[ChatToolCalls, dict[str, Any]]:
        """How this call's `tools` / `tool_choice` (from `bind_tools`) shape and read the output."""
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None)
        plan = ChatToolCalls.create(tools, kwargs.pop("tool_choice", None), kwargs.pop("parallel_tool_calls", None),
                                    self.tool_call_parser)
        if tools:
            kwargs["tools"] = tools  # as given (descriptions included): the chat template renders them
        forced = plan.structured_outputs()
        if forced is not None:
            kwargs["structured_outputs"] = forced
        return plan, kwargs

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | Any],
        *,
        tool_choice: dict | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable:
        """Offer `tools` to the model (the chat template receives them), as `ChatOpenAI.bind_tools`.

        `tool_choice`: "auto" (needs `tool_call_parser`), "none", "required" / "any" / True (some tool),
        or a tool's name / `{"type": "function", "function": {"name": ...}}` (that tool); the last two
        are enforced with structured outputs. Calls come back in `AIMessage.tool_calls`.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice in ("any", True):
            tool_choice = "required"
        elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        kwargs.pop("ls_structured_output_format", None)
        return super().bind(tools=formatted, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
                            **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable:
        """A runnable whose output follows `schema` (a Pydantic class, a JSON schema or a tool dict).

        `json_schema` constrains the reply to the schema, `function_calling` forces a call of it as a
        tool, `json_mode` constrains the reply to any JSON object. JSON is written compactly.
        """
        kwargs.pop("strict", None)  # always strict: the grammar enforces the schema
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, **kwargs)
            parser = (PydanticToolsParser(tools=[schema], first_tool_only=True) if pydantic
                      else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            so = (StructuredOutputsParams(json_object=True, disable_any_whitespace=True) if method == "json_mode"
                  else StructuredOutputsParams(json=convert_to_json_schema(schema), disable_any_whitespace=True))
            llm = self.bind(structured_outputs=so.to_dict(), **kwargs)
            parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
        else:
            raise ValueError(f"Unknown method {method!r}: use json_schema, function_calling or json_mode.")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
