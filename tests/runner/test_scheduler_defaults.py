"""max_num_seqs / max_num_batched_tokens default as vLLM's do: by device and by who builds the engine."""

import pytest

from jaxllm import LLM
from jaxllm.runner.device_memory import device_memory_bytes
from jaxllm.runner.scheduler_defaults import LLM_CLASS, OPENAI_API_SERVER, default_limits

GIB = 2**30


@pytest.mark.parametrize(
    ("usage", "kind", "memory", "expected"),
    [
        (LLM_CLASS, "NVIDIA H200", 139 * GIB, (1024, 16384)),
        (OPENAI_API_SERVER, "NVIDIA H200", 139 * GIB, (1024, 8192)),
        (LLM_CLASS, "NVIDIA H100 80GB HBM3", 79 * GIB, (1024, 16384)),
        (LLM_CLASS, "NVIDIA A100-SXM4-80GB", 79 * GIB, (256, 8192)),  # vLLM leaves A100s out
        (OPENAI_API_SERVER, "NVIDIA A100-SXM4-80GB", 79 * GIB, (256, 2048)),
        (LLM_CLASS, "NVIDIA L4", 22 * GIB, (256, 8192)),
        (OPENAI_API_SERVER, "NVIDIA L4", 22 * GIB, (256, 2048)),
    ],
)
def test_gpu_defaults_follow_vllm(usage, kind, memory, expected):
    assert default_limits(usage, "gpu", kind, memory, 4096, True) == expected


def test_without_chunked_prefill_a_step_holds_a_whole_prompt():
    assert default_limits(OPENAI_API_SERVER, "gpu", "NVIDIA L4", 22 * GIB, 32768, False) == (256, 32768)
    assert default_limits(LLM_CLASS, "gpu", "NVIDIA H200", 139 * GIB, 4096, False) == (1024, 16384)


def test_cpu_keeps_its_own_defaults_and_bad_usage_is_named(tiny_model_dir):
    assert default_limits(LLM_CLASS, "cpu", "cpu", None, 4096, True) == (256, None)
    with pytest.raises(ValueError, match="usage_context"):
        LLM(tiny_model_dir, max_model_len=128, max_num_seqs=4, max_num_batched_tokens=256, usage_context="SERVER")


def test_device_memory_is_the_cap_over_jax_fraction(monkeypatch):
    class Device:
        def memory_stats(self):
            return {"bytes_limit": 90 * GIB}

    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    assert device_memory_bytes(Device()) == 100 * GIB
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
    assert device_memory_bytes(Device()) == 120 * GIB  # JAX's own 75%


def test_llm_defaults_and_user_values(tiny_model_dir):
    llm = LLM(tiny_model_dir, max_model_len=128)
    assert (llm.scheduler_config.max_num_seqs, llm.scheduler_config.max_num_batched_tokens) == (256, 2048)
    llm = LLM(tiny_model_dir, max_model_len=128, max_num_seqs=3, usage_context=OPENAI_API_SERVER)
    assert (llm.scheduler_config.max_num_seqs, llm.scheduler_config.max_num_batched_tokens) == (3, 2048)


def test_zero_limits_are_refused_not_replaced_by_defaults(tiny_model_dir):
    with pytest.raises(ValueError, match="max_num_seqs must be at least 1"):
        LLM(tiny_model_dir, max_model_len=128, max_num_seqs=0)
    with pytest.raises(ValueError, match="max_num_batched_tokens must be at least 1"):
        LLM(tiny_model_dir, max_model_len=128, max_num_batched_tokens=0)
