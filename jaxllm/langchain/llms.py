"""`JaxLLM`: a LangChain text-completion model (`BaseLLM`) that generates in-process with jaxllm."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from jaxllm.langchain.base import JaxLLMFields


class JaxLLM(JaxLLMFields, BaseLLM):
    """A jaxllm model as a LangChain LLM, with the fields of `langchain_community.llms.VLLM`.

        from jaxllm.langchain import JaxLLM

        llm = JaxLLM(model="Qwen/Qwen2.5-1.5B-Instruct", max_new_tokens=128, top_k=10, top_p=0.95,
                     temperature=0.8)
        print(llm.invoke("What is the capital of France?"))

    `invoke(prompt, temperature=0, max_new_tokens=32, ...)` overrides fields for one call (any
    `SamplingParams` field works too). `batch` sends every prompt to the engine at once; `stream`
    yields text as the engine generates it. With `n` > 1 each prompt's `Generation`s hold all `n`
    texts (`invoke` returns the first).
    """

    @property
    def _llm_type(self) -> str:
        return "jaxllm"

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        params = self._call_params(stop, kwargs)
        one_sequence = (params.get("n") or 1) == 1 and (params.get("best_of") or 1) == 1
        if self.streaming and len(prompts) == 1 and one_sequence:
            generation: GenerationChunk | None = None
            for chunk in self._stream(prompts[0], stop=stop, run_manager=run_manager, **kwargs):
                generation = chunk if generation is None else generation + chunk
            assert generation is not None
            info = dict(generation.generation_info or {})
            usage = info.pop("usage", None)
            return LLMResult(
                generations=[[Generation(text=generation.text, generation_info=info)]],
                llm_output={"token_usage": usage, "model_name": self.model},
            )
        result = self._generate_batch(prompts, stop, kwargs)
        return LLMResult(
            generations=[[Generation(text=c.text, generation_info=c.info) for c in per_prompt]
                         for per_prompt in result.completions],
            llm_output={"token_usage": result.token_usage(), "model_name": self.model},
        )

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for piece in self._stream_deltas(prompt, stop, kwargs):
            chunk = GenerationChunk(text=piece.text, generation_info=piece.info or None)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk
