"""The KV pool's share of device memory (vLLM's gpu_memory_utilization) and the prompt-logprobs chunks
that keep the largest temporary within what the pool planner reserves."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.config import ModelConfig, SchedulerConfig
from jaxllm.runner.device_memory import MEM_FRACTION_ENV, activation_reserve, budget_bytes
from jaxllm.runner.sampler import chunked_prompt_logprobs, prompt_logprobs


@pytest.mark.parametrize("t,chunk", [(1, 8), (37, 8), (64, 16), (300, 128)])
def test_chunked_prompt_logprobs_equal_the_whole_at_once(t, chunk):
    rng = np.random.default_rng(t)
    hidden = jnp.asarray(rng.normal(size=(t, 24)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(24, 301)), jnp.float32)
    nxt = jnp.asarray(rng.integers(0, 301, size=t), jnp.int32)
    logits_fn = lambda x: jnp.dot(x, head, precision=jax.lax.Precision.HIGHEST)
    whole = prompt_logprobs(logits_fn(hidden), nxt, 5)
    parts = jax.jit(lambda h, n: chunked_prompt_logprobs(logits_fn, h, n, 5, chunk=chunk))(hidden, nxt)
    for a, b in zip(whole, parts):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_budget_is_the_allocator_cap_when_the_engine_set_the_fraction(monkeypatch):
    monkeypatch.setenv(MEM_FRACTION_ENV, "0.9000")
    assert budget_bytes(90 * 2**30, 0.9, "gpu") == 90 * 2**30
    # a user's larger cap: the engine keeps to its share of the whole device (100 GiB here)
    monkeypatch.setenv(MEM_FRACTION_ENV, "0.95")
    assert budget_bytes(95 * 2**30, 0.5, "gpu") == pytest.approx(50 * 2**30, rel=1e-6)
    monkeypatch.delenv(MEM_FRACTION_ENV)
    assert budget_bytes(100 * 2**30, 0.8, "gpu") == 80 * 2**30  # cap of unknown fraction: a share of it
    monkeypatch.setenv(MEM_FRACTION_ENV, "0.9")
    assert budget_bytes(100 * 2**30, 0.8, "tpu") == 80 * 2**30  # the variable is a GPU allocator's


def test_reserve_grows_with_sampled_rows_and_never_with_the_square_of_the_step():
    cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                                 "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
                                 "num_hidden_layers": 32, "vocab_size": 128256, "max_position_embeddings": 32768})
    reserve = lambda seqs, tokens: activation_reserve(
        cfg, SchedulerConfig(max_model_len=32768, max_num_seqs=seqs, max_num_batched_tokens=tokens), "gpu")
    assert reserve(1024, 8192) - reserve(256, 8192) == 4 * 3 * 768 * 128256  # float32 logits, three copies
    step = [reserve(256, t) for t in (8192, 16384, 32768)]
    assert step[2] - step[1] == 2 * (step[1] - step[0])  # linear in the step's tokens
    assert step[1] < 32 * 16384**2 * 4  # far below one dense [heads, T, T] float32 score matrix (32 GiB)


def test_engine_claims_its_share_before_jax_starts():
    code = ("import os\nfrom jaxllm.runner.device_memory import claim_device_memory, MEM_FRACTION_ENV as E\n"
            "claim_device_memory(0.85); print(os.environ.get(E))\n")
    env = {k: v for k, v in os.environ.items() if k != MEM_FRACTION_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "0.8500", out.stderr
    out = subprocess.run([sys.executable, "-c", code], env={**env, MEM_FRACTION_ENV: "0.6"}, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "0.6", out.stderr  # the user's choice stays
    late = "import jax; jax.devices()\n" + code
    out = subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "None", out.stderr  # too late to change the cap: left alone
