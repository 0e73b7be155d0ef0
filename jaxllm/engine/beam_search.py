"""Beam search inside the engine: beams are ordinary sequences that share pages copy-on-write.

Each round every live beam of a group runs one decode step that returns its top 2W log-probabilities
(W = beam width). When all of them are in, the group keeps the W best continuations by score; each
new beam forks its parent's pages (reference counts, no recomputation), and a beam that writes into a
page it shares gets a private copy first (`BlockManager.make_writable`).

Score = cum_logprob / generated_len ** length_penalty, where generated_len counts the generated
tokens including a final EOS (the Hugging Face convention; the prompt does not count).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from jaxllm.engine.request import Request, RequestStatus
from jaxllm.outputs import Logprob


def beam_score(cum_logprob: float, generated_len: int, length_penalty: float) -> float:
    try:
        denominator = max(1, generated_len) ** length_penalty
    except OverflowError:  # an extreme length_penalty: the length term dominates
        denominator = math.inf
    if denominator == 0.0:
        return -math.inf if cum_logprob < 0 else 0.0
    return cum_logprob / denominator


@dataclass
class Hypothesis:
    """A finished beam."""

    token_ids: list[int]  # generated tokens
    logprobs: list[dict[int, Logprob]]
    cum_logprob: float
    finish_reason: str  # "stop" (EOS) or "length"
    score: float


@dataclass(eq=False)
class BeamState:
    params: Any  # BeamSearchParams
    eos_token_id: int | None
    max_model_len: int
    completed: list[Hypothesis] = field(default_factory=list)
    results: dict[str, tuple] = field(default_factory=dict)  # beam id -> (top ids, top logprobs) this round
    done: bool = False
    error: str | None = None  # set when a model step of this search failed
    _ids: Any = field(default_factory=itertools.count)

    @property
    def width(self) -> int:
        return self.params.beam_width

    def record(self, beam: Request, top_ids, top_logprobs) -> None:
        self.results[beam.request_id] = (top_ids, top_logprobs)
        beam.on_hold = True  # no further step until the round is complete

    def round_complete(self, live: list[Request]) -> bool:
        return all(b.request_id in self.results for b in live)

    def hypothesis(self, beam: Request, finish_reason: str) -> Hypothesis:
        n = len(beam.output_token_ids)
        return Hypothesis(
            list(beam.output_token_ids), list(beam.logprobs), beam.cumulative_logprob, finish_reason,
            beam_score(beam.cumulative_logprob, n, self.params.length_penalty),
        )

    def expand(self, live: list[Request], group_id: str, decode) -> list[Request]:
        """The next round's beams (children not yet holding pages), recording finished hypotheses."""
        p = self.params
        candidates = []
        for parent in live:
            ids, lps = self.results.pop(parent.request_id)
            n_new = len(parent.output_token_ids) + 1
            for rank, (tok, lp) in enumerate(zip(ids[: 2 * self.width], lps[: 2 * self.width]), start=1):
                tok, lp = int(tok), float(lp)
                cum = parent.cumulative_logprob + lp
                entry = {tok: Logprob(lp, rank, decode(tok))}
                if tok == self.eos_token_id and not p.ignore_eos:
                    self.completed.append(Hypothesis(
                        parent.output_token_ids + [tok], parent.logprobs + [entry], cum, "stop",
                        beam_score(cum, n_new, p.length_penalty),
                    ))
                else:
                    candidates.append((beam_score(cum, n_new, p.length_penalty), parent, tok, cum, entry))
        candidates.sort(key=lambda c: c[0], reverse=True)
        children = []
        for index, (_, parent, tok, cum, entry) in enumerate(candidates[: self.width]):
            child = Request(
                request_id=f"{group_id}-beam{next(self._ids)}",
                prompt_token_ids=parent.prompt_token_ids,
                sampling_params=parent.sampling_params,
                seed=0,
                eos_token_ids=parent.eos_token_ids,
                max_tokens=parent.max_tokens,
                parent_id=group_id,
                index=index,
                arrival=parent.arrival,
                status=RequestStatus.RUNNING,
                output_token_ids=parent.output_token_ids + [tok],
                cumulative_logprob=cum,
                logprobs=parent.logprobs + [entry],
                beam=self,
            )
            child.fork_from = parent
            children.append(child)
        return children

    def finished_after(self, children: list[Request]) -> bool:
        if not children:
            return True
        n = len(children[0].output_token_ids)
        return n >= self.params.max_tokens or children[0].num_prompt_tokens + n >= self.max_model_len

    def best(self) -> list[Hypothesis]:
        return sorted(self.completed, key=lambda h: h.score, reverse=True)[: self.width]


def advance_beams(group: Any, scheduler: Any, decode) -> None:
    """Once every live beam of `group` (a RequestGroup) has its candidates, replace the beams by the best
    children: those whose parent still holds its pages share them, the others recompute."""
    state = group.beam
    live = [s for s in group.sequences if not s.is_finished]
    if not state.round_complete(live):
        return
    block_manager = scheduler.block_manager
    children = state.expand(live, group.request_id, decode)
    resident, recompute = [], []
    for child in children:
        if child.fork_from.block_ids:  # share the parent's pages
            block_manager.fork(child.fork_from, child)
            child.num_computed_tokens = child.fork_from.num_tokens
            resident.append(child)
        else:  # the parent gave its pages up while it waited: recompute (the prefix cache may help)
            recompute.append(child)
        del child.fork_from
    for parent in live:
        parent.status = RequestStatus.FINISHED_STOPPED
        scheduler.remove(parent)
    if state.finished_after(children):
        state.completed.extend(state.hypothesis(c, "length") for c in children)
        for child in children:
            block_manager.free(child)
            child.status = RequestStatus.FINISHED_LENGTH
        state.done = True
    else:
        scheduler.running.extend(resident)
        for child in recompute:
            scheduler.add(child)
    group.sequences = children


def fail_beam_group(group: Any, scheduler: Any, error: str | None) -> None:
    """End every beam of `group` (a RequestGroup, or None) with `error`."""
    if group is None:
        return
    for beam in group.sequences:
        if not beam.is_finished:
            scheduler.remove(beam)
            beam.status = RequestStatus.FINISHED_ERROR
    group.beam.done, group.beam.error = True, error or "model step failed"
