"""jaxllm: LLM inference and serving in pure JAX and Pallas, with vLLM's API.

    from jaxllm import LLM, SamplingParams
    llm = LLM()  # the embedded default model; or LLM(model="path/or/hub-id")
    print(llm.generate(["def fibonacci(n):"], SamplingParams(max_tokens=32))[0].outputs[0].text)
"""

from jaxllm.llm import LLM, default_model_path
from jaxllm.outputs import BeamSearchOutput, BeamSearchSequence, CompletionOutput, Logprob, RequestOutput
from jaxllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "BeamSearchOutput",
    "BeamSearchParams",
    "BeamSearchSequence",
    "CompletionOutput",
    "Logprob",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
    "__version__",
    "default_model_path",
]
