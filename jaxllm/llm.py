"""`LLM`: vLLM's offline API (`generate`) as a synchronous face over `LLMEngine` + `ModelRunner`."""

from __future__ import annotations

import gc
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

from jaxllm import timeline
from jaxllm.config import CacheConfig, ModelConfig
from jaxllm.engine.llm_engine import LLMEngine
from jaxllm.model_loader import load_generation_config, resolve_model_path
from jaxllm.outputs import BeamSearchOutput, BeamSearchSequence, RequestOutput
from jaxllm.runner.device_memory import claim_device_memory
from jaxllm.runner.scheduler_defaults import scheduler_config
from jaxllm.sampling_params import BeamSearchParams, SamplingParams, final_only
from jaxllm.tokenizer_loader import TokenizerLoader

logger = logging.getLogger(__name__)

# vLLM engine arguments that change nothing here (GPU-runtime knobs of PyTorch engines); accepted so
# that vLLM code runs unchanged.
_IGNORED_ENGINE_ARGS = frozenset(
    {
        "swap_space", "cpu_offload_gb", "disable_custom_all_reduce", "disable_log_stats",
        "max_seq_len_to_capture", "tokenizer_pool_size",
        "compilation_config", "disable_async_output_proc", "worker_cls", "distributed_executor_backend",
        "mm_processor_kwargs", "limit_mm_per_prompt", "hf_token", "task", "runner", "convert",
        "pipeline_parallel_size", "enable_lora", "max_lora_rank", "max_loras",
        "use_v2_block_manager", "preemption_mode", "logits_processors", "structured_outputs_config",
        "guided_decoding_backend", "attention_config", "served_model_name",
    }
)


