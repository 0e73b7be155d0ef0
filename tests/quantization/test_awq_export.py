"""`jaxllm quantize --awq`: a model folder in, an AutoAWQ checkpoint out that `quantization="awq"` loads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.entrypoints.cli import main
from jaxllm.quantization import is_quantized
from jaxllm.quantization.awq_export import write_awq_checkpoint
from tests.quantization.dense_checkpoint import write_dense_checkpoint
from tests.tiny_models import make_tiny_model

ENGINE = dict(dtype="float32", max_model_len=96, max_num_seqs=4)
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    # down_proj's input (intermediate 192) is no multiple of the group size 128: that layer stays dense
    path = str(tmp_path_factory.mktemp("awq-export-src"))
    make_tiny_model(path, "LlamaForCausalLM", seed=3, hidden_size=128, intermediate_size=192,
                    num_attention_heads=4, num_key_value_heads=2)
    return path


def _prompts(vocab: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"prompt_token_ids": rng.integers(3, vocab, size=n).tolist()} for n in (4, 9, 17)]


def _greedy(llm: LLM) -> list[list[int]]:
    outs = llm.generate(_prompts(llm.model_config.vocab_size), GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _last_logits(llm: LLM) -> np.ndarray:
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=20)
    out = llm.generate(_prompts(llm.model_config.vocab_size)[-1:], params, use_tqdm=False)[0]
    return np.array(sorted(lp.logprob for lp in out.outputs[0].logprobs[0].values()))


def test_cli_writes_a_checkpoint_awq_loads(source, tmp_path, capsys):
    out = str(tmp_path / "awq")
    assert main(["quantize", "--awq", source, out]) == 0
    assert "quantization=\"awq\"" in capsys.readouterr().out
    with open(os.path.join(out, "config.json")) as f:
        qc = json.load(f)["quantization_config"]
    assert qc == {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
                  "modules_to_not_convert": [f"model.layers.{i}.mlp.down_proj" for i in range(2)]}
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))

    awq = LLM(out, quantization="awq", **ENGINE)
    layer = awq.runner.params["layers"][0]
    assert is_quantized(layer["w_gate_up"]) and is_quantized(layer["w_qkv"])  # fused, still 4-bit
    assert not is_quantized(layer["w_down"])
    # the reference: the same model with the weights the checkpoint stands for, dense
    dense = write_awq_checkpoint(source, str(tmp_path / "again"), 128)
    write_dense_checkpoint(str(tmp_path / "again"), str(tmp_path / "dense"), dense)
    ref = LLM(str(tmp_path / "dense"), **ENGINE)
    assert _greedy(awq) == _greedy(ref)
    np.testing.assert_allclose(_last_logits(awq), _last_logits(ref), rtol=1e-4, atol=1e-4)
    text = awq.generate("The quick brown fox", GREEDY, use_tqdm=False)[0].outputs[0].text
    assert text == ref.generate("The quick brown fox", GREEDY, use_tqdm=False)[0].outputs[0].text


def test_shards_load_like_one_file(source, tmp_path):
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    write_awq_checkpoint(source, one, 64, return_dense=False)
    write_awq_checkpoint(source, many, 64, return_dense=False, shard_bytes=40_000)
    files = sorted(f for f in os.listdir(many) if f.endswith(".safetensors"))
    assert len(files) > 2 and os.path.isfile(os.path.join(many, "model.safetensors.index.json"))
    write_awq_checkpoint(source, many, 64, return_dense=False)  # rewriting replaces the shards and index
    assert sorted(f for f in os.listdir(many) if f.endswith((".safetensors", ".json"))) == sorted(
        f for f in os.listdir(one) if f.endswith((".safetensors", ".json")))
    write_awq_checkpoint(source, many, 64, return_dense=False, shard_bytes=40_000)
    assert _greedy(LLM(many, quantization="awq", **ENGINE)) == _greedy(LLM(one, quantization="awq", **ENGINE))


def test_bfloat16_model_with_the_default_group_size(tmp_path):
    """The embedded model (bfloat16 safetensors) through the CLI, served by quantization="awq"."""
    import jaxllm

    src = os.path.join(os.path.dirname(jaxllm.__file__), "default_model")
    out = str(tmp_path / "default-awq")
    assert main(["quantize", "--awq", src, out]) == 0
    llm = LLM(out, quantization="awq", max_model_len=96, max_num_seqs=2)
    assert llm.model_config.dtype == "float16" and is_quantized(llm.runner.params["layers"][0]["w_down"])
    text = llm.generate("def fibonacci(n):", SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    assert text[0].outputs[0].text.strip()


def test_cli_errors(source, tmp_path, capsys):
    out = str(tmp_path / "awq")
    assert main(["quantize", source, out]) == 2
    assert "--awq" in capsys.readouterr().err
    assert main(["quantize", "--awq", source, out]) == 0
    assert main(["quantize", "--awq", out, str(tmp_path / "twice")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["quantize", "--awq", source, out, "--group-size", "0"]) == 2
    assert main(["quantize", "--awq", source, source]) == 2
