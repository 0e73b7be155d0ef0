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
    first = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", server.url_for("v1/completions"), json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    first.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(120), server.log()
    server.terminate()
    refused = False
    deadline = time.monotonic() + 10
    while reader.is_alive() and not refused and time.monotonic() < deadline:
        try:  # draining: the listening socket is closed while the stream goes on
            httpx.get(server.url_for("health"), timeout=2)
            time.sleep(0.05)
        except httpx.TransportError:  # refused, or reset while the listener closes
            refused = True
    reader.join(120)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 200  # the stream ran to the end
    assert refused or len(events) >= 200, "new connections were still accepted during the drain"
    t0 = time.monotonic()
    assert server.stop(timeout=60) == 0, server.log()
    assert time.monotonic() - t0 < 60
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url_for("health"), timeout=2)


@pytest.fixture(scope="module")
def timed_server(start_server, tiny_model_dir):
    command = [sys.executable, "-m", "jaxllm.entrypoints.cli", "serve", tiny_model_dir]
    return start_server(["--shutdown-timeout", "0.2"], command=command)


def test_sigterm_aborts_what_outlasts_the_shutdown_timeout(timed_server, tiny_model_dir):
    """--shutdown-timeout 0.2: streams still running 0.2 s after SIGTERM end with a 503 error event."""
    server = timed_server
    body = {"model": tiny_model_dir, "prompt": "Abort me", "max_tokens": 240, "ignore_eos": True, "stream": True}
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
