import os

# Eight simulated CPU devices for the tensor-parallel tests; set before jax is first imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# The transformers reference runs tiny models: one torch thread is much faster than two fighting XLA.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Steps compile lazily in tests (tests/runner/test_precompile.py asks for ahead-of-time compilation).
os.environ.setdefault("JAXLLM_PRECOMPILE", "off")

# Stored executables are keyed by the source code, not by the traced program, so a test that patches
# model code would store its patched steps for the next test: on only where a test asks for it.
os.environ.setdefault("JAXLLM_EXECUTABLE_CACHE", "0")

# One persistent XLA cache for the session: the many small engines the tests build share executables.
if "JAXLLM_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAXLLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxllm-test-cache-")

import pytest

from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Llama (with its torch model and tokenizer), shared by the session."""
    path = str(tmp_path_factory.mktemp("tiny-llama"))
    make_tiny_model(path, "LlamaForCausalLM")
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{architecture: (path, torch model)} for every core architecture."""
    out = {}
    for arch in ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"):
        path = str(tmp_path_factory.mktemp(arch))
        model, _ = make_tiny_model(path, arch, seed=len(out))
        out[arch] = (path, model)
    return out


os.environ.setdefault("HF_HUB_OFFLINE", "1")