def default_model_path() -> str:
    """The folder of the small model that ships inside the package (used when no model is given)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")


class LLM:
    """Generate text from a model, offline, with continuous batching over a paged KV pool.

    Arguments and defaults follow `vllm.LLM`. `model` is a local Hugging Face folder or a hub id
    (resolved from the local cache, downloaded only when a network exists); None uses the embedded
    default model.

    `precompile` compiles every step bucket ahead of time on background threads, while the weights
    load: "background" (or True) returns once the weights are loaded and lets a step wait only for its
    own bucket; "wait" returns once every bucket is compiled (and raises if one failed); "off" (or False)
    compiles each bucket when a step first needs it. None: $JAXLLM_PRECOMPILE, else "background" on
    GPU/TPU and "off" on CPU; `enforce_eager=True` (vLLM's switch) means "off" too. A bucket that fails
    to compile is logged at once and fails the steps that need it, as it would have failed lazily.

    `kv_cache_dtype`: "auto" (the model's dtype), "fp8" / "fp8_e4m3" or "fp8_e5m2": float8 KV pages, twice
    the tokens in the same memory (docs/kv_cache_dtype.md); their per-layer K/V scales come from the
    checkpoint's `k_scale` / `v_scale` tensors, else 1.0, or with `calculate_kv_scales=True` from the
    first step's K/V.

    `max_num_seqs` / `max_num_batched_tokens` default as in vLLM, by device and `usage_context`
    ("LLM_CLASS", or "OPENAI_API_SERVER" for `jaxllm serve`): 1024 / 16384 (8192 served) on GPUs of 70 GiB
    and more, 256 / 8192 (2048) on other GPUs, 256 / max(max_model_len, 2048) on CPU and TPU.

    `async_scheduling` (on by default) plans and launches each step while the previous one still runs on
    the device, so the device never waits for Python; tokens are the same with it off.

    Several hosts (docs/parallelism.md): start the same program on every host with
    `distributed_coordinator_address` ("HOST:PORT" of process 0), `distributed_num_processes` and
    `distributed_process_id` (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID), and
    `tensor_parallel_size` equal to the job's device count. Process 0 runs the engine; on the other
    processes `LLM(...)` does not return: it runs process 0's steps, then exits the process when
    process 0 exits.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        tokenizer: str | None = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        quantization: str | None = None,
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        seed: int | None = 0,
        gpu_memory_utilization: float = 0.9,
        kv_cache_memory_bytes: int | None = None,
        num_gpu_blocks_override: int | None = None,
        block_size: int = 16,
        kv_cache_dtype: str = "auto",
        calculate_kv_scales: bool = False,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        max_logprobs: int = 20,
        download_dir: str | None = None,
        load_format: str = "auto",
        enable_prefix_caching: bool | None = None,
        enable_chunked_prefill: bool | None = None,
        async_scheduling: bool = True,
        compilation_cache_dir: str | None = None,
        precompile: bool | str | None = None,
        enforce_eager: bool = False,
        hf_overrides: dict | None = None,
        distributed_coordinator_address: str | None = None,
        distributed_num_processes: int | None = None,
        distributed_process_id: int | None = None,
        usage_context: str = "LLM_CLASS",
        **kwargs: Any,
    ):
        unknown = sorted(set(kwargs) - _IGNORED_ENGINE_ARGS)
        if unknown:
            raise TypeError(f"LLM() got unexpected keyword argument(s): {', '.join(unknown)}")
        self.model = model or default_model_path()
        path = resolve_model_path(self.model, revision=revision, download_dir=download_dir)
        self.model_config = ModelConfig.from_pretrained(path, dtype=dtype)
        if hf_overrides:
            merged = {**self.model_config.hf_config, **hf_overrides}
            self.model_config = ModelConfig.from_dict(merged, path=path, dtype=dtype)
        self.cache_config = CacheConfig(
            block_size=block_size,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            num_gpu_blocks_override=num_gpu_blocks_override,
            enable_prefix_caching=True if enable_prefix_caching is None else bool(enable_prefix_caching),
            cache_dtype=kv_cache_dtype,
            calculate_kv_scales=bool(calculate_kv_scales),
        )
        self.generation_config = load_generation_config(path)
        self.max_logprobs = max_logprobs
        if max_logprobs != 20:
            from jaxllm.sampling_params import set_max_logprobs_limit

            set_max_logprobs_limit(max_logprobs)

        claim_device_memory(gpu_memory_utilization)  # before JAX's backends start
        # The tokenizer loads on its own thread (Rust, mostly without the GIL) while the weights load.
        loading = None if skip_tokenizer_init else TokenizerLoader(
            tokenizer or path, trust_remote_code=trust_remote_code, revision=tokenizer_revision,
            tokenizer_mode=tokenizer_mode,
        )
        try:
            from jaxllm.distributed import DistributedConfig, initialize

            initialize(DistributedConfig.resolve(
                distributed_coordinator_address, distributed_num_processes, distributed_process_id
            ))
            self.scheduler_config = scheduler_config(  # vLLM's defaults for this device: starts JAX's backends
                usage_context, self._max_model_len(max_model_len), max_num_seqs, max_num_batched_tokens,
                True if enable_chunked_prefill is None else bool(enable_chunked_prefill), bool(async_scheduling),
            )
            self._build_runner(compilation_cache_dir, precompile, enforce_eager, max_logprobs, load_format,
                               tensor_parallel_size, quantization)
        except BaseException:
            if loading is not None:
                loading.result()  # nothing left running; its own error, if any, is secondary
            raise
        self._follow_or_lead(loading)
        try:
            self._finish_init(loading, seed, max_logprobs)
        except BaseException:
            self.runner.shutdown()
            raise

    def _build_runner(self, compilation_cache_dir, precompile, enforce_eager, max_logprobs, load_format,
                      tensor_parallel_size, quantization):
        from jaxllm.runner.model_runner import ModelRunner
        from jaxllm.runner.compilation_cache import enable_compilation_cache
        from jaxllm.runner.executable_store import open_store
        from jaxllm.runner.precompile import resolve_mode

        self.compilation_cache_dir = enable_compilation_cache(compilation_cache_dir)
        self.precompile = resolve_mode(precompile, enforce_eager)

        # With precompile on, the steps compile on background threads from here on, while the weights load;
        # stored executables load in the background in every mode.
        with timeline.phase("model runner"):
            self.runner = ModelRunner(
                self.model_config, self.cache_config, self.scheduler_config, max_logprobs, load_format,
                tensor_parallel_size, quantization=quantization, precompile=self.precompile != "off",
                executable_store=open_store(self.compilation_cache_dir),
            )

    def _follow_or_lead(self, loading) -> None:
        """Processes other than 0 replay process 0's steps and exit with it; process 0 releases them at exit."""
        import atexit

        import jax

        if jax.process_count() == 1:
            return
        if jax.process_index() == 0:
            atexit.register(self.runner.stop_followers)  # runs before jax's own shutdown (registered earlier)
            return
        if loading is not None:
            loading.result()
        logger.info("Process %d follows process 0's steps", jax.process_index())
        self.runner.follow()
        raise SystemExit(0)

    def _finish_init(self, loading, seed, max_logprobs):
        self.tokenizer = loading.result(raise_error=True) if loading is not None else None
        self.llm_engine = LLMEngine(
            self.model_config,
            self.cache_config,
            self.scheduler_config,
            self.tokenizer,
            self.runner,
            generation_config=self.generation_config,
            seed=seed,
            max_logprobs=max_logprobs,
        )
        self._counter = itertools.count()
        if self.precompile == "wait" and self.runner.precompiler is not None:
            self.runner.precompiler.wait()
        # What starting made (modules, parameter trees, compiled steps) lives as long as the engine: kept
        # out of the collector's reach, a full collection while generating scans the requests alone
        # (otherwise a pause of tens of milliseconds in which the device waits).
        gc.collect()
        gc.freeze()

    def _max_model_len(self, requested: int | None) -> int:
        cfg = self.model_config
        derived = cfg.max_position_embeddings
        if requested is not None and requested > derived:
            raise ValueError(
                f"User-specified max_model_len ({requested}) is greater than the derived max_model_len "
                f"(max_position_embeddings={derived} in the model's config.json)."
            )
        length = requested or derived
        if cfg.sliding_window and length > cfg.sliding_window:
            logger.warning("Capping max_model_len to the sliding window (%d).", cfg.sliding_window)
            length = cfg.sliding_window
        return length

    # ---- vLLM's public surface -----------------------------------------------------------------

    def reset_prefix_cache(self) -> bool:
        """Forget all cached prefix pages. Returns False (and changes nothing) while requests hold pages."""
        return self.llm_engine.block_manager.reset_prefix_cache()

    def get_tokenizer(self):
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams with the model's generation_config.json defaults, as vLLM does."""
        names = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"}
        kw = {k: v for k, v in self.generation_config.items() if k in names and v is not None}
        if self.generation_config.get("max_new_tokens"):
            kw["max_tokens"] = self.generation_config["max_new_tokens"]
        return SamplingParams(**kw) if kw else SamplingParams()

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool | Any = True,
        lora_request: Any = None,
        priority: list[int] | None = None,
        tokenization_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """Generate completions for `prompts`; outputs come back in input order."""
        if lora_request is not None:
            raise ValueError("LoRA adapters are not supported.")
        prompts = self._normalize_prompts(prompts)
        params = final_only(self._normalize_params(sampling_params, len(prompts)))
        ids = [str(next(self._counter)) for _ in prompts]
        added = []
        try:
            for rid, prompt, sp in zip(ids, prompts, params):
                self.llm_engine.add_request(rid, prompt, sp)
                added.append(rid)
        except Exception:
            self.llm_engine.abort_request(added)
            raise
        return self._run_engine(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | Any = True,
        lora_request: Any = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        chat_template_kwargs: dict | None = None,
        mm_processor_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, through the model's chat template.

        The rendered prompt is tokenized without adding special tokens again (the template has them).
        A template error (e.g. a role it rejects) is a ValueError carrying the template's message.
        """
        from jaxllm.chat_utils import apply_chat_template, load_chat_template

        if self.tokenizer is None:
            raise ValueError("LLM.chat needs a tokenizer (the LLM was built with skip_tokenizer_init=True).")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of messages or of conversations.")
        conversations = messages if isinstance(messages[0], list) else [messages]
        template = load_chat_template(chat_template)
        prompts = []
        for conversation in conversations:
            text = apply_chat_template(
                self.tokenizer, conversation, chat_template=template, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, tools=tools, chat_template_kwargs=chat_template_kwargs,
            )
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request)

    def beam_search(
        self,
        prompts: list,
        params: BeamSearchParams,
        lora_request: Any = None,
        use_tqdm: bool | Any = False,
        concurrency_limit: int | None = None,
    ) -> list[BeamSearchOutput]:
        """Beam search for each prompt; beams share the prompt's KV pages copy-on-write.

        Beams are ranked by cum_logprob / generated_len ** length_penalty (generated tokens, EOS
        included). Each sequence's `tokens` and `text` include the prompt, as in vLLM.
        """
        if lora_request is not None:
            raise ValueError("LoRA adapters are not supported.")
        prompts = self._normalize_prompts(prompts)
        ids = [str(next(self._counter)) for _ in prompts]
        added = []
        try:
            for rid, prompt in zip(ids, prompts):
                self.llm_engine.add_beam_request(rid, prompt, params)
                added.append(rid)
        except Exception:
            self.llm_engine.abort_request(added)
            raise
        results = []
        for out in self._run_engine(ids, use_tqdm):
            sequences = []
            for c in out.outputs:
                tokens = out.prompt_token_ids + c.token_ids
                shown = tokens[:-1] if c.finish_reason == "stop" and not params.include_stop_str_in_output else tokens
                text = self.tokenizer.decode(shown, skip_special_tokens=True) if self.tokenizer is not None else None
                sequences.append(BeamSearchSequence(
                    tokens=tokens, logprobs=c.logprobs, cum_logprob=c.cumulative_logprob, text=text,
                    finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                ))
            results.append(BeamSearchOutput(sequences=sequences))
        return results

    @staticmethod
    def _normalize_prompts(prompts: Any) -> list:
        if isinstance(prompts, (str, dict)):
            return [prompts]
        if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
            raise ValueError(f"prompts must be a str, a prompt dict, or a list of them; got {type(prompts).__name__}.")
        prompts = list(prompts)
        if prompts and all(isinstance(p, int) for p in prompts):
            raise ValueError("A list of ints is not a prompt; pass {'prompt_token_ids': [...]} instead.")
        return prompts

    def _normalize_params(self, sampling_params, count: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [self.get_default_sampling_params()] * count
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        params = list(sampling_params)
        if len(params) != count:
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        for p in params:
            if not isinstance(p, SamplingParams):
                raise ValueError(f"sampling_params must be SamplingParams, got {type(p).__name__}.")
        return params

    def _run_engine(self, ids: list[str], use_tqdm: bool | Any) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            factory = use_tqdm if callable(use_tqdm) else tqdm
            bar = factory(total=len(ids), desc="Processed prompts", dynamic_ncols=True)
        try:
            while self.llm_engine.has_unfinished_requests():
                for out in self.llm_engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return [finished[i] for i in ids]
