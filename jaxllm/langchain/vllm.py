"""`VLLM`: the name LangChain's vLLM tutorials use, for `JaxLLM` with vLLM's progress bar on by default."""

from __future__ import annotations

from typing import Any

from jaxllm.langchain.llms import JaxLLM


class VLLM(JaxLLM):
    """`langchain_community.llms.VLLM` run by jaxllm: same fields, same defaults, same output.

        from jaxllm.langchain import VLLM

        llm = VLLM(model="Qwen/Qwen2.5-1.5B-Instruct", trust_remote_code=True, max_new_tokens=128,
                   top_k=10, top_p=0.95, temperature=0.8)
        print(llm.invoke("What are the most popular Halloween Costumes?"))

    As with vLLM, every batch prints the `Processed prompts` bar; `use_tqdm=False` (field or per call)
    turns it off. Everything else is `JaxLLM`: `vllm_kwargs` go to `jaxllm.LLM`, models with the same
    engine arguments share one engine.
    """

    use_tqdm: Any = True

    @property
    def _llm_type(self) -> str:
        return "vllm"
