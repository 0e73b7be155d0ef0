"""The LangChain vLLM tutorials' steps, unchanged but for `from jaxllm.langchain import VLLM`."""

from __future__ import annotations

import gc
import warnings

import pytest

pytest.importorskip("langchain_core")

from langchain_core.prompts import PromptTemplate

from jaxllm import SamplingParams
from jaxllm.langchain import VLLM, JaxLLM

ENGINE = {"max_model_len": 128, "max_num_seqs": 8}
TEMPLATE = """Question: {question}

Answer: Let's think step by step."""
QUESTION = "Who was the US president in the year the first Pokemon game was released?"


@pytest.fixture(scope="module")
def tutorial_llm(tiny_model_dir):
    # the tutorials' first step, with the tiny model's folder for "/input0/Qwen2.5-1.5B-Instruct"
    return VLLM(
        model=tiny_model_dir,
        trust_remote_code=True,  # mandatory for hf models
        max_new_tokens=12,
        top_k=10,
        top_p=0.95,
        temperature=0.8,
        vllm_kwargs=dict(ENGINE),
    )


def test_every_field_of_langchain_community_vllm_is_accepted(tutorial_llm):
    community = pytest.importorskip("langchain_community.llms")
    for name, field in community.VLLM.model_fields.items():
        if name == "client":
            continue
        assert name in VLLM.model_fields or name == "vllm_kwargs", name
        if name in VLLM.model_fields:
            assert VLLM.model_fields[name].default == field.default, name
    assert isinstance(tutorial_llm, JaxLLM) and tutorial_llm._llm_type == "vllm"
    assert tutorial_llm.vllm_kwargs == ENGINE and tutorial_llm.client.scheduler_config.max_model_len == 128


def test_invoke_shows_the_processed_prompts_bar(tutorial_llm, capsys):
    text = tutorial_llm.invoke("What are the most popular Halloween Costumes?")
    assert isinstance(text, str) and text
    err = capsys.readouterr().err
    assert "Processed prompts: 100%" in err and "1/1" in err

    tutorial_llm.batch(["Rome is", "The quick brown fox", "def f("])
    assert "3/3" in capsys.readouterr().err

    tutorial_llm.invoke("Rome is", use_tqdm=False)  # per call, as LLM.generate(use_tqdm=False)
    assert "Processed prompts" not in capsys.readouterr().err
    quiet = VLLM(model=tutorial_llm.model, trust_remote_code=True, vllm_kwargs=dict(ENGINE), use_tqdm=False,
                 max_new_tokens=4)
    assert quiet.client is tutorial_llm.client
    quiet.invoke("Rome is")
    assert "Processed prompts" not in capsys.readouterr().err


def test_bar_matches_llm_generate(tutorial_llm, capsys):
    """The same bar `jaxllm.LLM.generate(use_tqdm=True)` draws: same description, one tick per prompt."""
    ticks = []

    class Bar:
        def __init__(self, **kwargs):
            ticks.append(kwargs)

        def update(self, n):
            ticks.append(n)

        def close(self):
            ticks.append("closed")

    tutorial_llm.batch(["a", "b"], use_tqdm=Bar)
    from_langchain = list(ticks)
    ticks.clear()
    tutorial_llm.client.generate(["a", "b"], SamplingParams(max_tokens=2), use_tqdm=Bar)
    assert from_langchain == ticks == [{"total": 2, "desc": "Processed prompts", "dynamic_ncols": True}, 1, 1, "closed"]


def test_greedy_text_is_what_llm_generate_gives(tutorial_llm):
    prompt = "What are the most popular Halloween Costumes?"
    text = tutorial_llm.invoke(prompt, temperature=0, max_new_tokens=8, ignore_eos=True, use_tqdm=False)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    assert text == tutorial_llm.client.generate(prompt, params, use_tqdm=False)[0].outputs[0].text


def test_llmchain_step(tutorial_llm):
    langchain_classic = pytest.importorskip("langchain_classic.chains")
    prompt = PromptTemplate.from_template(TEMPLATE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LLMChain is deprecated in favour of `prompt | llm`
        result = langchain_classic.LLMChain(prompt=prompt, llm=tutorial_llm).invoke(QUESTION)
    assert result["question"] == QUESTION and isinstance(result["text"], str) and result["text"]


def test_tensor_parallel_step_after_del(tiny_model_dir):
    # "del llm; clean_memory()" then a model with tensor_parallel_size and trust_remote_code only
    llm = VLLM(model=tiny_model_dir, tensor_parallel_size=1, trust_remote_code=True, vllm_kwargs=dict(ENGINE),
               max_new_tokens=4)
    assert isinstance(llm.invoke("What is the future of AI?"), str)
    del llm
    gc.collect()


def test_awq_step(tmp_path):
    """The tutorials' quantization step, on a checkpoint `jaxllm quantize --awq` wrote."""
    from jaxllm.entrypoints.cli import main
    from tests.tiny_models import make_tiny_model

    src, awq = str(tmp_path / "src"), str(tmp_path / "awq")
    make_tiny_model(src, "LlamaForCausalLM", seed=5, hidden_size=128, intermediate_size=256)
    assert main(["quantize", "--awq", src, awq, "--group-size", "64"]) == 0
    llm_q = VLLM(
        model=awq,
        trust_remote_code=True,
        max_new_tokens=8,
        vllm_kwargs={"quantization": "awq", **ENGINE},
    )
    assert isinstance(llm_q.invoke("What are the most popular Halloween Costumes?"), str)
    assert llm_q.client.runner.quant_config.method == "awq"
