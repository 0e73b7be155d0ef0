"""Fields and generation logic shared by `JaxLLM` and `ChatJaxLLM`.

The fields, their defaults and the way they become `SamplingParams` follow
`langchain_community.llms.VLLM`, so a model built for vLLM is built the same way here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from jaxllm.langchain.engine import driver_for, get_engine
from jaxllm.llm import LLM
from jaxllm.outputs import RequestOutput
from jaxllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

_SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams)) - {
    "use_beam_search", "length_penalty", "output_kind",
}


@dataclasses.dataclass
class Completion:
    """One generated text of a prompt, with what LangChain reports as `generation_info`."""

    text: str
    info: dict[str, Any]


@dataclasses.dataclass
class BatchResult:
    completions: list[list[Completion]]  # per prompt, `n` completions (best first for beam search)
    prompt_tokens: int
    completion_tokens: int

    def token_usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _truncate_at_stop(text: str, stop: list[str] | None) -> tuple[str, str | None]:
    """`text` up to the earliest stop string (beam search has no stop strings of its own)."""
    cut, matched = len(text), None
    for s in stop or ():
        i = text.find(s)
        if 0 <= i < cut:
            cut, matched = i, s
    return text[:cut], matched


class JaxLLMFields(BaseModel):
    """The engine and sampling settings of a LangChain model backed by a `jaxllm.LLM`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model: str = ""
    """Local folder or Hugging Face hub id of the model; empty for the model that ships with jaxllm."""

    tensor_parallel_size: int | None = 1
    """Number of devices (GPUs or TPU cores) the weights are sharded over."""

    trust_remote_code: bool | None = False
    """Trust remote code of the Hugging Face model and tokenizer."""

    n: int = 1
    """Number of output sequences to return for each prompt."""

    best_of: int | None = None
    """Number of sequences generated per prompt, of which the `n` most likely are returned."""

    presence_penalty: float = 0.0
    """Penalizes tokens that already appear in the generated text."""

    frequency_penalty: float = 0.0
    """Penalizes tokens by how often they appear in the generated text."""

    temperature: float = 1.0
    """Randomness of sampling; 0 is greedy decoding."""

    top_p: float = 1.0
    """Cumulative probability of the most likely tokens kept for sampling."""

    top_k: int = -1
    """Number of most likely tokens kept for sampling; -1 keeps all."""

    use_beam_search: bool = False
    """Beam search instead of sampling: the beam width is `best_of` when set, else `n`; the `n` best beams
    are returned. It reads `max_new_tokens`, `ignore_eos`, `stop` and a per-call `length_penalty`; the
    sampling fields (temperature, top_p, ...) do not apply."""

    stop: list[str] | None = None
    """Strings that end the generation (not included in the output)."""

    ignore_eos: bool = False
    """Keep generating after the end-of-sequence token."""

    max_new_tokens: int = 512
    """Maximum number of tokens generated per output sequence."""

    logprobs: int | None = None
    """Number of log probabilities returned per output token (in `generation_info["logprobs"]`)."""

    dtype: str = "auto"
    """Data type of the weights and activations: auto, float32, bfloat16, float16."""

    download_dir: str | None = None
    """Folder the weights are downloaded to and loaded from (default: the Hugging Face cache)."""

    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, validation_alias=AliasChoices("engine_kwargs", "vllm_kwargs")
    )
    """Further `jaxllm.LLM` arguments (`max_model_len`, `quantization`, `seed`, ...); `vllm_kwargs` also works."""

    sampling_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further `SamplingParams` defaults (`repetition_penalty`, `min_p`, `seed`, ...)."""

    client: Any = Field(default=None, validation_alias=AliasChoices("client", "llm"))
    """The `jaxllm.LLM` to generate with (`llm=` also works); built from the fields above when not given,
    or reused from another model built with the same engine arguments."""

    streaming: bool = False
    """Generate through the streaming path, so callbacks see every new token."""

    use_tqdm: Any = False
    """Show vLLM's `Processed prompts` progress bar while a batch generates (as `jaxllm.LLM.generate`
    does): True for tqdm's bar, or a tqdm-like class called with `total`, `desc` and `dynamic_ncols`.
    A call's `use_tqdm=` keyword overrides it."""

    @model_validator(mode="after")
    def _build_client(self) -> JaxLLMFields:
        if self.client is None:
            self.client = get_engine(self.model or None, **self.engine_args())
        elif not isinstance(self.client, LLM):
            raise ValueError(f"client must be a jaxllm.LLM, got {type(self.client).__name__}.")
        return self

    @property
    def vllm_kwargs(self) -> dict[str, Any]:
        """`engine_kwargs` under the name `langchain_community.llms.VLLM` uses."""
        return self.engine_kwargs

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments of `jaxllm.LLM` (besides the model) these fields stand for."""
        return {
            "tensor_parallel_size": self.tensor_parallel_size or 1,
            "trust_remote_code": bool(self.trust_remote_code),
            "dtype": self.dtype,
            "download_dir": self.download_dir,
            **self.engine_kwargs,
        }

    @property
    def _default_params(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "best_of": self.best_of,
            "max_tokens": self.max_new_tokens,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "temperature": self.temperature,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "stop": self.stop,
            "ignore_eos": self.ignore_eos,
            "use_beam_search": self.use_beam_search,
            "logprobs": self.logprobs,
            **self.sampling_kwargs,
        }

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, **self._default_params}

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` under the model's own tokenizer (used by LangChain to count tokens)."""
        tokenizer = self.client.get_tokenizer()
        if tokenizer is None:
            return super().get_token_ids(text)  # type: ignore[misc]
        return tokenizer.encode(text, add_special_tokens=False)

    # ---- requests ------------------------------------------------------------------------------

    def _call_params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The fields overridden by this call's keyword arguments and `stop`."""
        kwargs = dict(kwargs)
        kwargs.pop("use_tqdm", None)  # read by _progress_bar
        if kwargs.pop("lora_request", None) is not None:
            raise ValueError("LoRA adapters are not supported.")
        if "max_new_tokens" in kwargs:
            kwargs["max_tokens"] = kwargs.pop("max_new_tokens")
        params = {**self._default_params, **kwargs}
        if stop is not None:
            params["stop"] = stop
        return params

    @staticmethod
    def _sampling_params(params: dict[str, Any], kind: RequestOutputKind) -> SamplingParams:
        # unknown keys are dropped, as langchain_community's VLLM does
        return SamplingParams(**{k: v for k, v in params.items() if k in _SAMPLING_FIELDS}, output_kind=kind)

    @staticmethod
    def _beam_params(params: dict[str, Any]) -> tuple[BeamSearchParams, int]:
        width = params.get("best_of") or params.get("n") or 1
        n = min(params.get("n") or 1, width)
        beam = BeamSearchParams(
            beam_width=width, max_tokens=params["max_tokens"], ignore_eos=bool(params.get("ignore_eos")),
            length_penalty=params.get("length_penalty", 1.0),
        )
        return beam, n

    def _progress_bar(self, total: int, kwargs: dict[str, Any]) -> Any:
        """The `Processed prompts` bar of `jaxllm.LLM.generate`, when `use_tqdm` is on (else None)."""
        use_tqdm = kwargs.get("use_tqdm", self.use_tqdm)
        if not use_tqdm:
            return None
        if callable(use_tqdm):
            return use_tqdm(total=total, desc="Processed prompts", dynamic_ncols=True)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="Processed prompts", dynamic_ncols=True)

    def _generate_batch(self, prompts: list[Any], stop: list[str] | None, kwargs: dict[str, Any]) -> BatchResult:
        """All prompts through the engine at once; their finished outputs as completions."""
        params = self._call_params(stop, kwargs)
        driver = driver_for(self.client)
        bar = self._progress_bar(len(prompts), kwargs)
        tick = None if bar is None else (lambda _out: bar.update(1))
        try:
            if params.get("use_beam_search"):
                beam, n = self._beam_params(params)
                outputs = driver.run(self.client, prompts, beam, on_finished=tick)
                kept = [out.outputs[:n] for out in outputs]
                completions = [[self._beam_completion(c, params.get("stop")) for c in cs] for cs in kept]
            else:
                sampling = self._sampling_params(params, RequestOutputKind.FINAL_ONLY)
                outputs = driver.run(self.client, prompts, sampling, on_finished=tick)
                kept = [out.outputs for out in outputs]
                completions = [[self._completion(c) for c in cs] for cs in kept]
        finally:
            if bar is not None:
                bar.close()
        for out in outputs:
            self._check_errors(out)
        return BatchResult(
            completions=completions,
            prompt_tokens=sum(len(out.prompt_token_ids) for out in outputs),
            completion_tokens=sum(len(c.token_ids) for cs in kept for c in cs),
        )

    def _stream_deltas(self, prompt: Any, stop: list[str] | None, kwargs: dict[str, Any]) -> Iterator[Completion]:
        """New text of one prompt's single sequence as it is generated; the last piece has the finish info.

        Beam search cannot know its result before it ends: it yields the best beam in one piece.
        """
        params = self._call_params(stop, kwargs)
        if params.get("use_beam_search"):
            yield self._generate_batch([prompt], stop, kwargs).completions[0][0]
            return
        if (params.get("n") or 1) > 1 or (params.get("best_of") or 1) > 1:
            raise ValueError("Streaming returns one sequence: n and best_of must be 1.")
        driver = driver_for(self.client)
        [rid] = driver.submit(self.client, [prompt], self._sampling_params(params, RequestOutputKind.DELTA))
        generated = 0
        for out in driver.outputs(self.client, [rid]):
            self._check_errors(out)
            delta = out.outputs[0]
            generated += len(delta.token_ids)
            if out.finished:
                info = self._completion(delta).info
                info["usage"] = {
                    "prompt_tokens": len(out.prompt_token_ids),
                    "completion_tokens": generated,
                    "total_tokens": len(out.prompt_token_ids) + generated,
                }
                yield Completion(delta.text, info)
            elif delta.text:
                yield Completion(delta.text, {})

    def _completion(self, c: Any) -> Completion:
        info: dict[str, Any] = {"finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
        if c.logprobs is not None:
            info["logprobs"] = c.logprobs
        return Completion(c.text, info)

    def _beam_completion(self, c: Any, stop: list[str] | None) -> Completion:
        text, matched = _truncate_at_stop(c.text, stop)
        finish, stop_reason = ("stop", matched) if matched is not None else (c.finish_reason, c.stop_reason)
        info: dict[str, Any] = {"finish_reason": finish, "stop_reason": stop_reason,
                                "cumulative_logprob": c.cumulative_logprob}
        return Completion(text, info)

    @staticmethod
    def _check_errors(out: RequestOutput) -> None:
        if any(c.finish_reason == "error" for c in out.outputs):
            raise RuntimeError("The model step generating this text failed (see the jaxllm log).")
