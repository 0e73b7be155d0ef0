"""Two processes (4 simulated CPU devices each, gloo collectives), one scheduler on process 0: the same
tokens and logprobs as one process on 8 devices and as one device."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from jaxllm import LLM
from tests.multi_host_worker import PARAMS, PROMPTS, summary

DEADLINE_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str, address: str, process_id: int, out: str, log) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "tests.multi_host_worker", model, address, str(process_id), out]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(abs(a[t] - b[t]) <= 1e-4 * max(1.0, abs(a[t])) for t in a)


def test_two_processes_match_one(tiny_models, tmp_path):
    path, _ = tiny_models["Qwen2ForCausalLM"]
    address, out = f"127.0.0.1:{_free_port()}", str(tmp_path / "out.json")
    logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(2)]
    procs = [_start(path, address, i, out, logs[i]) for i in range(2)]
    deadline = time.monotonic() + DEADLINE_S
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one failed: the other would wait for it until the deadline
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    text = []
    for log in logs:
        log.seek(0)
        text.append(log.read()[-3000:])
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(text)
    with open(out) as f:
        got = json.load(f)
    for tp in (8, 1):
        llm = LLM(path, max_model_len=64, max_num_seqs=4, tensor_parallel_size=tp)
        want = json.loads(json.dumps([summary(llm.generate(PROMPTS, p, use_tqdm=False)) for p in PARAMS]))
        for got_params, want_params in zip(got, want):
            for (ids, lps), (want_ids, want_lps) in zip(got_params, want_params):
                assert ids == want_ids, f"tp={tp}"
                assert all(_close(a, b) for a, b in zip(want_lps, lps)), f"tp={tp}"


def test_distributed_arguments_are_checked(tiny_model_dir):
    with pytest.raises(ValueError, match="need a coordinator address"):
        LLM(tiny_model_dir, distributed_num_processes=2)
    with pytest.raises(ValueError, match="must be in \\[0, 2\\)"):
        LLM(tiny_model_dir, distributed_coordinator_address="127.0.0.1:1", distributed_num_processes=2,
            distributed_process_id=2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        LLM(tiny_model_dir, distributed_coordinator_address="localhost", distributed_num_processes=2,
            distributed_process_id=0)
