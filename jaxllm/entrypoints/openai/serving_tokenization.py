"""POST /tokenize and /detokenize (vLLM's extras; not behind the API key, as in vLLM).

The (de)tokenizing runs on a worker thread: a large body does not hold up other requests.
"""

from __future__ import annotations

from jaxllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeRequest,
    TokenizeResponse,
)
from jaxllm.entrypoints.openai.serving_engine import OpenAIServing, input_size


class OpenAIServingTokenization(OpenAIServing):
    async def create_tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        size = input_size(getattr(request, "messages", None) or getattr(request, "prompt", ""))
        return await self.off_loop(self._tokenize, request, size=size)

    async def create_detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        return await self.off_loop(self._detokenize, request, size=len(request.tokens))

    def _tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self.check_model(request.model)
        if isinstance(request, TokenizeChatRequest):
            text = self.render_chat(request)
        else:
            text = request.prompt
        ids = self.tokenize(text, request.add_special_tokens)
        strs = self.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
        # built from trusted values without validation: a million token ids would hold the GIL for a while
        return TokenizeResponse.model_construct(count=len(ids), max_model_len=self.config.max_model_len, tokens=ids,
                                                token_strs=strs)

    def _detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.check_model(request.model)
        self.check_token_ids(request.tokens)
        return DetokenizeResponse(prompt=self.tokenizer.decode(request.tokens))
