"""The serving path imports neither torch nor transformers: `LLM()` on the embedded model (generate, chat)
and a `jaxllm serve` process answering a chat request. Both are checked in fresh processes."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

HEAVY = ("torch", "transformers")

SCRIPT = """
import json, sys
from jaxllm import LLM, SamplingParams
llm = LLM(max_model_len=128, max_num_seqs=2)
params = SamplingParams(temperature=0, max_tokens=4)
text = llm.generate(["Hello"], params, use_tqdm=False)[0].outputs[0].text
chat = llm.chat([{"role": "user", "content": "Hi"}], params, use_tqdm=False)[0].outputs[0].text
print(json.dumps({"heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")),
                  "tokenizer": type(llm.get_tokenizer()).__name__, "text": text, "chat": chat}))
"""


def _env():
    # Fresh processes with the test session's caches (no XLA device-count flags needed here).
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def test_llm_on_the_default_model_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [] and out["tokenizer"] == "FastTokenizer"
    assert out["text"] and out["chat"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_serve_imports_no_torch(tmp_path):
    port = _free_port()
    log = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 (closed below; a pipe would fill and block the server)
    # -X importtime reports every module the process imports, whenever it does, on stderr.
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "jaxllm.entrypoints.cli", "serve", "--max-model-len", "128",
         "--max-num-seqs", "2", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=log, text=True, env=_env(),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, "the server exited"
            try:
                urllib.request.urlopen(base + "/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(1)
        reply = _post(base + "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert reply["choices"][0]["message"]["content"] is not None
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    stderr = (tmp_path / "stderr.txt").read_text()
    imported = re.findall(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", stderr)
    assert "jaxllm.entrypoints.openai.api_server" in [m.strip() for m in imported]
    assert not [m for m in imported if m.strip().split(".")[0] in HEAVY]
