"""The management API from tests: JSON over HTTP with basic auth, status and answer."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class Api:
    def __init__(self, port: int, user: str = "guest", password: str = "guest") -> None:
        self.base, self.auth = f"http://127.0.0.1:{port}", (user, password)

    def as_(self, user: str, password: str) -> Api:
        api = Api(0, user, password)
        api.base = self.base
        return api

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self(method, path, body)
        assert status in (200, 201, 204), (method, path, status, answer)
        return answer


def q(name: str) -> str:
    """A name as one URL path segment."""
    return urllib.parse.quote(name, safe="")
