"""`LLM.chat`: the tokenizer's chat template, no special tokens added twice, template errors as ValueError."""

import shutil

import pytest

from jaxllm import LLM, SamplingParams

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello."},
]


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, max_model_len=128, max_num_seqs=4)


def test_chat_renders_the_template_once_and_generates(llm):
    tok = llm.get_tokenizer()
    out = llm.chat(CONVERSATION, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)[0]
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert out.prompt == text and text.endswith("<s>assistant\n")
    assert out.prompt_token_ids == tok(text, add_special_tokens=False).input_ids
    assert out.prompt_token_ids.count(tok.bos_token_id) == text.count("<s>")  # no extra BOS
    same = llm.generate({"prompt_token_ids": out.prompt_token_ids},
                        SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == same.outputs[0].token_ids


def test_chat_takes_a_batch_of_conversations_and_content_parts(llm):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]}]
    outs = llm.chat([CONVERSATION, parts], SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert len(outs) == 2 and "Say\nhello." in outs[1].prompt


def test_chat_argument_errors(llm):
    with pytest.raises(ValueError, match="cannot both be true"):
        llm.chat(CONVERSATION, continue_final_message=True, use_tqdm=False)
    with pytest.raises(ValueError, match="role"):
        llm.chat([{"content": "no role"}], use_tqdm=False)


def test_template_that_rejects_system_messages(tiny_model_dir, tmp_path):
    folder = tmp_path / "strict"
    shutil.copytree(tiny_model_dir, folder)
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    llm = LLM(str(folder), max_model_len=64)
    with pytest.raises(ValueError, match="System role not supported"):
        llm.chat(CONVERSATION, chat_template=strict, use_tqdm=False)
    out = llm.chat(CONVERSATION[1:], SamplingParams(max_tokens=2, ignore_eos=True), chat_template=strict, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2
    assert not llm.llm_engine.has_unfinished_requests()
