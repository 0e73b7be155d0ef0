"""`jaxllm serve` / `python -m jaxllm.entrypoints.openai.api_server` flags, API-key resolution, templates."""

from __future__ import annotations

import pytest

from jaxllm.chat_utils import load_chat_template
from jaxllm.entrypoints.cli import build_parser
from jaxllm.entrypoints.openai.api_server import make_arg_parser
from jaxllm.entrypoints.openai.auth import resolve_api_keys


def test_serve_positional_model_and_vllm_flags():
    args = build_parser().parse_args([
        "serve", "google/gemma-2b", "--host", "0.0.0.0", "--port", "80", "--dtype=half", "--api-key", "k1", "k2",
        "--served-model-name", "gemma", "--max-model-len", "2048", "--tensor-parallel-size", "1",
        "--max-num-seqs", "8", "--gpu-memory-utilization", "0.8", "--seed", "1", "--root-path", "/llm",
        "--max-logprobs", "10", "--disable-log-requests", "--uvicorn-log-level", "debug",
        "--allowed-origins", '["http://a.example"]', "--enable-prompt-tokens-details", "--trust-remote-code",
        "--enforce-eager", "--no-enable-prefix-caching", "-q", "awq",
    ])
    assert args.model_tag == "google/gemma-2b"
    assert (args.host, args.port, args.dtype) == ("0.0.0.0", 80, "half")
    assert args.api_key == ["k1", "k2"]
    assert args.served_model_name == ["gemma"]
    assert args.allowed_origins == ["http://a.example"]
    assert args.quantization == "awq"
    assert callable(args.func)


def test_legacy_module_parser_defaults():
    args = make_arg_parser().parse_args(["--model=google/gemma-2b"])
    assert args.model == "google/gemma-2b"
    assert (args.host, args.port, args.api_key, args.max_logprobs) == (None, 8000, None, 20)
    assert args.allowed_origins == ["*"]


def test_api_key_precedence(monkeypatch):
    monkeypatch.delenv("JAXLLM_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    assert resolve_api_keys(None) == []
    monkeypatch.setenv("VLLM_API_KEY", "from-vllm")
    assert resolve_api_keys(None) == ["from-vllm"]
    monkeypatch.setenv("JAXLLM_API_KEY", "from-jaxllm")
    assert resolve_api_keys(None) == ["from-jaxllm"]
    assert resolve_api_keys(["cli"]) == ["cli"]
    assert resolve_api_keys(["k1", "k2"]) == ["k1", "k2"]


@pytest.mark.parametrize("keys, env", [
    ([""], {}),                                          # --api-key ""
    ([""], {"JAXLLM_API_KEY": "secret"}),                # an empty flag does not fall back to the variable
    (["k1", ""], {}),
    (["  "], {}),
    ([" padded "], {}),
    (None, {"JAXLLM_API_KEY": ""}),
    (None, {"JAXLLM_API_KEY": "", "VLLM_API_KEY": "secret"}),  # the first variable set wins, even empty
    (None, {"VLLM_API_KEY": ""}),
])
def test_empty_api_key_is_an_error(monkeypatch, keys, env):
    monkeypatch.delenv("JAXLLM_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="empty|whitespace"):
        resolve_api_keys(keys)


@pytest.mark.parametrize("flags, env, message", [
    (["--api-key", ""], {}, "--api-key is empty"),
    ([], {"JAXLLM_API_KEY": ""}, "$JAXLLM_API_KEY is empty"),
])
def test_empty_api_key_fails_at_startup(tmp_path, flags, env, message):
    import os
    import subprocess
    import sys

    full_env = {k: v for k, v in os.environ.items() if k not in ("JAXLLM_API_KEY", "VLLM_API_KEY")}
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm.entrypoints.cli", "serve", str(tmp_path / "missing"), *flags],
        check=False, capture_output=True, text=True, timeout=120, env={**full_env, **env},
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Loading model" not in proc.stderr  # refused before the model load


def test_load_chat_template(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0]['content'] }}")
    assert load_chat_template(str(path)) == "{{ messages[0]['content'] }}"
    assert load_chat_template("{{ x }}\\n") == "{{ x }}\n"
    assert load_chat_template(None) is None
    with pytest.raises(ValueError, match="looks like a file path"):
        load_chat_template(str(tmp_path / "missing.jinja"))


def test_busy_port_fails_before_loading_the_model(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "jaxllm.entrypoints.openai.api_server", "--model", str(tmp_path / "missing"),
             "--host", "127.0.0.1", "--port", str(port)],
            check=False, capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in proc.stderr
