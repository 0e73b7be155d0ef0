"""The embedded default model through jaxllm: the default of LLM(), and greedy tokens equal transformers'."""

import pytest
import torch

import jaxllm
from jaxllm import LLM, SamplingParams

PROMPTS = ['def fibonacci(n):\n    """Return the', "import os\n\n\ndef ", "class Stack:\n    def push(self, item):"]


@pytest.fixture(scope="module")
def llm():
    return LLM(max_model_len=256, max_num_seqs=4)


def test_llm_without_a_model_uses_the_embedded_one(llm):
    assert llm.model_config.path == jaxllm.default_model_path()


def test_greedy_tokens_equal_transformers(llm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(jaxllm.default_model_path(), dtype=torch.float32).eval()
    tok = llm.get_tokenizer()
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        ids = tok(prompt).input_ids
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24, eos_token_id=None,
                                 pad_token_id=0)[0, len(ids):].tolist()
        assert out.outputs[0].token_ids == ref, prompt
