"""Finding models: local folders, the Hugging Face cache layout, sharded safetensors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxllm import LLM, SamplingParams
from jaxllm.model_loader import resolve_model_path


def _as_hf_cache(src: str, cache: str, repo_id: str) -> str:
    """Lay `src` out as the hub cache does: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = os.path.join(repo, "snapshots", rev)
    shutil.copytree(src, snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(rev)
    return snap


def test_repo_id_resolves_from_hf_hub_cache_without_network(tiny_model_dir, tmp_path, monkeypatch):
    cache = str(tmp_path / "hub")
    snap = _as_hf_cache(tiny_model_dir, cache, "acme/tiny-llama")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.path.realpath(resolve_model_path("acme/tiny-llama")) == os.path.realpath(snap)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    shutil.move(cache, str(tmp_path / "home" / "hub"))
    out = LLM("acme/tiny-llama", max_model_len=64).generate("hello", SamplingParams(max_tokens=3, ignore_eos=True),
                                                            use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3


def test_not_found_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=str(tmp_path / "empty-cache")):
        resolve_model_path("acme/missing")


def test_sharded_checkpoint_gives_identical_outputs(tiny_model_dir, tmp_path):
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, sharded)
    tensors = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate(np.array_split(np.array(names), 3)):
        file = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: tensors[n] for n in part}, str(sharded / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    a = LLM(tiny_model_dir, max_model_len=64).generate(["hello world", "import os"], sp, use_tqdm=False)
    b = LLM(str(sharded), max_model_len=64).generate(["hello world", "import os"], sp, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]


def test_cli_generate_prints_completions(tiny_model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm.entrypoints.cli", "generate", "--model", tiny_model_dir, "--max-model-len",
         "64", "--max-tokens", "5", "--json", "--quiet", "hello world", "import os"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [x["prompt"] for x in lines] == ["hello world", "import os"]
    assert all(len(x["outputs"]) == 1 for x in lines)


def test_cli_reports_bad_input_without_traceback(tiny_model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm.entrypoints.cli", "generate", "--model", tiny_model_dir, "--temperature",
         "-3", "hi"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "temperature" in proc.stderr and "Traceback" not in proc.stderr


def test_parallel_reads_equal_safetensors_own_reader(tmp_path):
    import ml_dtypes
    from safetensors import safe_open

    from jaxllm.checkpoint_reader import CheckpointReader, safetensors_slices

    rng = np.random.default_rng(0)
    tensors = {  # odd sizes, so later tensors start at offsets their dtype does not divide
        "a.bf16": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
        "b.f32": rng.standard_normal((7,)).astype(np.float32),
        "c.i32": rng.integers(-9, 9, (2, 3)).astype(np.int32),
        "d.f16": rng.standard_normal((1, 3)).astype(np.float16),
        "e.u8": rng.integers(0, 255, (5,)).astype(np.uint8),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    slices = safetensors_slices([str(tmp_path / "model.safetensors")])
    groups = [[slices["a.bf16"], slices["c.i32"]], [slices["b.f32"]], [slices["d.f16"], slices["e.u8"]]]
    got = {}
    for host in CheckpointReader(workers=2, window=1).groups(groups):  # out-of-order reads, in-order results
        got.update({s.name: host.array(s.name) for s in host.slices})
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        for name in tensors:
            ref = f.get_tensor(name)
            assert got[name].dtype == ref.dtype and got[name].shape == ref.shape
            np.testing.assert_array_equal(got[name].astype(np.float64), ref.astype(np.float64))


def test_weights_transposed_on_device_equal_the_host_transposes(tiny_model_dir):
    import jax

    from jaxllm.model_loader import load_params

    runner = LLM(tiny_model_dir, max_model_len=32, max_num_seqs=1, skip_tokenizer_init=True).runner
    host = load_params(runner.model_config, runner.module.name_table(runner.model_config), lambda p, h: h)
    for layer, name in [(0, "wq"), (1, "w_down")]:  # the runner's own tree is fused: compare unfused leaves
        loaded = runner.weights.put_transposed(("layers", layer, name), np.ascontiguousarray(host["layers"][layer][name].T))
        np.testing.assert_array_equal(np.asarray(loaded), host["layers"][layer][name])
    lm_head = jax.device_get(runner.params["lm_head"])
    np.testing.assert_array_equal(lm_head, host["lm_head"])


def test_each_layer_is_one_transfer_and_one_call_equal_to_the_host_load(tiny_model_dir, monkeypatch):
    from jaxllm.model_loader import load_params
    from jaxllm.runner.weight_loader import WeightLoader

    calls = []
    real = WeightLoader.put_layer
    monkeypatch.setattr(WeightLoader, "put_layer", lambda self, buffer, layout: calls.append(buffer.nbytes)
                        or real(self, buffer, layout))
    runner = LLM(tiny_model_dir, max_model_len=32, max_num_seqs=1, skip_tokenizer_init=True).runner
    cfg = runner.model_config
    assert len(calls) == cfg.num_layers  # one buffer (one transfer) per decoder layer
    host = load_params(cfg, runner.module.name_table(cfg), lambda p, h: h)  # transposed and cast on the host
    for i in range(cfg.num_layers):
        got, ref = runner.params["layers"][i], host["layers"][i]
        np.testing.assert_array_equal(np.asarray(got["w_qkv"]), np.concatenate([ref["wq"], ref["wk"], ref["wv"]], -1))
        np.testing.assert_array_equal(np.asarray(got["w_gate_up"]), np.concatenate([ref["w_gate"], ref["w_up"]], -1))
        for name in ("wo", "w_down", "input_norm", "post_norm"):
            np.testing.assert_array_equal(np.asarray(got[name]), ref[name], err_msg=f"layer {i} {name}")
