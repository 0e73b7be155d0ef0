"""Beam search: exact against exhaustive search and transformers; beams share prompt pages."""

import itertools

import numpy as np
import pytest
import torch

from jaxllm import LLM, BeamSearchParams
from tests.tiny_models import make_tiny_model

PROMPT = list(range(5, 15))


@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
def test_matches_transformers_beam_search(tiny_models, length_penalty):
    path, model = tiny_models["LlamaForCausalLM"]
    width, new = 3, 6
    ref = model.generate(
        torch.tensor([PROMPT]), num_beams=width, num_return_sequences=width, do_sample=False, max_new_tokens=new,
        length_penalty=length_penalty, eos_token_id=None, pad_token_id=0, output_scores=True,
        return_dict_in_generate=True,
    )
    llm = LLM(path, max_model_len=64, max_num_seqs=8)
    out = llm.beam_search([{"prompt_token_ids": PROMPT}],
                          BeamSearchParams(beam_width=width, max_tokens=new, ignore_eos=True,
                                           length_penalty=length_penalty))[0]
    assert [s.tokens for s in out.sequences] == ref.sequences.tolist()
    # transformers divides by the generated length ** length_penalty: the same convention as ours.
    ours = [s.cum_logprob / new**length_penalty for s in out.sequences]
    np.testing.assert_allclose(ours, ref.sequences_scores.numpy(), rtol=1e-4)
    assert all(len(s.logprobs) == new for s in out.sequences)
    assert out.sequences[0].text == llm.get_tokenizer().decode(out.sequences[0].tokens, skip_special_tokens=True)


def test_equals_exhaustive_search_on_a_three_token_vocabulary(tmp_path):
    make_tiny_model(str(tmp_path), "LlamaForCausalLM", vocab_size=3, seed=7)
    llm = LLM(str(tmp_path), max_model_len=32, skip_tokenizer_init=True)
    prompt = [0, 1, 2, 1, 0]
    width, new = 9, 3  # 9 >= 3 ** 2: every prefix survives, so the search is exhaustive
    out = llm.beam_search([{"prompt_token_ids": prompt}],
                          BeamSearchParams(beam_width=width, max_tokens=new, ignore_eos=True))[0]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path)).float().eval()
    scores = {}
    for cont in itertools.product(range(3), repeat=new):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + list(cont)])).logits[0]
        lp = torch.log_softmax(logits, -1)
        scores[cont] = sum(lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(cont))
    best = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:width]
    assert [tuple(s.tokens[len(prompt):]) for s in out.sequences] == [c for c, _ in best]
    np.testing.assert_allclose([s.cum_logprob for s in out.sequences], [v for _, v in best], rtol=1e-4)


def test_beams_share_prompt_pages_and_free_everything(tiny_models):
    path, _ = tiny_models["LlamaForCausalLM"]
    llm = LLM(path, max_model_len=96, max_num_seqs=8, block_size=4)
    engine, bm = llm.llm_engine, llm.llm_engine.block_manager
    prompt = list(range(5, 45))  # 40 tokens = 10 pages
    engine.add_beam_request("b", {"prompt_token_ids": prompt}, BeamSearchParams(beam_width=4, max_tokens=6,
                                                                                  ignore_eos=True))
    peak, done = 0, []
    while engine.has_unfinished_requests():
        done += engine.step()
        peak = max(peak, bm.num_blocks - 1 - bm.num_free_blocks)
    # Unshared, 4 beams of 46 tokens would need 4 * 12 = 48 pages; shared, the prompt is held once.
    assert peak <= 10 + 4 * 2
    assert bm.num_free_blocks == bm.num_blocks - 1 and sum(bm.ref_counts[1:]) == 0
    assert len(done) == 1 and len(done[0].outputs) == 4


def test_eos_finishes_a_beam_and_errors_are_value_errors(tiny_models):
    path, _ = tiny_models["LlamaForCausalLM"]
    llm = LLM(path, max_model_len=64, max_num_seqs=8)
    base = llm.beam_search([{"prompt_token_ids": PROMPT}], BeamSearchParams(beam_width=2, max_tokens=4,
                                                                             ignore_eos=True))[0]
    # Make the best beam's second token the EOS: that beam now ends there with finish_reason "stop".
    eos = base.sequences[0].tokens[len(PROMPT) + 1]
    llm.llm_engine.eos_token_ids = frozenset([eos])
    out = llm.beam_search([{"prompt_token_ids": PROMPT}], BeamSearchParams(beam_width=2, max_tokens=4))[0]
    stopped = [s for s in out.sequences if s.finish_reason == "stop"]
    assert stopped and all(s.tokens[-1] == eos for s in stopped)
    with pytest.raises(ValueError, match="beam_width"):
        llm.beam_search(["hello"], BeamSearchParams(beam_width=11, max_tokens=4))
    with pytest.raises(ValueError):
        BeamSearchParams(beam_width=0, max_tokens=4)
