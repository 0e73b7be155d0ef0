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
