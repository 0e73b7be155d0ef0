"""`jaxllm serve MODEL` (the CLI form), and SIGTERM: in-flight requests finish, then a clean exit."""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx
import pytest


@pytest.fixture(scope="module")
def server(start_server, tiny_model_dir):
    command = [sys.executable, "-m", "jaxllm.entrypoints.cli", "serve", tiny_model_dir]
    return start_server([], command=command)


def test_cli_serves_model_under_its_path(server, tiny_model_dir):
    assert server.client().models.list().data[0].id == tiny_model_dir


def test_sigterm_drains_in_flight_streams_and_exits_zero(server, tiny_model_dir):
    body = {"model": tiny_model_dir, "prompt": "Drain me", "max_tokens": 200, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    events: list[str] = []
    first, probed = threading.Event(), threading.Event()

    def consume() -> None:
        with httpx.stream("POST", server.url_for("v1/completions"), json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    first.set()
                    probed.wait(60)  # read the rest only once the probes are done: the stream cannot end first

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(120), server.log()
    server.terminate()
    refused = False
    deadline = time.monotonic() + 30
    while not refused and time.monotonic() < deadline:
        try:  # draining: the listening socket is closed while the stream goes on
            httpx.get(server.url_for("health"), timeout=2)
            time.sleep(0.05)
        except httpx.TransportError:  # refused, or reset while the listener closes
            refused = True
    probed.set()
    reader.join(120)
    assert refused, "new connections were still accepted 30 s after SIGTERM"
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 200  # the stream ran to the end
    t0 = time.monotonic()
    assert server.stop(timeout=60) == 0, server.log()
    assert time.monotonic() - t0 < 60
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url_for("health"), timeout=2)


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory):
    """The tiny Llama with room for long outputs: streams that run for seconds on any machine."""
    from tests.tiny_models import make_tiny_model

    path = str(tmp_path_factory.mktemp("tiny-llama-long"))
    make_tiny_model(path, "LlamaForCausalLM", max_position_embeddings=2048)
    return path


@pytest.fixture(scope="module")
def timed_server(start_server, long_model_dir):
    command = [sys.executable, "-m", "jaxllm.entrypoints.cli", "serve", long_model_dir]
    return start_server(["--shutdown-timeout", "0.2"], command=command)


def test_sigterm_aborts_what_outlasts_the_shutdown_timeout(timed_server, long_model_dir):
    """--shutdown-timeout 0.2: streams still running 0.2 s after SIGTERM end with a 503 error event.

    Each stream asks for 900 tokens: hundreds of steps, far longer than a loaded machine takes to start
    them all and to handle the signal, so some are certainly still running when the timeout ends."""
    server = timed_server
    body = {"model": long_model_dir, "prompt": "Abort me", "max_tokens": 900, "ignore_eos": True, "stream": True}
    streams: list[list[str]] = [[] for _ in range(16)]
    started = threading.Barrier(len(streams) + 1)

    def consume(events: list[str]) -> None:
        with httpx.stream("POST", server.url_for("v1/completions"), json=body, timeout=120) as r:
            first = True
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if first:
                        first = False
                        started.wait(60)

    readers = [threading.Thread(target=consume, args=(events,)) for events in streams]
    for reader in readers:
        reader.start()
    started.wait(120)
    t0 = time.monotonic()
    server.terminate()
    for reader in readers:
        reader.join(60)
    assert server.stop(timeout=30) == 0, server.log_path.read_text()
    assert time.monotonic() - t0 < 15
    aborted = 0
    for events in streams:
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        if "error" in last:
            assert last["error"]["code"] == 503 and "--shutdown-timeout" in last["error"]["message"]
            aborted += 1
        else:
            assert last["choices"][0]["finish_reason"] == "length"
    assert aborted > 0, "every stream finished within 0.2 s of SIGTERM"
    assert "Shutdown timeout (0.2s) reached: aborted" in server.log_path.read_text()


def test_sigterm_while_the_first_step_compiles(start_server, long_model_dir, tmp_path):
    """A fresh server (no compilation cache) compiles in its first step while requests wait to be admitted:
    SIGTERM with --shutdown-timeout 1 answers every one with a 503 and the process exits promptly (900
    tokens each: none can finish within the timeout, however fast the compilation)."""
    from jaxllm.entrypoints.openai.api_server import SHUTDOWN_GRACE_SECONDS
    from jaxllm.entrypoints.openai.app import ENGINE_STOP_SECONDS

    command = [sys.executable, "-m", "jaxllm.entrypoints.cli", "serve", long_model_dir]
    server = start_server(["--shutdown-timeout", "1", "--enable-log-requests"], command=command,
                          env={"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"), "JAXLLM_COMPILATION_CACHE": "0"})
    results: list[tuple[int, str, str]] = []

    def request(i: int) -> None:
        body = {"model": long_model_dir, "prompt": f"Request {i} waits", "max_tokens": 900, "ignore_eos": True,
                "stream": i % 2 == 0}
        with httpx.stream("POST", server.url_for("v1/completions"), json=body, timeout=120) as r:
            results.append((r.status_code, r.headers.get("content-type", ""), r.read().decode()))

    clients = [threading.Thread(target=request, args=(i,)) for i in range(10)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 60
    while server.log().count("Received request") < len(clients):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    t0 = time.monotonic()
    server.terminate()
    for client in clients:
        client.join(60)
    assert server.proc.wait(60) == 0, server.log()
    exit_time = time.monotonic() - t0
    print(f"exit {exit_time:.1f}s after SIGTERM; {server.log().count('Added request')} of 10 admitted")
    assert exit_time < 1 + SHUTDOWN_GRACE_SECONDS + ENGINE_STOP_SECONDS + 2, (exit_time, server.log())
    assert "Server stopped." in server.log()  # the logs were flushed before the fast exit
    assert len(results) == len(clients)
    for status, content_type, text in results:
        if content_type.startswith("text/event-stream"):
            events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
            assert status == 200 and events[-1] == "[DONE]"
            error = json.loads(events[-2])["error"]
        else:
            assert status == 503 and content_type.startswith("application/json"), (status, text)
            error = json.loads(text)["error"]
        assert error["code"] == 503 and "--shutdown-timeout" in error["message"]
