"""HTTP plumbing of the authorization server: capped bodies, JSON and redirect answers.

Small and pure: nothing here knows about OAuth flows, only how a request is read safely and
how authlib's answers and errors go back on the wire (never cached, never framed).
"""

from __future__ import annotations

import binascii
import math
from base64 import b64decode
from collections.abc import Mapping
from types import MappingProxyType

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from tollhouse.auth.server.oauth import AuthlibResponse

__all__ = [
    "NO_STORE",
    "basic_header_ok",
    "is_client_failure",
    "json_error",
    "json_too_many",
    "read_capped",
    "redirect",
    "to_response",
]

NO_STORE: Mapping[str, str] = MappingProxyType(
    {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}
)


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is (or claims to be) larger than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def basic_header_ok(request: Request) -> bool:
    """False when a Basic Authorization header cannot be decoded (authlib would raise on it)."""
    header = request.headers.get("authorization")
    if header is None or " " not in header:
        return True
    scheme, value = header.split(None, 1)
    if scheme.lower() != "basic":
        return True
    try:
        b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return True


def is_client_failure(answer: AuthlibResponse) -> bool:
    """True when authlib refused the client's authentication (counted for throttling)."""
    return answer.status_code == 401 or (
        isinstance(answer.body, dict) and answer.body.get("error") == "invalid_client"
    )


def to_response(answer: AuthlibResponse) -> Response:
    """authlib's answer as a Starlette response: a redirect, or JSON that is never cached."""
    headers = {k: v for k, v in answer.headers if k.lower() != "content-type"}
    if answer.location is not None:
        return redirect(answer.location, status_code=answer.status_code)
    body = answer.body if isinstance(answer.body, dict) else {}
    return Response(
        orjson.dumps(body),
        status_code=answer.status_code,
        headers={**headers, "Cache-Control": "no-store", "Pragma": "no-cache"},
        media_type="application/json",
    )


def redirect(location: str, *, status_code: int = 302) -> Response:
    """A redirect that is neither cached nor leaks its URL in a Referer."""
    return RedirectResponse(
        location, status_code=status_code, headers={**NO_STORE, "X-Frame-Options": "DENY"}
    )


def json_error(error: str, description: str, status_code: int) -> Response:
    """An OAuth error body (RFC 6749 §5.2)."""
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status_code, headers=NO_STORE
    )


def json_too_many(wait: float) -> Response:
    """429 with Retry-After for the JSON endpoints."""
    return JSONResponse(
        {"error": "too_many_requests", "error_description": "Too many requests; retry later."},
        status_code=429,
        headers={**NO_STORE, "Retry-After": str(math.ceil(wait))},
    )
