"""The batch job's files without a model: input lines, output records, resume repair, the CLI wiring."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import closing

import pytest

from jaxllm.entrypoints.openai.run_batch import main as run_batch_main
from jaxllm.entrypoints.openai.run_batch import mark_duplicates
from jaxllm.entrypoints.openai.run_batch_io import (
    OutputWriter,
    error_record,
    parse_line,
    read_input,
    record_key,
    scan_for_resume,
    success_record,
)
from tests.batch.conftest import read_records, write_jsonl

REQ = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "hi"}}


def _error_body(message: str, code: int = 400) -> dict:
    return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": code}}


def test_parse_line_envelopes():
    ok = parse_line(1, json.dumps(REQ))
    assert ok.ok and ok.key == "a" and ok.body == {"prompt": "hi"}
    chat = parse_line(2, json.dumps({**REQ, "url": "/v1/chat/completions", "method": "post"}))
    assert chat.ok and chat.url == "/v1/chat/completions"

    bad_json = parse_line(3, '{"custom_id": "x", ')
    assert not bad_json.ok and bad_json.custom_id is None and bad_json.key == "#line:3"
    assert bad_json.message.startswith("Line 3 of the input is not valid JSON")
    assert parse_line(4, "[1, 2]").message == "Line 4 of the input is not a JSON object."
    assert "has no `custom_id`" in parse_line(5, json.dumps({**REQ, "custom_id": 7})).message

    url = parse_line(6, json.dumps({**REQ, "url": "/v1/embeddings"}))
    assert (url.status, url.custom_id) == (400, "a")
    assert "URL '/v1/embeddings' is not supported" in url.message
    assert "Method 'GET'" in parse_line(7, json.dumps({**REQ, "method": "GET"})).message
    assert "`body` must be a JSON object" in parse_line(8, json.dumps({**REQ, "body": "x"})).message


def test_read_input_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [REQ, "", "  ", "oops", {**REQ, "custom_id": "b"}])
    lines = read_input(str(path))
    assert [(line.lineno, line.key) for line in lines] == [(1, "a"), (4, "#line:4"), (5, "b")]


def test_duplicate_custom_ids_are_errors():
    lines = [parse_line(1, json.dumps(REQ)), parse_line(2, json.dumps(REQ)), parse_line(3, "x")]
    mark_duplicates(lines)
    assert lines[0].ok and not lines[1].ok
    assert "Duplicate custom_id 'a' (first on line 1)" in lines[1].message


def test_records_have_vllms_shape():
    ok = json.loads(success_record("a", '{"id": "cmpl-1", "choices": []}'))
    assert set(ok) == {"id", "custom_id", "response", "error"}
    assert ok["id"].startswith("jaxllm-") and ok["error"] is None
    assert ok["response"]["status_code"] == 200 and ok["response"]["request_id"].startswith("jaxllm-batch-")
    assert ok["response"]["body"] == {"id": "cmpl-1", "choices": []}

    err = json.loads(error_record(None, _error_body("Line 9 of the input is not valid JSON: x"), 400))
    assert err["response"]["status_code"] == 400 and err["response"]["body"] is None
    assert err["error"]["error"]["code"] == 400
    assert record_key(err) == "#line:9"
    assert record_key(ok) == "a"


def test_resume_repairs_a_killed_output(tmp_path):
    out = tmp_path / "out.jsonl"
    lines = [
        success_record("a", "{}"),
        error_record("b", _error_body("bad"), 400),  # a client error is an answer: not run again
        error_record("c", _error_body("Internal server error", 500), 500),  # a failed step: run again
        error_record(None, _error_body("Line 4 of the input is not valid JSON: x"), 400),
        "garbage",
    ]
    out.write_text("\n".join(lines) + "\n" + success_record("d", "{}")[:25])  # killed mid-write
    assert scan_for_resume(str(out)) == {"a", "b", "#line:4"}
    text = out.read_text()
    assert text.endswith("\n")
    assert [r["custom_id"] for r in read_records(text)] == ["a", "b", None]

    with closing(OutputWriter(str(out), resume=True)) as writer:  # appends after the repaired lines
        assert writer.done == {"a", "b", "#line:4"}
        writer.write(success_record("c", "{}"))
    assert [r["custom_id"] for r in read_records(out.read_text())] == ["a", "b", None, "c"]
    with closing(OutputWriter(str(out))) as writer:  # without --resume the output starts over
        assert writer.done == set()
    assert out.read_text() == ""


def test_resume_with_every_answer_present_loads_nothing(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [REQ, "not json"])
    out = tmp_path / "out.jsonl"
    out.write_text(success_record("a", "{}") + "\n"
                   + error_record(None, _error_body("Line 2 of the input is not valid JSON: x"), 400) + "\n")
    before = out.read_text()
    assert run_batch_main(["-i", str(inp), "-o", str(out), "--model", str(tmp_path / "no-model"), "--resume"]) == 0
    assert out.read_text() == before


def test_bad_files_fail_before_loading(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [REQ])
    assert run_batch_main(["-i", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert run_batch_main(["-i", str(inp), "-o", str(inp)]) == 2
    assert "output file is the input file" in capsys.readouterr().err
    assert run_batch_main(["-i", str(inp), "-o", "-", "--resume"]) == 2
    assert inp.read_text().startswith('{"custom_id"')


def test_cli_registers_run_batch_and_stays_import_light():
    from jaxllm.entrypoints.cli import build_parser

    args = build_parser().parse_args(["run-batch", "-i", "in.jsonl", "-o", "-", "--model", "m", "--dtype", "half",
                                      "--max-model-len", "128", "--served-model-name", "a", "b", "--resume",
                                      "--chat-template", "{{ x }}", "--max-logprobs", "5", "--enforce-eager"])
    assert (args.input_file, args.output_file, args.model, args.dtype) == ("in.jsonl", "-", "m", "half")
    assert (args.max_model_len, args.served_model_name, args.max_logprobs) == (128, ["a", "b"], 5)
    assert args.resume and callable(args.func)
    code = ("import sys, jaxllm.entrypoints.cli as c; c.build_parser(); "
            "import jaxllm.entrypoints.openai.run_batch; "
            "print(sorted(m for m in ('jax', 'fastapi', 'pydantic', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_concurrency_must_be_positive(tmp_path, value):
    inp = write_jsonl(tmp_path / "in.jsonl", [REQ])
    assert run_batch_main(["-i", str(inp), "-o", str(tmp_path / "o.jsonl"), "--max-concurrency", value]) == 2
