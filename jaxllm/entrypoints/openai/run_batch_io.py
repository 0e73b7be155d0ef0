"""The files of `jaxllm run-batch`: reading OpenAI batch input lines, writing answer lines, resuming.

Plain Python (no jax, no fastapi, no pydantic), so it can be imported and tested on its own.

Every input line has a *key* that names it across runs: its `custom_id`, or, for a line whose `custom_id`
cannot be read (invalid JSON, not an object, no string `custom_id`), its line number. An output record
carries the key as its `custom_id`; for an unreadable line the custom_id is null and the error message
starts with "Line N of the input", which is how `--resume` recognises it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import uuid
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

COMPLETIONS_URL = "/v1/completions"
CHAT_URL = "/v1/chat/completions"
SUPPORTED_URLS = (COMPLETIONS_URL, CHAT_URL)
_LINE_PREFIX = re.compile(r"^Line (\d+) of the input")


def line_key(lineno: int) -> str:
    """The key of an input line that has no usable custom_id."""
    return f"#line:{lineno}"


@dataclass
class BatchLine:
    """One non-blank input line, parsed as far as the envelope goes (the body is checked later)."""

    lineno: int  # 1-based physical line number in the input
    custom_id: str | None
    url: str | None = None
    body: dict[str, Any] | None = None
    status: int = 200  # 400 when the envelope is unusable; then `message` says why
    message: str | None = None

    @property
    def key(self) -> str:
        return self.custom_id if self.custom_id is not None else line_key(self.lineno)

    @property
    def ok(self) -> bool:
        return self.message is None


def parse_line(lineno: int, text: str) -> BatchLine:
    """`{"custom_id", "method", "url", "body"}` -> BatchLine; problems become a 400 to report."""
    where = f"Line {lineno} of the input"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return BatchLine(lineno, None, status=400, message=f"{where} is not valid JSON: {err}")
    if not isinstance(obj, dict):
        return BatchLine(lineno, None, status=400, message=f"{where} is not a JSON object.")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return BatchLine(lineno, None, status=400,
                         message=f"{where} has no `custom_id` (a non-empty string is required).")
    line = BatchLine(lineno, custom_id, url=obj.get("url"))
    method = obj.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        line.status, line.message = 400, f"Method {method!r} is not supported; batch requests use POST."
    elif line.url not in SUPPORTED_URLS:
        line.status, line.message = 400, (
            f"URL {line.url!r} is not supported. Supported endpoints: {', '.join(SUPPORTED_URLS)}."
        )
    elif not isinstance(obj.get("body"), dict):
        line.status, line.message = 400, "The request `body` must be a JSON object."
    else:
        line.body = obj["body"]
    return line


def read_input(source: str) -> list[BatchLine]:
    """The non-blank lines of a local file, `-` (stdin) or an http(s) URL, parsed."""
    if source == "-":
        data = sys.stdin.buffer.read()
    elif source.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(source, timeout=300) as resp:
            data = resp.read()
    else:
        with open(source, "rb") as f:
            data = f.read()
    text = data.decode("utf-8-sig")
    return [parse_line(i, raw) for i, raw in enumerate(text.split("\n"), start=1) if raw.strip()]


# ---- records -------------------------------------------------------------------------------------


def _ids() -> tuple[str, str]:
    return f"jaxllm-{uuid.uuid4().hex}", f"jaxllm-batch-{uuid.uuid4().hex}"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def success_record(custom_id: str, body_json: str, status: int = 200) -> str:
    """The output line of an answered request; `body_json` is the server's response body, verbatim."""
    record_id, request_id = _ids()
    return (f'{{"id":{_dumps(record_id)},"custom_id":{_dumps(custom_id)},"response":{{"status_code":{status},'
            f'"request_id":{_dumps(request_id)},"body":{body_json}}},"error":null}}')


def error_record(custom_id: str | None, error_body: dict[str, Any], status: int) -> str:
    """The output line of a failed request (vLLM's shape): the status, no body, the error response."""
    record_id, request_id = _ids()
    return _dumps({
        "id": record_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": None},
        "error": error_body,
    })


def record_key(record: Any) -> str | None:
    """The key of the input line an output record answers (None if it cannot be told)."""
    if not isinstance(record, dict):
        return None
    custom_id = record.get("custom_id")
    if isinstance(custom_id, str):
        return custom_id
    error = record.get("error")
    message = error.get("error", {}).get("message") if isinstance(error, dict) else error
    match = _LINE_PREFIX.match(message) if isinstance(message, str) else None
    return line_key(int(match.group(1))) if match else None


def record_status(record: dict[str, Any]) -> int:
    response = record.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    return status if isinstance(status, int) else 400


# ---- the output file -----------------------------------------------------------------------------


def scan_for_resume(path: str) -> set[str]:
    """Keys already answered in `path`, after repairing it for appending.

    Kept: every complete, parseable record that names its input line. Dropped: a last line
    without its newline (the job was killed in the middle of a write), unparseable lines, and 5xx
    answers (engine failures), so those requests run again. The file is rewritten (atomically) only
    when something is dropped.
    """
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    pieces = data.split(b"\n")
    tail = pieces.pop()  # b"" when the file ends with a newline, else a line cut short
    if tail.strip():
        logger.warning("Dropping an incomplete last line of %s (%d bytes).", path, len(tail))
    kept: list[bytes] = []
    keys: set[str] = set()
    dropped = bool(tail)
    for raw in pieces:
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        key = record_key(record)
        if key is None or record_status(record) >= 500:
            dropped = True
            if key is None and raw.strip():
                logger.warning("Dropping an unreadable line of %s.", path)
            continue
        keys.add(key)
        kept.append(raw)
    if dropped:
        tmp = f"{path}.resume-tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return keys


class OutputWriter:
    """Appends one complete JSON line per `write`, flushed and fsynced, so a kill loses no answer."""

    def __init__(self, path: str, resume: bool = False):
        self.path = path
        self.done: set[str] = set()
        self.count = 0
        self._saved_stdout: int | None = None
        if path == "-":
            if resume:
                raise ValueError("--resume needs an output file, not stdout (-o -).")
            # Answers own the real stdout; anything else printed from now on goes to stderr.
            sys.stdout.flush()
            self._fd = os.dup(1)
            self._saved_stdout = os.dup(1)
            os.dup2(2, 1)
            return
        if resume:
            self.done = scan_for_resume(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if resume else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o644)

    def write(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        try:
            os.fsync(self._fd)
        except OSError:  # a pipe or a terminal (stdout) cannot be synced
            pass
        self.count += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._saved_stdout is not None:
            sys.stdout.flush()
            os.dup2(self._saved_stdout, 1)
            os.close(self._saved_stdout)
            self._saved_stdout = None


def check_paths(input_file: str, output_file: str) -> None:
    """Refuse to write the answers over the input."""
    if input_file == "-" or output_file == "-" or input_file.startswith(("http://", "https://")):
        return
    if os.path.exists(output_file) and os.path.exists(input_file) and os.path.samefile(input_file, output_file):
        raise ValueError("The output file is the input file; choose another output path.")
