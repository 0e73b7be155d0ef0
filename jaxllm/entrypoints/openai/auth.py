"""The API-key check: `Authorization: Bearer <key>` on every `/v1` route, as vLLM does.

`/health`, `/metrics`, `/version`, `/ping`, `/tokenize` and `/detokenize` stay open (load balancers and
Prometheus scrape them without a key).

Where the keys come from, first match wins: `--api-key` (one or more), else `$JAXLLM_API_KEY`, else
`$VLLM_API_KEY`. An empty key (`--api-key ""`, or a variable set to "") is refused at startup rather than
read as "no authentication"; with no key at all the server logs a warning that /v1 is open. CORS preflights (`OPTIONS`) pass so the CORS layer can answer
them. Keys are compared as SHA-256 digests with `hmac.compare_digest`, so the time taken does not depend
on how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from typing import Any

GUARDED_PREFIXES = ("/v1",)
_UNAUTHORIZED = json.dumps({"error": "Unauthorized"}).encode()


API_KEY_VARIABLES = ("JAXLLM_API_KEY", "VLLM_API_KEY")  # in order of precedence, after --api-key


def _check_key(key: str, source: str) -> str:
    if not key.strip():
        raise ValueError(f"{source} is empty. Give a non-empty key to require authentication, or leave "
                         f"--api-key out and unset {' and '.join(API_KEY_VARIABLES)} to serve without one.")
    if key != key.strip():
        raise ValueError(f"{source} starts or ends with whitespace, which a client's `Authorization: Bearer` "
                         "header can never match. Remove it.")
    return key


def resolve_api_keys(cli_keys: Sequence[str] | None) -> list[str]:
    """The API keys: `--api-key` values, else `$JAXLLM_API_KEY`, else `$VLLM_API_KEY`; [] = no auth.

    Raises ValueError for an empty key (or one with surrounding whitespace) from whichever source wins.
    """
    if cli_keys is not None:
        return [_check_key(k, "--api-key") for k in cli_keys]
    for var in API_KEY_VARIABLES:
        if var in os.environ:
            return [_check_key(os.environ[var], f"${var}")]
    return []


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


class AuthenticationMiddleware:
    """Pure ASGI middleware (works for streaming responses too)."""

    def __init__(self, app: Any, api_keys: Sequence[str]):
        self.app = app
        self._digests = [_digest(k) for k in api_keys]

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = b""
        for name, val in headers:
            if name.lower() == b"authorization":
                value = val
                break
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        got = _digest(token.strip())
        ok = False
        for expected in self._digests:  # no early exit: the time does not tell which key matched
            ok |= hmac.compare_digest(got, expected)
        return ok

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        guarded = any(path == p or path.startswith(p + "/") for p in GUARDED_PREFIXES)
        if not guarded or self._authorized(scope.get("headers", [])):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(_UNAUTHORIZED)).encode())]})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
