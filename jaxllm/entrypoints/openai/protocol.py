"""Request and response bodies of the OpenAI-compatible API, field for field as OpenAI and vLLM spell them.

Every model is importable from here, as from vLLM's `vllm.entrypoints.openai.protocol`; they are defined in
protocol_base.py (the base model, errors, usage, the shared sampling fields), protocol_completion.py
(/v1/completions), protocol_chat.py (/v1/chat/completions), protocol_models.py (/v1/models) and
protocol_tokenize.py (/tokenize, /detokenize).
"""

from jaxllm.entrypoints.openai.protocol_base import (
    ErrorInfo,
    ErrorResponse,
    OpenAIBaseModel,
    PromptTokenUsageInfo,
    ResponseFormat,
    StreamOptions,
    UsageInfo,
    random_id,
)
from jaxllm.entrypoints.openai.protocol_chat import (
    ChatCompletionLogProbs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatLogProb,
    ChatLogProbsContent,
    ChatMessage,
)
from jaxllm.entrypoints.openai.protocol_completion import (
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from jaxllm.entrypoints.openai.protocol_models import ModelCard, ModelList, ModelPermission
from jaxllm.entrypoints.openai.protocol_tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeRequest,
    TokenizeResponse,
)

__all__ = [
    "ChatCompletionLogProbs",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionResponseChoice",
    "ChatLogProb",
    "ChatLogProbsContent",
    "ChatMessage",
    "CompletionLogProbs",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionResponseChoice",
    "CompletionResponseStreamChoice",
    "CompletionStreamResponse",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "ErrorInfo",
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "ModelPermission",
    "OpenAIBaseModel",
    "PromptTokenUsageInfo",
    "ResponseFormat",
    "StreamOptions",
    "TokenizeChatRequest",
    "TokenizeCompletionRequest",
    "TokenizeRequest",
    "TokenizeResponse",
    "UsageInfo",
    "random_id",
]
