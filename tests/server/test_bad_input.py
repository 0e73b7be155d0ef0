"""Text the tokenizer cannot take is a 400 in OpenAI's shape, in every text field of every endpoint.

JSON can spell an unpaired UTF-16 surrogate ("\\ud800"), and a client can send bytes that are not UTF-8
at all; neither may reach the tokenizer (which raises TypeError) or end as a plain-text 500.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.conftest import SERVED_NAME

BAD = "abc\ud800def"  # json.dumps writes it as the escape "abc\\ud800def"
CHAT = [{"role": "user", "content": "hello"}]

CASES = {
    "completion prompt": ("/v1/completions", {"prompt": BAD}),
    "completion prompt list": ("/v1/completions", {"prompt": ["fine", BAD]}),
    "completion stream": ("/v1/completions", {"prompt": BAD, "stream": True}),
    "completion stop string": ("/v1/completions", {"prompt": "hi", "stop": BAD}),
    "completion stop list": ("/v1/completions", {"prompt": "hi", "stop": ["ok", BAD]}),
    "completion bad_words": ("/v1/completions", {"prompt": "hi", "bad_words": [BAD]}),
    "completion user": ("/v1/completions", {"prompt": "hi", "user": BAD}),
    "chat content": ("/v1/chat/completions", {"messages": [{"role": "user", "content": BAD}]}),
    "chat content part": ("/v1/chat/completions",
                          {"messages": [{"role": "user", "content": [{"type": "text", "text": BAD}]}]}),
    "chat stream": ("/v1/chat/completions", {"messages": [{"role": "user", "content": BAD}], "stream": True}),
    "chat stop": ("/v1/chat/completions", {"messages": CHAT, "stop": [BAD]}),
    "chat bad_words": ("/v1/chat/completions", {"messages": CHAT, "bad_words": [BAD]}),
    "chat system": ("/v1/chat/completions", {"messages": [{"role": "system", "content": BAD}, *CHAT]}),
    "tokenize prompt": ("/tokenize", {"prompt": BAD}),
    "tokenize messages": ("/tokenize", {"messages": [{"role": "user", "content": BAD}]}),
    "detokenize model": ("/detokenize", {"tokens": [5, 6], "model": BAD}),
    "tokenize model": ("/tokenize", {"prompt": "hi", "model": BAD}),
}


def _assert_openai_400(r: httpx.Response) -> dict:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400 and error["message"]
    return error


@pytest.mark.parametrize("case", sorted(CASES))
def test_unpaired_surrogate_is_400(default_server, case):
    path, body = CASES[case]
    body = {"model": SERVED_NAME, "max_tokens": 2, **body} if path.startswith("/v1") else body
    r = httpx.post(default_server.url + path, content=json.dumps(body), timeout=60,
                   headers={"content-type": "application/json"})
    error = _assert_openai_400(r)
    assert "not valid Unicode" in error["message"] and "unpaired surrogate (U+D800)" in error["message"]


RAW = {
    "/v1/completions": b'{"model": "%s", "prompt": "abc\xff\xfedef", "max_tokens": 2}',
    "/v1/chat/completions": b'{"model": "%s", "messages": [{"role": "user", "content": "\xc3\x28"}], "stream": true}',
    "/tokenize": b'{"model": "%s", "prompt": "\xed\xa0\x80"}',  # a surrogate in UTF-8 form: not UTF-8
    "/detokenize": b'{"model": "%s\x80", "tokens": [5]}',
}


@pytest.mark.parametrize("path", sorted(RAW))
def test_invalid_utf8_body_is_400(default_server, path):
    body = RAW[path].replace(b"%s", SERVED_NAME.encode())
    r = httpx.post(default_server.url + path, content=body, headers={"content-type": "application/json"},
                   timeout=60)
    message = _assert_openai_400(r)["message"]
    # Python's JSON decoder lets UTF-8-encoded surrogates through as surrogates: refused as such
    assert "not valid UTF-8" in message or "unpaired surrogate (U+D800)" in message


def test_server_still_serves_after_bad_input(default_server):
    r = httpx.post(default_server.url + "/v1/completions", timeout=60,
                   json={"model": SERVED_NAME, "prompt": "abc\u00e9\U0001f600def", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    r = httpx.post(default_server.url + "/tokenize", json={"prompt": "\U0001f600"}, timeout=60)
    assert r.status_code == 200 and r.json()["count"] > 0
