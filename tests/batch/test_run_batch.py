"""`jaxllm run-batch` end to end on the tiny random Llama: a mixed file, the server's answers, kill + resume."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import httpx
import pytest

from tests.batch.conftest import CLI, SERVED_NAME, batch_command, batch_env, read_records, write_jsonl

GREEDY = {"temperature": 0, "ignore_eos": True}


def _req(custom_id: str, url: str, body: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


MIXED = [
    _req("cmpl", "/v1/completions", {"model": SERVED_NAME, "prompt": "The quick brown fox", "max_tokens": 6, **GREEDY}),
    _req("cmpl-two-prompts", "/v1/completions",
         {"prompt": ["Once upon a time", "def fibonacci(n):"], "max_tokens": 5, "echo": True, **GREEDY}),
    _req("chat", "/v1/chat/completions",
         {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hello world"}],
          "max_completion_tokens": 6, **GREEDY}),
    _req("chat-logprobs", "/v1/chat/completions",
         {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paged attention?"}],
          "max_tokens": 4, "logprobs": True, "top_logprobs": 2, **GREEDY}),
    '{"custom_id": "broken", "url": ',  # not JSON: its custom_id cannot be read
    _req("embeddings", "/v1/embeddings", {"model": SERVED_NAME, "input": "hi"}),
    _req("bad-body", "/v1/completions", {"prompt": "x", "temperature": "hot"}),
    _req("bad-model", "/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
]


@pytest.fixture(scope="module")
def mixed(run_batch, tmp_path_factory):
    """The mixed file through `jaxllm run-batch -i - -o -` (stdin to stdout): {custom_id: record}."""
    folder = tmp_path_factory.mktemp("mixed")
    text = write_jsonl(folder / "in.jsonl", MIXED).read_text()
    proc = run_batch("-", "-", stdin=text, command=CLI)
    assert proc.returncode == 0, proc.stderr
    records = read_records(proc.stdout)  # stdout holds the answers and nothing else
    assert len(records) == len(MIXED), proc.stdout
    assert "Batch done" in proc.stderr
    return {r["custom_id"]: r for r in records}


def test_mixed_file_gives_one_answer_per_line(mixed):
    assert set(mixed) == {"cmpl", "cmpl-two-prompts", "chat", "chat-logprobs", None, "embeddings", "bad-body",
                          "bad-model"}
    for record in mixed.values():
        assert set(record) == {"id", "custom_id", "response", "error"}
        assert record["id"].startswith("jaxllm-")
        assert record["response"]["request_id"].startswith("jaxllm-batch-")
    for custom_id in ("cmpl", "cmpl-two-prompts", "chat", "chat-logprobs"):
        record = mixed[custom_id]
        assert record["error"] is None and record["response"]["status_code"] == 200
        assert record["response"]["body"]["model"] == SERVED_NAME
    assert mixed["cmpl"]["response"]["body"]["object"] == "text_completion"
    assert mixed["chat"]["response"]["body"]["object"] == "chat.completion"
    assert len(mixed["cmpl-two-prompts"]["response"]["body"]["choices"]) == 2
    assert mixed["cmpl-two-prompts"]["response"]["body"]["choices"][1]["text"].startswith("def fibonacci(n):")
    assert len(mixed["chat-logprobs"]["response"]["body"]["choices"][0]["logprobs"]["content"]) == 4

    errors = {cid: (r["response"]["status_code"], r["error"]["error"]) for cid, r in mixed.items() if r["error"]}
    assert {cid: status for cid, (status, _) in errors.items()} == {
        None: 400, "embeddings": 400, "bad-body": 400, "bad-model": 404,
    }
    assert all(mixed[cid]["response"]["body"] is None for cid in errors)
    assert errors[None][1]["message"].startswith("Line 5 of the input is not valid JSON")
    assert "/v1/embeddings" in errors["embeddings"][1]["message"]
    assert "temperature" in errors["bad-body"][1]["message"]
    assert errors["bad-model"][1] == {"message": "The model `gpt-4o` does not exist.", "type": "NotFoundError",
                                      "param": None, "code": 404}


def test_answers_equal_the_servers(mixed, batch_server):
    for item in MIXED:
        if not isinstance(item, dict) or mixed[item["custom_id"]]["error"] is not None:
            continue
        got = mixed[item["custom_id"]]["response"]["body"]
        reply = httpx.post(batch_server.url_for(item["url"]), json=item["body"], timeout=60)
        assert reply.status_code == 200, reply.text
        want = reply.json()
        assert got["usage"] == want["usage"], item["custom_id"]
        assert len(got["choices"]) == len(want["choices"])
        for mine, theirs in zip(got["choices"], want["choices"]):
            assert mine["finish_reason"] == theirs["finish_reason"]
            if "message" in theirs:
                assert mine["message"] == theirs["message"], item["custom_id"]
                _assert_same_logprobs(mine["logprobs"], theirs["logprobs"])
            else:
                assert mine["text"] == theirs["text"], item["custom_id"]
    for item in MIXED[-2:]:  # the server refuses the same bodies with the same errors
        reply = httpx.post(batch_server.url_for(item["url"]), json=item["body"], timeout=60)
        record = mixed[item["custom_id"]]
        assert reply.status_code == record["response"]["status_code"]
        assert reply.json() == record["error"]


def test_killed_job_resumes_without_losing_or_repeating_answers(run_batch, tiny_model_dir, xla_cache_dir,
                                                                tmp_path):
    # Different lengths finish at different steps, so answers trickle out while the rest still run.
    items = [
        _req(f"long-{i:02d}", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 10 + 12 * i, **GREEDY})
        for i in range(16)
    ]
    items += [_req("chat", "/v1/chat/completions",
                   {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 150, **GREEDY}),
              "not json", _req("nowhere", "/v1/nowhere", {})]
    inp = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.jsonl"
    cmd = batch_command(tiny_model_dir, str(inp), str(out))
    proc = subprocess.Popen(cmd, env=batch_env(xla_cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 4:  # the 2 bad lines + 2 answers
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        stderr = proc.communicate()[1].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, stderr
    written = read_records(out.read_text())
    assert 4 <= len(written) < len(items), "the job finished before it could be killed"
    with open(out, "ab") as f:  # as if the kill had cut a write short
        f.write(b'{"id":"jaxllm-0","custom_id":"long-15","response":{"status_')
        f.flush()
        os.fsync(f.fileno())

    resumed = run_batch(str(inp), str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(written)} of {len(items)} requests already answered" in resumed.stderr
    records = read_records(out.read_text())
    keys = Counter(r["custom_id"] for r in records)
    assert len(records) == len(items)
    assert keys == Counter([it["custom_id"] for it in items if isinstance(it, dict)] + [None])
    assert written == records[: len(written)]  # what the killed job wrote is kept as it was
    for r in records:
        if r["custom_id"] is not None and r["custom_id"].startswith("long-"):
            n = 10 + 12 * int(r["custom_id"][5:])
            assert r["response"]["body"]["usage"]["completion_tokens"] == n

    again = run_batch(str(inp), str(out), "--resume")  # nothing left to do: no model is even loaded
    assert again.returncode == 0 and "Nothing to run" in again.stderr
    assert read_records(out.read_text()) == records


def _assert_same_logprobs(mine, theirs):
    """Same tokens and ranks; values equal up to float rounding (a batch and a server may batch differently)."""
    if mine is None or theirs is None:
        assert mine == theirs
        return
    assert len(mine["content"]) == len(theirs["content"])
    for a, b in zip(mine["content"], theirs["content"]):
        assert a["token"] == b["token"] and a["bytes"] == b["bytes"]
        assert abs(a["logprob"] - b["logprob"]) < 1e-4
        assert [t["token"] for t in a["top_logprobs"]] == [t["token"] for t in b["top_logprobs"]]
        assert all(abs(x["logprob"] - y["logprob"]) < 1e-4 for x, y in zip(a["top_logprobs"], b["top_logprobs"]))
