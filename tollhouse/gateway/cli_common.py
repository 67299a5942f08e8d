"""What every admin command of the CLI shares: the admin API client, errors and output helpers.

Output helpers print one clean line per value: upstream text may carry newlines or terminal
escape sequences, so everything shown passes through `clean`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2

from tollhouse import __version__

__all__ = [
    "API_PREFIX",
    "DEFAULT_URL",
    "PROG",
    "TIMEOUT_SECONDS",
    "AdminClient",
    "CliError",
    "UsageError",
    "admin_client",
    "clean",
    "fields",
    "items_of",
    "list_command",
    "list_of",
    "print_json",
    "seconds_text",
    "seg",
    "short",
    "sub_document",
    "table",
    "warn",
    "when",
]

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/admin/api/v1"
TIMEOUT_SECONDS = 30.0
PROG = "tollhouse"


class CliError(Exception):
    """A failure reported as one line on stderr; the command exits 1."""


class UsageError(CliError):
    """Arguments that parse but do not make sense together; the command exits 2 with its usage."""


# --- the admin API client --------------------------------------------------------------------


class AdminClient:
    """A short-lived synchronous client of one gateway's admin API."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CliError(f"invalid gateway URL {url!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
        self.url = url.rstrip("/")
        self.token = token
        self.last_status: int | None = None  # HTTP status of the last successful answer
        headers = {"Accept": "application/json", "User-Agent": f"tollhouse-cli/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # trust_env=False: a proxy variable must not divert admin credentials.
        self._http = httpx2.Client(
            base_url=self.url + API_PREFIX, headers=headers, timeout=TIMEOUT_SECONDS, trust_env=False
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Send one request; returns the JSON object it answers (empty for 204 No Content).

        Raises:
            CliError: the gateway is unreachable, or answered with an error.
        """
        response = self._send(method, path, body=body, params=params)
        if response.status_code == 204:
            return {}
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise CliError(
                f"the gateway at {self.url} did not answer with a JSON object (is it a tollhouse gateway?)"
            )
        return document

    def text(self, path: str, *, params: dict[str, str] | None = None) -> str:
        """GET a non-JSON document (a CSV export); its text.

        Raises:
            CliError: the gateway is unreachable, or answered with an error.
        """
        return self._send("GET", path, params=params).text

    def _send(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> httpx2.Response:
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = self._http.request(method, path, content=content, params=params, headers=headers)
        except httpx2.ConnectError:
            raise CliError(f"cannot reach the gateway at {self.url} (is it running?)") from None
        except httpx2.TimeoutException:
            raise CliError(
                f"the gateway at {self.url} did not answer within {TIMEOUT_SECONDS:g} seconds"
            ) from None
        except httpx2.HTTPError as exc:
            raise CliError(f"request to the gateway at {self.url} failed: {clean(str(exc))}") from None
        if response.status_code >= 400:
            raise CliError(self.problem(response))
        if response.is_redirect:
            where = clean(response.headers.get("location"))
            raise CliError(
                f"the gateway at {self.url} redirects to {where}; pass the address it names with --url"
            )
        self.last_status = response.status_code
        return response

    def problem(self, response: httpx2.Response) -> str:
        """The `detail` of an application/problem+json answer (RFC 9457), as one line."""
        detail = None
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            detail = problem.get("detail") or problem.get("title")
        if not isinstance(detail, str) or not detail.strip():
            detail = f"the gateway answered HTTP {response.status_code} {response.reason_phrase}".rstrip()
        detail = clean(detail)
        if response.status_code == 401 and not self.token:
            detail += " (pass --token or set TOLLHOUSE_ADMIN_TOKEN)"
        return detail


def admin_client(args: argparse.Namespace) -> AdminClient:
    url = getattr(args, "url", None) or os.environ.get("TOLLHOUSE_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("TOLLHOUSE_ADMIN_TOKEN") or None
    return AdminClient(url, token)


def seg(value: str) -> str:
    """One URL path segment: names never smuggle in a '/' or a query."""
    return quote(value, safe="")


# --- output ----------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    # ensure_ascii (the default) escapes control characters, so upstream text cannot drive the terminal.
    print(json.dumps(data, indent=2))


def clean(value: Any) -> str:
    """A value as one printable line: upstream text may carry newlines or terminal escape sequences."""
    if value is None:
        return "-"
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return " ".join(text.split()) or "-"


def short(value: Any, width: int = 60) -> str:
    text = clean(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def when(value: Any) -> str:
    if not isinstance(value, str):
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return clean(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M") + (" UTC" if moment.tzinfo is not None else "")


def seconds_text(value: Any) -> str:
    return f"{value:g}s" if isinstance(value, int | float) else "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[clean(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    pairs = list(pairs)
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        print(f"{key + ':':<{width}} {value}")


def sub_document(document: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested object of an answer, or an empty one."""
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def list_of(document: dict[str, Any], key: str) -> list[Any]:
    """A nested list of an answer, or an empty one."""
    value = document.get(key)
    return value if isinstance(value, list) else []


def list_command(
    args: argparse.Namespace,
    path: str,
    *,
    empty: str,
    headers: Sequence[str],
    row: Callable[[dict[str, Any]], Sequence[Any]],
    params: dict[str, str] | None = None,
) -> int:
    """`GET path`: its JSON with --json; else a table, one `row` per item, or `empty` when none."""
    with admin_client(args) as api:
        data = api.request("GET", path, params=params)
    if args.json:
        print_json(data)
        return 0
    rows = items_of(data)
    if not rows:
        print(empty)
        return 0
    table(headers, (row(item) for item in rows))
    return 0


def items_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    items = data.get("items")
    if not isinstance(items, list):
        raise CliError("unexpected answer from the gateway: no 'items' list")
    return [i for i in items if isinstance(i, dict)]


def warn(message: str) -> None:
    print(f"{PROG}: warning: {clean(message)}", file=sys.stderr)
