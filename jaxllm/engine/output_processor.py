"""After each step: append tokens, detokenize, apply stop rules, and build `RequestOutput`s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxllm.engine.request import Request, RequestStatus
from jaxllm.outputs import CompletionOutput, Logprob, RequestOutput
from jaxllm.sampling_params import RequestOutputKind
from jaxllm.tokenizer import check_stop_strings, visible_length


@dataclass(eq=False)
class RequestGroup:
    """A user request: one prompt, `n` (or `best_of`) sequences sampled from it."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sampling_params: Any
    sequences: list[Request] = field(default_factory=list)
    prompt_logprobs: list[dict | None] | None = None
    final_sent: bool = False
    beam: Any = None  # BeamState for a beam search

    @property
    def finished(self) -> bool:
        seqs = self.sequences
        return seqs[0].is_finished if len(seqs) == 1 else all(s.is_finished for s in seqs)


class OutputProcessor:
    def __init__(self, tokenizer: Any, max_model_len: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._decoded: dict[int, str] = {}

    def decode_token(self, token_id: int) -> str:
        text = self._decoded.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id]) if self.tokenizer is not None else ""
            self._decoded[token_id] = text
        return text

    def _logprob_dict(self, token: int, lp: float, rank: int, top_ids, top_lps, k: int) -> dict[int, Logprob]:
        entry = {token: Logprob(float(lp), int(rank), self.decode_token(token))}
        for r in range(k):
            t = int(top_ids[r])
            if t not in entry:
                entry[t] = Logprob(float(top_lps[r]), r + 1, self.decode_token(t))
        return entry

    def set_prompt_logprobs(self, group: RequestGroup, plp) -> None:
        k = group.sampling_params.prompt_logprobs
        prompt = group.prompt_token_ids
        result: list[dict | None] = [None]
        for j in range(1, len(prompt)):
            i = j - 1
            result.append(self._logprob_dict(prompt[j], plp.logprobs[i], plp.ranks[i], plp.top_ids[i], plp.top_logprobs[i], k))
        group.prompt_logprobs = result
        for seq in group.sequences:
            seq.prompt_logprobs = result

    def plain_checks(self, seq: Request) -> tuple[frozenset, int, bool] | bool:
        """(tokens that stop `seq`, output length at which it ends, report every step) when a new token
        needs nothing beyond those checks (no logprobs or prompt logprobs, stop strings, streamed text, grammar, beam or
        min_tokens), else False: `append_token` then handles every token."""
        p = seq.sampling_params
        if (p.logprobs is not None or p.prompt_logprobs is not None or p.min_tokens > 0 or seq.beam is not None
                or seq.structured_output is not None or (seq.detokenizer is not None and not seq.detokenize_at_end)):
            return False
        stops = frozenset(p.stop_token_ids or ()) | (frozenset() if p.ignore_eos else frozenset(seq.eos_token_ids))
        limit = min(seq.max_tokens, self.max_model_len - seq.num_prompt_tokens)
        return stops, limit, p.output_kind is not RequestOutputKind.FINAL_ONLY

    def append_token(self, seq: Request, token: int, lp: float, rank: int, top_ids, top_lps) -> None:
        """Add one sampled token to `seq` and finish it if a stop rule fires."""
        p = seq.sampling_params
        seq.output_token_ids.append(token)
        seq.cumulative_logprob += float(lp)
        if p.logprobs is not None:
            seq.logprobs.append(self._logprob_dict(token, lp, rank, top_ids, top_lps, p.logprobs))
        n_out = len(seq.output_token_ids)
        can_stop = n_out >= p.min_tokens
        stopped_by_token = False
        if can_stop and not p.ignore_eos and token in seq.eos_token_ids:
            seq.status, seq.stop_reason, stopped_by_token = RequestStatus.FINISHED_STOPPED, None, True
        elif can_stop and token in (p.stop_token_ids or ()):
            seq.status, seq.stop_reason, stopped_by_token = RequestStatus.FINISHED_STOPPED, token, True
        if seq.detokenize_at_end:
            pass
        elif seq.detokenizer is not None and (not stopped_by_token or p.include_stop_str_in_output):
            delta = seq.detokenizer.add_tokens([token])
            seq.output_text += delta
            if p.stop and can_stop and not seq.is_finished:
                text, matched = check_stop_strings(seq.output_text, len(delta), p.stop, p.include_stop_str_in_output)
                if matched is not None:
                    seq.output_text = text
                    seq.status, seq.stop_reason = RequestStatus.FINISHED_STOPPED, matched
        grammar = seq.structured_output
        if grammar is not None and not seq.is_finished and (not grammar.accept(token) or grammar.is_terminated):
            seq.status = RequestStatus.FINISHED_STOPPED  # the grammar ended (its end token even with ignore_eos)
        if not seq.is_finished and (n_out >= seq.max_tokens or seq.num_prompt_tokens + n_out >= self.max_model_len):
            seq.status = RequestStatus.FINISHED_LENGTH
        if seq.is_finished and seq.detokenize_at_end:
            stop_hidden = stopped_by_token and not p.include_stop_str_in_output
            seq.output_text += seq.detokenizer.add_tokens(seq.output_token_ids[:-1] if stop_hidden else seq.output_token_ids)
        if seq.is_finished and seq.detokenizer is not None and seq.status is not RequestStatus.FINISHED_STOPPED:
            seq.output_text += seq.detokenizer.flush()  # a character cut short by the length limit

    @staticmethod
    def settle_text(seq: Request) -> None:
        """The text of a sequence that decodes at its end but ended another way (an error)."""
        if seq.detokenize_at_end and seq.detokenizer is not None and not seq.detokenizer.output_token_ids:
            seq.output_text += seq.detokenizer.add_tokens(seq.output_token_ids) + seq.detokenizer.flush()

    def _completion(self, seq: Request, index: int, delta_from: tuple[int, int] | None) -> CompletionOutput:
        p = seq.sampling_params
        # while running, hold back the tail that may be the start of a stop string
        end = visible_length(len(seq.output_text), p.output_text_buffer_length, seq.is_finished)
        token_ids = seq.output_token_ids
        logprobs = seq.logprobs
        if delta_from is None:
            text = seq.output_text[:end]
        else:  # only the new part is sliced: a long text is not copied at every step
            text_start, tok_start = delta_from
            text, token_ids = seq.output_text[text_start:end], token_ids[tok_start:]
            logprobs = logprobs[tok_start:] if logprobs is not None else None
        finish = seq.status.value if seq.is_finished else None
        return CompletionOutput(
            index=index,
            text=text,
            token_ids=list(token_ids),
            cumulative_logprob=seq.cumulative_logprob if p.logprobs is not None else None,
            logprobs=list(logprobs) if logprobs is not None else None,
            finish_reason=finish,
            stop_reason=seq.stop_reason if seq.status is RequestStatus.FINISHED_STOPPED else None,
        )

    def _beam_output(self, group: RequestGroup) -> RequestOutput | None:
        """A finished beam search: its best beams, best first, as completions."""
        state = group.beam
        if not state.done or group.final_sent:
            return None
        group.final_sent = True
        outputs = []
        if state.error is not None:
            outputs.append(CompletionOutput(index=0, text="", token_ids=[], cumulative_logprob=None, logprobs=None,
                                            finish_reason="error"))
        for i, hyp in enumerate(state.best() if state.error is None else []):
            ids = hyp.token_ids
            shown = ids[:-1] if hyp.finish_reason == "stop" and not state.params.include_stop_str_in_output else ids
            text = self.tokenizer.decode(shown, skip_special_tokens=True) if self.tokenizer is not None else ""
            outputs.append(CompletionOutput(
                index=i, text=text, token_ids=list(ids), cumulative_logprob=hyp.cum_logprob,
                logprobs=hyp.logprobs, finish_reason=hyp.finish_reason,
            ))
        return RequestOutput(
            request_id=group.request_id, prompt=group.prompt, prompt_token_ids=group.prompt_token_ids,
            prompt_logprobs=None, outputs=outputs, finished=True, num_cached_tokens=0,
        )

    def make_output(self, group: RequestGroup, cursors: dict | None = None) -> RequestOutput | None:
        """The group's output now, honouring `output_kind`; None if nothing should be sent."""
        if group.beam is not None:
            return self._beam_output(group)
        p = group.sampling_params
        finished = group.finished
        if p.output_kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        if finished and group.final_sent:
            return None
        seqs = group.sequences
        n = p.n
        if len(seqs) > n:  # best_of: keep the n most likely
            if not finished:
                return None
            seqs = sorted(seqs, key=lambda s: s.cumulative_logprob, reverse=True)[:n]
        delta = p.output_kind == RequestOutputKind.DELTA and cursors is not None
        outputs = []
        for i, seq in enumerate(seqs):
            start = cursors.get(seq.request_id, (0, 0)) if delta else None
            out = self._completion(seq, i if len(group.sequences) > n else seq.index, start)
            if delta:
                cursors[seq.request_id] = (start[0] + len(out.text), start[1] + len(out.token_ids))
            outputs.append(out)
        group.final_sent = finished
        return RequestOutput(
            request_id=group.request_id,
            prompt=group.prompt,
            prompt_token_ids=group.prompt_token_ids,
            prompt_logprobs=group.prompt_logprobs,
            outputs=outputs,
            finished=finished,
            num_cached_tokens=group.sequences[0].num_cached_tokens if group.sequences else 0,
        )
