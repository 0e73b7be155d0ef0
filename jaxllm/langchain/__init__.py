"""LangChain models backed by jaxllm, in-process: `JaxLLM` (text completion) and `ChatJaxLLM` (chat).

    from jaxllm.langchain import JaxLLM
    llm = JaxLLM(model="Qwen/Qwen2.5-1.5B-Instruct", max_new_tokens=128, top_k=10, top_p=0.95, temperature=0.8)
    print(llm.invoke("What is the capital of France?"))

They take the fields of `langchain_community.llms.VLLM`. Models built with the same engine arguments
share one `jaxllm.LLM` (or pass `client=` an existing one). Needs `pip install "jaxllm[langchain]"`.

Code written for vLLM keeps its class names: `VLLM` is `JaxLLM` with vLLM's `Processed prompts` bar,
and `VLLMOpenAI` is LangChain's client for a served model, pointed at a local `jaxllm serve` unless
told otherwise (docs/langchain.md).
"""

try:
    import langchain_core  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        'jaxllm.langchain needs langchain-core: pip install "jaxllm[langchain]"'
    ) from err

from jaxllm.langchain.chat_models import ChatJaxLLM
from jaxllm.langchain.engine import EngineDriver, clear_engine_cache, driver_for, get_engine
from jaxllm.langchain.llms import JaxLLM
from jaxllm.langchain.vllm import VLLM

__all__ = [
    "VLLM", "ChatJaxLLM", "EngineDriver", "JaxLLM", "VLLMOpenAI", "clear_engine_cache", "driver_for", "get_engine",
]


def __getattr__(name: str):
    # VLLMOpenAI needs langchain-community, which the in-process models do not: imported on first use.
    if name == "VLLMOpenAI":
        from jaxllm.langchain.vllm_openai import VLLMOpenAI

        return VLLMOpenAI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
