"""Small HTTP pieces shared by the admin API's modules: problem+json errors, JSON in and out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["Problem", "iso", "json_response", "problem_response", "read_body"]

MAX_BODY_BYTES = 4 * 1024 * 1024


class Problem(Exception):
    """An admin API error answered as `application/problem+json` (RFC 9457)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def json_response(data: Any, status: int = 200) -> Response:
    """A JSON response."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def problem_response(p: Problem) -> Response:
    """The problem+json response of `p` (401s carry a Bearer challenge)."""
    body = {"type": "about:blank", "title": p.title, "status": p.status, "detail": p.detail}
    headers = {"WWW-Authenticate": 'Bearer realm="tollhouse-admin"'} if p.status == 401 else None
    return Response(
        orjson.dumps(body), status_code=p.status, media_type="application/problem+json", headers=headers
    )


def iso(value: datetime | None) -> str | None:
    """ISO 8601, or None."""
    return value.isoformat() if value else None


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body.

    Raises:
        Problem: too large, not JSON, or not an object.
    """
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise Problem(413, "Payload Too Large", "request body over 4 MiB")
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise Problem(400, "Bad Request", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "Bad Request", "body must be a JSON object")
    return data
