"""LLMEngine: requests in, `RequestOutput`s out, one `step()` at a time.

    step():  Scheduler.schedule() -> runner.execute() -> OutputProcessor.append_token() -> outputs

Plain Python: the runner is handed in (anything with `execute(scheduler_output, block_manager)` and
`model_config`), so the engine never imports jax and can be tested with a fake runner.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from typing import Any

from jaxllm.config import CacheConfig, ModelConfig, SchedulerConfig
from jaxllm.engine.beam_search import BeamState, advance_beams, fail_beam_group
from jaxllm.engine.block_manager import BlockManager
from jaxllm.engine.input_processor import InputProcessor
from jaxllm.engine.output_processor import OutputProcessor, RequestGroup
from jaxllm.engine.request import Request, RequestStatus
from jaxllm.engine.scheduler import Scheduler, SchedulerOutput
from jaxllm.outputs import RequestOutput
from jaxllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams
from jaxllm.tokenizer import IncrementalDetokenizer

logger = logging.getLogger(__name__)

class LLMEngine:
    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        scheduler_config: SchedulerConfig,
        tokenizer: Any,
        runner: Any,
        generation_config: dict | None = None,
        seed: int | None = 0,
        max_logprobs: int = 20,
    ):
        self.max_logprobs = max_logprobs
        self.model_config = model_config
        self.scheduler_config = scheduler_config
        self.tokenizer = tokenizer
        self.input_processor = InputProcessor(tokenizer, model_config.vocab_size)
        self.runner = runner
        self.generation_config = generation_config or {}
        self.block_manager = BlockManager(
            cache_config.num_blocks, cache_config.block_size, cache_config.enable_prefix_caching
        )
        self.scheduler = Scheduler(scheduler_config, self.block_manager)
        self.output_processor = OutputProcessor(tokenizer, scheduler_config.max_model_len)
        self._rng = random.Random(seed)
        self._groups: dict[str, RequestGroup] = {}
        self._arrival = itertools.count()
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_ids = frozenset([eos] if eos is not None else model_config.eos_token_ids)
        self.stats = {"prompt_tokens": 0, "generation_tokens": 0, "preemptions": 0, "steps_waited": 0}
        # Overlap host and device when the runner can start a step without waiting for it.
        self._can_overlap = (
            scheduler_config.async_scheduling and hasattr(runner, "dispatch") and hasattr(runner, "collect")
        )
        self._inflight: tuple[SchedulerOutput, Any] | None = None
        self._busy = False  # a step ran and more work remained: a step that cannot overlap it waited
        self._grammars: Any = None  # GrammarCompiler, built at the first constrained request
        self._grammars_lock = threading.Lock()

    # ---- requests in ---------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: Any, params: SamplingParams | None = None) -> None:
        """Queue a request. Raises ValueError (and queues nothing) if the prompt or params are invalid."""
        if request_id in self._groups:
            raise ValueError(f"Request id {request_id!r} is already in use.")
        params = (params or SamplingParams()).clone()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params must be SamplingParams, got {type(params).__name__}.")
        text, ids = self.input_processor.tokenize_prompt(prompt)
        if params.truncate_prompt_tokens is not None and params.truncate_prompt_tokens > 0:
            ids = ids[-params.truncate_prompt_tokens :]
        max_len = self.scheduler_config.max_model_len
        if not ids:
            raise ValueError("The decoder prompt cannot be empty.")
        if len(ids) > max_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of {max_len}. "
                "Make sure that `max_model_len` is no smaller than the number of text tokens."
            )
        params.verify(max_logprobs=self.max_logprobs, vocab_size=self.model_config.vocab_size)
        params.update_from_generation_config(self.generation_config, next(iter(self.eos_token_ids), None))
        budget = max_len - len(ids)
        max_tokens = budget if params.max_tokens is None else min(params.max_tokens, max(1, budget))
        bad_words_ids = self.input_processor.bad_words_ids(params.bad_words)
        grammar = self.compile_grammar(params.structured_outputs) if params.structured_outputs else None
        group = RequestGroup(request_id, text, ids, params)
        for i in range(params.best_of or params.n):
            seed = params.seed + i if params.seed is not None else self._rng.getrandbits(63)
            seq = Request(
                request_id=f"{request_id}-{i}",
                prompt_token_ids=ids,
                sampling_params=params,
                seed=seed,
                eos_token_ids=self.eos_token_ids,
                max_tokens=max_tokens,
                parent_id=request_id,
                index=i,
                arrival=next(self._arrival),
                logprobs=[] if params.logprobs is not None else None,
            )
            seq.bad_words_ids = bad_words_ids
            if grammar is not None:
                seq.structured_output = self._grammars.matcher_for(grammar)
            if params.detokenize and self.tokenizer is not None:
                seq.detokenizer = IncrementalDetokenizer(
                    self.tokenizer, ids, params.skip_special_tokens, params.spaces_between_special_tokens
                )
                # Nobody sees the text before the end and no stop string needs it: decode once then.
                seq.detokenize_at_end = params.output_kind is RequestOutputKind.FINAL_ONLY and not params.stop
            group.sequences.append(seq)
        self._groups[request_id] = group
        for seq in group.sequences:
            self.scheduler.add(seq)

    def add_beam_request(self, request_id: str, prompt: Any, params: BeamSearchParams) -> None:
        """Queue a beam search over `prompt`; its one output (when finished) holds the best beams."""
        if request_id in self._groups:
            raise ValueError(f"Request id {request_id!r} is already in use.")
        if not isinstance(params, BeamSearchParams):
            raise ValueError(f"params must be BeamSearchParams, got {type(params).__name__}.")
        if self.max_logprobs >= 0 and 2 * params.beam_width > self.max_logprobs:
            raise ValueError(
                f"beam_width ({params.beam_width}) needs {2 * params.beam_width} log-probabilities per step, "
                f"more than max_logprobs ({self.max_logprobs}); raise max_logprobs or lower beam_width."
            )
        text, ids = self.input_processor.tokenize_prompt(prompt)
        max_len = self.scheduler_config.max_model_len
        if not ids or len(ids) >= max_len:
            raise ValueError(
                f"The beam search prompt must have 1 to {max_len - 1} tokens (max_model_len={max_len}), got {len(ids)}."
            )
        sampling = SamplingParams(
            temperature=0.0, max_tokens=params.max_tokens, ignore_eos=True, logprobs=2 * params.beam_width,
            detokenize=False, include_stop_str_in_output=params.include_stop_str_in_output,
        )
        state = BeamState(params, next(iter(self.eos_token_ids), None), max_len)
        root = Request(
            request_id=f"{request_id}-beam", prompt_token_ids=ids, sampling_params=sampling, seed=0,
            eos_token_ids=self.eos_token_ids, max_tokens=params.max_tokens, parent_id=request_id,
            arrival=next(self._arrival), logprobs=[], beam=state,
        )
        group = RequestGroup(request_id, text, ids, sampling, sequences=[root], beam=state)
        self._groups[request_id] = group
        self.scheduler.add(root)

    def _fail(self, seq: Request, error: str) -> None:
        logger.error("Request %s failed: %s", seq.request_id, error)
        seq.status, seq.error, seq.num_pending = RequestStatus.FINISHED_ERROR, error, 0
        self.output_processor.settle_text(seq)
        self.scheduler.remove(seq)
        if seq.beam is not None and not seq.beam.done:
            fail_beam_group(self._groups.get(seq.parent_id), self.scheduler, error)

    def compile_grammar(self, structured_outputs: Any) -> Any:
        """Compile (and cache) a request's grammar; ValueError if it is invalid. Safe from any thread."""
        return self._grammar_compiler().compile(structured_outputs)

    def _grammar_compiler(self) -> Any:
        with self._grammars_lock:
            if self._grammars is None:
                from jaxllm.structured_output.grammar_compiler import GrammarCompiler

                self._grammars = GrammarCompiler(self.tokenizer, self.model_config.vocab_size, list(self.eos_token_ids))
            return self._grammars

    def abort_request(self, request_ids: str | list[str]) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            group = self._groups.pop(rid, None)
            if group is None:
                continue
            for seq in group.sequences:
                if not seq.is_finished:
                    self.scheduler.remove(seq)
                    seq.status = RequestStatus.FINISHED_ABORTED

    # ---- the step ------------------------------------------------------------------------------

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or self._inflight is not None

    def get_num_unfinished_requests(self) -> int:
        return len(self._groups)

    def step(self, cursors: dict | None = None) -> list[RequestOutput]:
        """Finish one model step and return the outputs of the requests it touched.

        With a runner that can `dispatch` without waiting, the next step is planned and put on the
        device before this one's results are read back, so the host's work overlaps the device's:
        rows whose newest token is still being sampled read it on the device. A step that had to wait
        for the previous one's results is counted in `stats["steps_waited"]`.
        """
        if self._inflight is None:
            sched = self.scheduler.schedule()
            self.stats["preemptions"] += len(sched.preempted)
            if not sched:
                self._busy = False
                return []
            if self._busy and self._can_overlap:
                self.stats["steps_waited"] += 1
            self._busy = True
            self._inflight = self._dispatch(sched)
        current, self._inflight = self._inflight, None
        if not isinstance(current[1], Exception):  # a failed step is retried before anything follows it
            self._inflight = self._dispatch_next(current[0])
        outputs = self._process(*current, cursors)
        if self._inflight is not None and not isinstance(self._inflight[1], Exception):
            try:  # a split step samples now that the matchers have seen this step's tokens
                self.runner.complete(self._inflight[1])
            except Exception as err:
                self._inflight = (self._inflight[0], err)
        if self._inflight is None and not self.scheduler.has_unfinished():
            self._busy = False
        return outputs

    def _dispatch(self, sched: SchedulerOutput) -> tuple[SchedulerOutput, Any]:
        """Start `sched` and advance its rows as if it had run: the tokens it computes count as
        computed, and each row that reaches its newest token has one more token pending."""
        try:  # the runner reads each sequence's num_new_tokens, set by the scheduler (or `_recover`)
            if self._can_overlap:
                handle = self.runner.dispatch(sched, self.block_manager)
            else:
                handle = self.runner.execute(sched, self.block_manager)
        except Exception as err:  # a failed step fails its sequences, never the engine
            handle = err
        samples, computed, last = [], [], []
        max_len = self.scheduler_config.max_model_len
        for seq, n in zip(sched.requests, sched.num_new):
            done = seq.num_computed_tokens + n
            seq.num_computed_tokens = done
            # The row's last token is its newest: it samples the next one.
            known = len(seq.prompt_token_ids) + len(seq.output_token_ids)
            new = done >= known + seq.num_pending
            if new:
                seq.num_pending += 1
                n_out = known - len(seq.prompt_token_ids) + seq.num_pending
                if n_out >= seq.max_tokens or known + seq.num_pending >= max_len:
                    last.append(seq)  # this step gives it its last token (max_tokens or max_model_len)
            samples.append(new)
            computed.append(done)
        sched.samples, sched.computed, sched.finishing = samples, computed, last
        return sched, handle

    def _rollback(self, sched: SchedulerOutput) -> None:
        """Undo `_dispatch`'s advance for a step whose results will never be used."""
        for seq, n, new in zip(sched.requests, sched.num_new, sched.samples):
            if seq.is_finished:
                continue
            seq.num_computed_tokens = max(0, seq.num_computed_tokens - n)
            if new:
                seq.num_pending = max(0, seq.num_pending - 1)

    def _dispatch_next(self, current: SchedulerOutput) -> tuple[SchedulerOutput, Any] | None:
        """Plan and launch the step after `current` while `current` is still running, when that is safe."""
        if not self._can_overlap:
            return None
        # Sampling that reads a sequence's own outputs on the host waits for them.
        if any(s.host_tokens_until != 0 and s.needs_host_tokens() for s in self.scheduler.running):
            return None
        sched = self.scheduler.schedule(overlap=True, exclude=set(current.finishing))
        return self._dispatch(sched) if sched else None

    def _process(self, sched: SchedulerOutput, handle: Any, cursors: dict | None) -> list[RequestOutput]:
        result = handle
        if self._can_overlap and not isinstance(handle, Exception):
            try:
                result = self.runner.collect(handle)
            except Exception as err:
                result = err
        if isinstance(result, Exception):
            return self._recover(sched, result, cursors)
        if sched.is_prefill:
            self.stats["prompt_tokens"] += sum(
                max(0, min(seq.num_prompt_tokens, done) - (done - n))
                for seq, n, done in zip(sched.requests, sched.num_new, sched.computed)
            )
        bm, op = self.block_manager, self.output_processor
        sampled, lps, ranks = result.sampled_token_ids, result.logprobs.tolist(), result.ranks.tolist()
        finite = result.finite if result.finite is not None and not result.finite.all() else None
        prompt_lps = result.prompt_logprobs
        naming = bm.enable_prefix_caching
        page = bm.block_size
        running = RequestStatus.RUNNING
        beam_groups, reported, generated = [], [], 0
        computed, samples = sched.computed, sched.samples
        checked = finite is None  # every row's logits are finite
        for i, seq in enumerate(sched.requests):
            if naming and computed[i] // page > seq.num_registered_blocks and seq.status is running:
                bm.register_computed(seq, computed[i])
            if not samples[i]:  # a prompt chunk: the prompt goes on later, nothing to report yet
                continue
            seq.num_pending -= 1
            if seq.status is not running:  # finished or aborted while this step was in flight
                continue
            token = sampled[i]
            plain = seq.plain_checks
            if plain is None:
                plain = seq.plain_checks = op.plain_checks(seq)
            if plain and checked and token not in plain[0] and len(seq.output_token_ids) + 1 < plain[1]:
                # The common case, inline: no stop rule can fire on this token.
                seq.output_token_ids.append(token)
                seq.cumulative_logprob += lps[i]
                generated += 1
                if plain[2]:
                    reported.append(seq)
                continue
            if finite is not None and not finite[i]:
                self._fail(seq, "the model produced non-finite logits for this request")
                reported.append(seq)
                continue
            if seq.beam is not None:
                seq.beam.record(seq, result.top_ids[i], result.top_logprobs[i])
                beam_groups.append(self._groups.get(seq.parent_id))
                reported.append(seq)
                continue
            if prompt_lps and seq.request_id in prompt_lps:
                op.set_prompt_logprobs(self._groups[seq.parent_id], prompt_lps[seq.request_id])
            top_ids = result.top_ids[i] if result.top_ids is not None else None
            top_lps = result.top_logprobs[i] if result.top_logprobs is not None else None
            op.append_token(seq, token, lps[i], ranks[i], top_ids, top_lps)
            generated += 1
            if seq.status is not running:
                self.scheduler.remove(seq)
                seq.num_pending = 0
                reported.append(seq)
            elif seq.sampling_params.output_kind is not RequestOutputKind.FINAL_ONLY:
                reported.append(seq)
        self.stats["generation_tokens"] += generated
        for group in dict.fromkeys(g for g in beam_groups if g is not None):
            advance_beams(group, self.scheduler, self.output_processor.decode_token)
        return self._collect(reported, cursors)

    def _recover(self, sched: SchedulerOutput, error: Exception, cursors: dict | None) -> list[RequestOutput]:
        """A step failed: drop the step planned on top of it, then retry its sequences one by one so that
        only the one that breaks the step fails."""
        if self._inflight is not None:
            later, later_handle = self._inflight
            self._inflight = None
            if self._can_overlap and not isinstance(later_handle, Exception):
                try:
                    self.runner.collect(later_handle)
                except Exception:
                    pass
            self._rollback(later)
        self._rollback(sched)
        if len(sched.requests) > 1:
            logger.warning("Model step failed (%s); retrying its %d sequences one by one", error, len(sched.requests))
            outputs = []
            for seq, n in zip(sched.requests, sched.num_new):
                if not seq.is_finished:
                    copies = [c for c in sched.block_copies if c[1] in seq.block_ids]
                    single = SchedulerOutput(sched.is_prefill, [seq], block_copies=copies, num_new=[n])
                    seq.num_new_tokens = n
                    outputs += self._process(*self._dispatch(single), cursors)
            return outputs
        logger.error("Model step failed (%s); finishing its %d sequences with an error", error, len(sched.requests))
        for seq in sched.requests:
            if not seq.is_finished:
                seq.status, seq.error = RequestStatus.FINISHED_ERROR, f"{type(error).__name__}: {error}"
                seq.num_pending = 0
                self.output_processor.settle_text(seq)
                self.scheduler.remove(seq)
            if seq.beam is not None and not seq.beam.done:  # the whole search fails with its step
                fail_beam_group(self._groups.get(seq.parent_id), self.scheduler, seq.error)
        return self._collect(sched.requests, cursors)

    def _collect(self, seqs: list[Request], cursors: dict | None) -> list[RequestOutput]:
        outputs = []
        for parent in dict.fromkeys(s.parent_id for s in seqs):
            group = self._groups.get(parent)
            if group is None:
                continue
            out = self.output_processor.make_output(group, cursors)
            if out is not None:
                outputs.append(out)
            if group.finished:
                del self._groups[parent]
        return outputs
