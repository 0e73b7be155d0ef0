"""`jaxllm convert`: raw checkpoints in jaxllm's layout load to the same weights and tokens, sharded, from the CLI too."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.converted_checkpoint import MARKER, convert, is_converted_checkpoint

PROMPTS = [{"prompt_token_ids": list(range(5, 5 + n))} for n in (3, 11, 20)]
PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def _tokens(path, tp=1, **kwargs):
    llm = LLM(path, max_model_len=64, max_num_seqs=4, tensor_parallel_size=tp, **kwargs)
    return llm, [o.outputs[0].token_ids for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]


@pytest.fixture(scope="module")
def converted(tiny_model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("converted") / "tiny")
    convert(tiny_model_dir, out, dtype="float32")
    return out


def test_convert_writes_marker_config_and_tokenizer(converted, tiny_model_dir):
    assert is_converted_checkpoint(converted) and not is_converted_checkpoint(tiny_model_dir)
    with open(os.path.join(converted, MARKER)) as f:
        marker = json.load(f)
    assert marker == {"format": "jaxllm-raw", "version": 2, "dtype": "float32", "architecture": "LlamaForCausalLM"}
    names = set(os.listdir(converted))
    assert {"config.json", "params.bin", "params.json"} <= names and not any(n.endswith(".safetensors") for n in names)
    assert any(n.startswith("tokenizer") for n in names)


def test_converted_matches_original_one_device_and_tp2(converted, tiny_model_dir):
    _, ref = _tokens(tiny_model_dir, dtype="float32")
    _, out = _tokens(converted)
    assert out == ref
    for tp in (2, 4):  # tp=4 > 2 kv heads: k/v heads are repeated after the restore
        llm, out = _tokens(converted, tp=tp)
        assert out == ref, f"tp={tp}"
        layer = llm.runner.params["layers"][0]
        cfg = llm.runner.model_config  # kv heads as repeated for the mesh
        qkv = layer["w_qkv"]  # fused per shard: each device holds its own heads' q|k|v columns
        width = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "tp") and qkv.shape == (cfg.hidden_size, width)
        assert {s.data.shape for s in qkv.addressable_shards} == {(cfg.hidden_size, width // tp)}
        assert len({s.device for s in qkv.addressable_shards}) == tp


def test_converted_weights_equal_the_safetensors_ones(converted, tiny_model_dir):
    ref = LLM(tiny_model_dir, dtype="float32", max_model_len=64, max_num_seqs=4, skip_tokenizer_init=True).runner.params
    got = LLM(converted, max_model_len=64, max_num_seqs=4, skip_tokenizer_init=True).runner.params
    ref_leaves, ref_tree = jax.tree_util.tree_flatten_with_path(ref)
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
    assert ref_tree == got_tree  # the same fused layout (w_qkv, w_gate_up)
    for (path, a), (_, b) in zip(ref_leaves, got_leaves):
        assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_a_checkpoint_in_the_old_format_asks_for_a_new_conversion(tmp_path, tiny_model_dir):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(tiny_model_dir, name)) as src, open(old / name, "w") as dst:
            dst.write(src.read())
    with open(old / MARKER, "w") as f:
        json.dump({"format": "jaxllm-orbax", "version": 1, "dtype": "float32", "architecture": "LlamaForCausalLM"}, f)
    with pytest.raises(ValueError, match="jaxllm convert"):
        LLM(str(old), max_model_len=64, max_num_seqs=4, skip_tokenizer_init=True)


def test_bf16_conversion_halves_bytes_and_errors(tiny_model_dir, converted, tmp_path):
    out = convert(tiny_model_dir, str(tmp_path / "bf16"), dtype="bfloat16")
    full, half = os.path.getsize(os.path.join(converted, "params.bin")), os.path.getsize(os.path.join(out, "params.bin"))
    assert half < 0.6 * full, (half, full)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    llm, tokens = _tokens(out)  # dtype="auto" picks the stored bf16
    assert llm.runner.params["layers"][0]["wo"].dtype == "bfloat16" and all(len(t) == 8 for t in tokens)
    llm = LLM(converted, dtype="bfloat16", max_model_len=64, max_num_seqs=4)  # cast while restoring
    assert llm.runner.params["embed"].dtype == "bfloat16"
    with pytest.raises(ValueError, match="not empty"):
        convert(tiny_model_dir, out)
    with pytest.raises(ValueError, match="quantiz"):
        convert(tiny_model_dir, str(tmp_path / "q"), quantization="int8")


def test_cli_convert(tiny_model_dir, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm.entrypoints.cli", "convert", tiny_model_dir, str(out), "--dtype", "float32"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Converted" in proc.stdout and is_converted_checkpoint(str(out))
