"""The only place that calls `jax.jit`: one compiled step per (kind, bucket, flags), pool donated.

    SchedulerOutput -> InputBatch (NumPy, padded to a bucket) -> jitted step -> ModelRunnerOutput
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import sharding, timeline
from jaxllm.config import CacheConfig, ModelConfig, SchedulerConfig
from jaxllm.models.fusion import fuse_projections, fusion_enabled
from jaxllm.models.registry import get_model_module
from jaxllm.quantization.config import resolve_quantization
from jaxllm.runner import abstract_params, compile_counter, step_broadcast
from jaxllm.runner.buckets import bucket_for, ladder
from jaxllm.runner.executable_store import ExecutableStore, step_context
from jaxllm.runner.input_batch import InputBatch, StepFlags, build_decode, build_prefill, fill_token_bitmask
from jaxllm.runner.kv_cache import (
    abstract_kv_caches,
    allocate_kv_caches,
    check_kv_cache_dtype,
    plan_num_blocks,
)
from jaxllm.runner.kv_scales import initial_kv_scales
from jaxllm.runner.logit_bias import step_logit_bias
from jaxllm.runner.model_step import _step, logits_step, sample_step, step_inputs
from jaxllm.runner.precompile import Precompiler, default_workers, example_steps
from jaxllm.runner.runner_output import ModelRunnerOutput, PendingStep, PromptLogprobs
from jaxllm.runner.sampler import SamplingMetadata
from jaxllm.runner.weight_loader import WeightLoader

logger = logging.getLogger(__name__)


class ModelRunner:
    """Holds the parameters and the KV pool on device and runs scheduled steps."""

    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        scheduler_config: SchedulerConfig,
        max_logprobs: int = 20,
        load_format: str = "auto",
        tensor_parallel_size: int = 1,
        quantization: str | None = None,
        precompile: bool = False,
        executable_store: ExecutableStore | None = None,
    ):
        """precompile: compile every bucket for default sampling ahead of time, on background threads
        started before the weights load (see runner/precompile.py). executable_store: where compiled
        buckets are kept; those stored are loaded (without tracing) while the weights load, in either mode."""
        compile_counter.install()
        self.tp = tensor_parallel_size
        self.mesh = sharding.make_mesh(self.tp)
        sharding.check_tensor_parallel(model_config, self.tp)
        self.kv_repeats = sharding.kv_head_repeats(model_config, self.tp)
        model_config = sharding.sharded_config(model_config, self.tp)
        self.model_config = model_config
        self.cache_config = cache_config
        self.scheduler_config = scheduler_config
        check_kv_cache_dtype(cache_config)
        self.module = get_model_module(model_config.architecture)
        # None, or how the linear weights are stored: AWQ from the checkpoint, int8 / fp8 quantized at load.
        self.quant_config = resolve_quantization(
            quantization, model_config.path, model_config.hf_config, random_weights=load_format == "dummy"
        )
        self.table_width = -(-scheduler_config.max_model_len // cache_config.block_size)
        self.decode_buckets = ladder(scheduler_config.max_num_seqs)
        self.prefill_buckets = ladder(scheduler_config.max_num_batched_tokens, start=16)
        vocab = model_config.vocab_size
        self.num_top_logprobs = vocab if max_logprobs < 0 else max(1, min(max_logprobs, vocab))
        self._steps: dict[tuple, object] = {}
        self._copy_fn = None
        self._split: PendingStep | None = None  # a split step still waiting for its token masks
        self.precompiler: Precompiler | None = None
        if step_broadcast.is_multi_process() and (precompile or executable_store is not None):
            logger.info("Several processes: steps compile when first run, in the same order on every process")
            precompile, executable_store = False, None
        self.executable_store, self._ahead = executable_store, precompile
        self.weights = WeightLoader(model_config, self.module, self.mesh, self.quant_config, self.kv_repeats,
                                    self.tp, self.fuses_projections)
        try:
            overlapped = precompile or executable_store is not None
            self.params = self._load_overlapped(load_format) if overlapped else self._load_and_fuse(load_format)
        except BaseException:
            self.shutdown()
            raise
        if cache_config.num_blocks is None:
            cache_config.num_blocks = plan_num_blocks(model_config, cache_config, scheduler_config, self.tp)
        cache_config.num_blocks = step_broadcast.broadcast_int(cache_config.num_blocks)  # process 0's pool size
        self.kv_caches = allocate_kv_caches(
            model_config, cache_config, sharding.kv_cache_sharding(self.mesh),
            initial_kv_scales(model_config, cache_config), sharding.replicated(self.mesh),
        )
        self.token_buffer = jax.device_put(
            np.zeros(cache_config.num_blocks * cache_config.block_size, np.int32), sharding.replicated(self.mesh)
        )

    def _load_and_fuse(self, load_format: str) -> dict:
        with timeline.phase("weights"):
            params = self.weights.load(load_format)
            if not self.fuses_projections:
                return params
            params = fuse_projections(params, self.tp)  # 4 matmuls a layer, not 7
            return self._placed(params) if self.tp > 1 else params

    def _load_overlapped(self, load_format: str) -> dict:
        """Load while every bucket compiles from the predicted parameter tree; compile again from the
        loaded tree if the prediction was impossible or wrong."""
        cache, plan = self.cache_config, lambda *extra: plan_num_blocks(
            self.model_config, self.cache_config, self.scheduler_config, self.tp, *extra
        )
        predicted = abstract_params.predict(self, load_format)
        planned = predicted is not None and cache.num_blocks is None
        if predicted is not None:  # the pool's size is part of each step's shape: plan it before loading
            if planned:
                cache.num_blocks = plan(abstract_params.bytes_per_device(predicted))
            self._start_precompile(predicted)
        params = self._load_and_fuse(load_format)
        loaded = abstract_params.abstract(params)
        differs = abstract_params.difference(predicted, loaded) if predicted is not None else "not predicted"
        if differs:
            if predicted is not None:
                logger.warning("Parameters differ from their prediction (%s); compiling again", differs)
            self.shutdown(wait=True)  # no build for the predicted shapes finishes after the new ones start
            if planned or cache.num_blocks is None:  # size the pool from the loaded weights
                cache.num_blocks = plan()
            self._start_precompile(loaded)
        return params

    @property
    def fuses_projections(self) -> bool:
        return getattr(self.module, "SUPPORTS_FUSED_PROJECTIONS", False) and fusion_enabled()

    def _placed(self, params: dict) -> dict:
        """Each fused leaf on the mesh as the sharding table places it (its shard's q|k|v columns)."""
        for layer in params["layers"].values() if isinstance(params["layers"], dict) else params["layers"]:
            for name in ("w_qkv", "b_qkv", "w_gate_up", "b_gate_up"):
                if name in layer:
                    layer[name] = jax.device_put(layer[name], sharding.param_sharding(self.mesh, name, layer[name].shape))
        return params

    def _start_precompile(self, params) -> None:
        """Compile every bucket for default sampling on background threads, from abstract arguments."""
        cfg, cache = self.model_config, self.cache_config
        kv = abstract_kv_caches(cfg, cache, sharding.kv_cache_sharding(self.mesh), sharding.replicated(self.mesh))
        buffer = jax.ShapeDtypeStruct(
            (cache.num_blocks * cache.block_size,), jnp.int32, sharding=sharding.replicated(self.mesh)
        )
        steps = [
            (name, self._compiled(batch.flags), step_inputs(batch), batch.flags.key())
            for name, batch in example_steps(self.prepare, self.decode_buckets, self.prefill_buckets)
        ]
        fixed = (params, kv, buffer)
        context = step_context(cfg, self.module.__name__, self.num_top_logprobs, fixed) if self.executable_store else None
        self.precompiler = Precompiler(steps, fixed, self._mesh_context, default_workers(),
                                       store=self.executable_store, context=context, ahead=self._ahead,
                                       devices=list(self.mesh.devices.flat))

    def shutdown(self, wait: bool = False) -> None:
        """Stop precompiling (buckets already compiling finish, before this returns with `wait`; nothing
        else starts)."""
        if self.precompiler is not None:
            self.precompiler.cancel(wait)
            self.precompiler = None

    @property
    def num_buckets(self) -> int:
        """Distinct step shapes: decode batch buckets, and token buckets in two prefill layouts (fresh
        prompts attend densely; prompts continuing after pool pages go through the ragged kernel).
        Each compiles once per flag combination that actually occurs."""
        return len(self.decode_buckets) + 2 * len(self.prefill_buckets)

    def _compiled(self, flags: StepFlags, part: str = "whole"):
        """The jitted step for `flags`: the "whole" step, or a split step's "logits" or "sample" half."""
        key = (*flags.key(), part)
        fn = self._steps.get(key)
        if fn is None:
            top = self.num_top_logprobs
            if part == "sample":
                fn = jax.jit(functools.partial(sample_step, flags=flags, top=top), donate_argnums=(1,))
            else:
                step = functools.partial(_step, tp=self.tp) if part == "whole" else logits_step
                step = functools.partial(step, module=self.module, cfg=self.model_config, flags=flags, top=top)
                fn = jax.jit(step, donate_argnums=(1, 2) if part == "whole" else (1,))
            self._steps[key] = fn
        return fn

    def prepare(self, sched_out, block_manager) -> InputBatch:
        requests = sched_out.requests
        vocab = self.model_config.vocab_size
        max_len = self.scheduler_config.max_model_len

        def bias(r):
            return step_logit_bias(r, vocab)

        if sched_out.is_prefill:
            return build_prefill(
                requests, block_manager, self.prefill_buckets, self.scheduler_config.max_num_seqs, vocab, max_len,
                bias, self.table_width,
            )
        return build_decode(requests, block_manager, self.decode_buckets, self.table_width, vocab, max_len, bias)

    def dispatch(self, sched_out, block_manager) -> PendingStep:
        """Start a step on the device and return without waiting for it."""
        batch = self.prepare(sched_out, block_manager)
        if sched_out.block_copies:
            self._copy_blocks(sched_out.block_copies)
        if self._split is not None:
            raise RuntimeError("A split step's token masks must be filled (complete) before the next step starts.")
        inputs = step_inputs(batch)
        if batch.late_bitmask:  # its masks wait for the step in flight: run the forward half now
            step_broadcast.send((step_broadcast.LOGITS, batch.flags, inputs))
            logits, prompt = self._run_logits(batch.flags, inputs)
            self._split = PendingStep(list(sched_out.requests), batch, None, prompt, logits)
            return self._split
        step_broadcast.send((step_broadcast.STEP, batch.flags, inputs))
        out, prompt = self._run_step(batch.flags, inputs)
        return PendingStep(list(sched_out.requests), batch, out, prompt)

    def _global(self, tree):
        """Host inputs as arrays over the whole job's mesh (several processes); as they are otherwise."""
        return step_broadcast.to_global(tree, sharding.replicated(self.mesh)) if step_broadcast.is_multi_process() else tree

    def _run_logits(self, flags: StepFlags, inputs: tuple) -> tuple:
        fn = self._compiled(flags, "logits")
        with self._mesh_context():
            logits, prompt, self.kv_caches = fn(self.params, self.kv_caches, self.token_buffer, *self._global(inputs))
        return logits, prompt

    def _run_sample(self, flags: StepFlags, logits, sampling: dict, dst_slots) -> tuple:
        fn = self._compiled(flags, "sample")
        smd, dst_slots = self._global((SamplingMetadata(**sampling), dst_slots))
        with self._mesh_context():
            outputs, self.token_buffer = fn(logits, self.token_buffer, smd, dst_slots)
        return outputs

    def _run_step(self, flags: StepFlags, inputs: tuple) -> tuple:
        """One compiled step over the pool (updated in place); its outputs stay on the device."""
        fn = self.precompiler.get(inputs) if self.precompiler is not None else None  # this bucket's executable
        if fn is None:
            fn = self._compiled(flags)
        cached, started = fn._cache_size() if hasattr(fn, "_cache_size") else 0, time.perf_counter()
        with self._mesh_context():
            out, prompt, self.kv_caches, self.token_buffer = fn(self.params, self.kv_caches, self.token_buffer,
                                                                *self._global(inputs))
        if hasattr(fn, "_cache_size") and fn._cache_size() > cached:  # this bucket was built just now
            logger.info(
                "Built the step for %d tokens in %.2f s (%d compilations so far, %.1f s in total)",
                inputs[0].num_tokens, time.perf_counter() - started, compile_counter.num_compilations(),
                compile_counter.seconds_building(),
            )
        return out, prompt

    def follow(self) -> None:
        """Processes other than 0: run the steps and page copies process 0 sends, until it stops."""
        logits = None  # a split step's first half, waiting for its second
        while True:
            message = step_broadcast.receive()
            kind = message[0]
            if kind == step_broadcast.STOP:
                return
            if kind == step_broadcast.COPY:
                self._copy_blocks(message[1])
            elif kind == step_broadcast.LOGITS:
                logits, _ = self._run_logits(message[1], message[2])
            elif kind == step_broadcast.SAMPLE:
                jax.block_until_ready(self._run_sample(message[1], logits, message[2], message[3]))
                logits = None
            else:
                jax.block_until_ready(self._run_step(message[1], message[2]))  # keep pace with process 0

    def stop_followers(self) -> None:
        """Process 0: let the other processes' `follow` return (once; later calls do nothing)."""
        if step_broadcast.is_multi_process() and step_broadcast.is_leader() and not getattr(self, "_stopped", False):
            self._stopped = True
            step_broadcast.send((step_broadcast.STOP,))

    def _copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy pool pages src -> dst in every layer (copy-on-write of shared pages), padded to a bucket."""
        if step_broadcast.is_leader():
            step_broadcast.send((step_broadcast.COPY, pairs))
        n = bucket_for(len(pairs), self.decode_buckets)
        src = np.zeros(n, np.int32)
        dst = np.zeros(n, np.int32)  # padding copies the null page onto itself
        src[: len(pairs)], dst[: len(pairs)] = zip(*pairs)
        if self._copy_fn is None:
            def copy(kv_caches, src, dst):  # float8 pools: the layer's scales ride along unchanged
                return [(k.at[:, dst].set(k[:, src]), v.at[:, dst].set(v[:, src]), *scales)
                        for k, v, *scales in kv_caches]

            self._copy_fn = jax.jit(copy, donate_argnums=(0,))
        with self._mesh_context():
            self.kv_caches = self._copy_fn(self.kv_caches, *self._global((src, dst)))

    def _mesh_context(self):
        """Trace under the mesh when it splits devices, so the kernel is wrapped in shard_map."""
        return jax.set_mesh(self.mesh) if self.tp > 1 else contextlib.nullcontext()

    def complete(self, pending: PendingStep) -> None:
        """Run a split step's sampling half: fill its rows' token masks from their matchers (which have
        now seen every earlier token), then sample. Nothing to do for a whole step."""
        if pending.logits is None:
            return
        batch, logits = pending.batch, pending.logits
        pending.logits = self._split = None  # settled, whether or not the sampling below succeeds
        fill_token_bitmask(pending.requests, batch.sampling["token_bitmask"])
        step_broadcast.send((step_broadcast.SAMPLE, batch.flags, batch.sampling, batch.token_dst_slots))
        pending.outputs = self._run_sample(batch.flags, logits, batch.sampling, batch.token_dst_slots)

    def collect(self, pending: PendingStep) -> ModelRunnerOutput:
        """Wait for a dispatched step and bring its results to the host (one transfer)."""
        self.complete(pending)
        (packed, top_ids, top_lp), prompt = step_broadcast.fetch((pending.outputs, pending.prompt))
        n = pending.batch.num_seqs
        return ModelRunnerOutput(
            sampled_token_ids=packed[0, :n].astype(np.int64).tolist(),
            logprobs=packed[1, :n],
            ranks=packed[2, :n].astype(np.int64),
            top_ids=top_ids[:n] if top_ids is not None else None,
            top_logprobs=top_lp[:n] if top_lp is not None else None,
            prompt_logprobs=self._split_prompt_logprobs(pending.requests, pending.batch, prompt),
            finite=packed[3, :n] > 0.5,
        )

    def execute(self, sched_out, block_manager) -> ModelRunnerOutput:
        return self.collect(self.dispatch(sched_out, block_manager))

    @staticmethod
    def _split_prompt_logprobs(requests, batch: InputBatch, prompt) -> dict[str, PromptLogprobs]:
        if prompt is None:
            return {}
        lp, ranks, top_ids, top_lp = prompt
        result = {}
        for r, (start, _) in zip(requests, batch.prompt_spans):
            if r.wants_prompt_logprobs:
                sl = slice(start, start + r.num_prompt_tokens - 1)
                result[r.request_id] = PromptLogprobs(lp[sl], ranks[sl], top_ids[sl], top_lp[sl])
        return result
