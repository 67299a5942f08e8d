"""Admin API for the audit trail: search, one record, verify, export, keys, status (docs/audit.md).

Reading needs role `admin` or `auditor`; signing a checkpoint now and running retention now
need `admin`. Every request that changes something is recorded by the admin API itself, and so
is an export (with its window), so the trail shows who took a copy of it.

`/audit/records.jsonl` is the other copy: the records that match the same filters as
`/audit/records`, newest first, exactly as stored (no keys or checkpoints: a filtered set of
records is not a chain slice and does not verify on its own). It is recorded like an export.

An export is JSON lines: one `{"key": …}` line per checkpoint key, each node's records exactly
as stored (RFC 8785 text), then `{"checkpoint": …}` lines. With `since`, each node's records
start right after its newest checkpoint before the window, so the slice verifies offline
without the records before it; with `until`, only checkpoints the exported records reach go out.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tollhouse.audit.chain import public_key_from_text
from tollhouse.audit.retention import apply_retention
from tollhouse.audit.verifier import verify_store
from tollhouse.gateway.admin_http import Problem, json_response
from tollhouse.registry.audit_store import FILTERS, AuditKey, SqlAuditStore

if TYPE_CHECKING:
    from tollhouse.audit.writer import AuditTrail
    from tollhouse.gateway.admin import AdminState

__all__ = ["MAX_PAGE", "audit_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]

MAX_PAGE = 500
# A badly damaged trail can have a problem per record; the answer lists this many and counts the rest.
MAX_PROBLEMS = 1000
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def audit_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /audit routes."""

    def trail() -> AuditTrail:
        if state.auditor is None:
            raise Problem(503, "Unavailable", "the audit trail is not configured")
        audit_trail: AuditTrail = state.auditor.trail
        return audit_trail

    async def records(request: Request) -> Response:
        params = request.query_params
        _only(params, {*FILTERS, "since", "until", "limit", "cursor"})
        filters: dict[str, Any] = {name: params[name] for name in FILTERS if params.get(name)}
        filters["since"], filters["until"] = _window(params)
        before = _cursor(params["cursor"]) if params.get("cursor") else None
        items, more = await trail().store.search(filters, before=before, limit=_limit(params.get("limit")))
        return json_response({"items": items, "next_cursor": _encode(more) if more is not None else None})

    async def record(request: Request) -> Response:
        node, seq = request.path_params["node"], _seq(request.path_params["seq"])
        store = trail().store
        found = await store.get(node, seq)
        if found is None:
            raise Problem(404, "Not Found", f"no audit record {node}#{seq}")
        return json_response({"record": found, "checkpoint": await store.covering(node, seq)})

    async def verify(request: Request) -> Response:
        _only(request.query_params, set())
        audit_trail = trail()
        keys = {k["key_id"]: public_key_from_text(k["public_key"]) for k in audit_trail.public_keys()}
        result = await verify_store(audit_trail.store, keys)
        problems = [
            {"kind": p.kind, "node": p.node, "seq": p.seq, "detail": p.detail} for p in result.problems
        ]
        return json_response(
            {
                "intact": result.intact,
                "records": result.records,
                "checkpoints": result.checkpoints,
                "nodes": result.nodes,
                "problems": problems[:MAX_PROBLEMS],
                "problems_omitted": max(0, len(problems) - MAX_PROBLEMS),
            }
        )

    async def export(request: Request) -> Response:
        params = request.query_params
        _only(params, {"since", "until"})
        since, until = _window(params)
        request.state.audit = {"since": params.get("since"), "until": params.get("until")}
        audit_trail = trail()
        # The slices are fixed before the answer starts (and before this export's own record).
        slices = await _slices(audit_trail.store, since, until)
        keys = audit_trail.public_keys()
        return StreamingResponse(
            _export_lines(audit_trail.store, keys, slices),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'},
        )

    async def matching(request: Request) -> Response:
        params = request.query_params
        _only(params, {*FILTERS, "since", "until"})
        filters: dict[str, Any] = {name: params[name] for name in FILTERS if params.get(name)}
        since, until = _window(params)
        request.state.audit = {
            "filters": dict(filters),
            "since": params.get("since"),
            "until": params.get("until"),
        }
        pages = trail().store.matching({**filters, "since": since, "until": until})
        # The first page is read before this listing's own record exists, and later pages continue
        # below it, so the listing never includes itself.
        first = await anext(pages, None)
        return StreamingResponse(
            _matching_lines(first, pages),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit-records.jsonl"'},
        )

    async def keys(request: Request) -> Response:
        return json_response({"items": trail().public_keys()})

    async def status(request: Request) -> Response:
        audit_trail = trail()
        return json_response(
            {
                **audit_trail.status(),
                "heads": await audit_trail.store.heads(),
                "last_checkpoints": await audit_trail.store.latest_checkpoints(),
                "keys": audit_trail.public_keys(),
            }
        )

    async def checkpoint(request: Request) -> Response:
        audit_trail = trail()
        try:
            await audit_trail.flush()  # so the checkpoint covers every record accepted so far
            signed = await audit_trail.checkpoint()
        except Exception:
            raise Problem(503, "Unavailable", "the audit store did not take the checkpoint") from None
        return json_response({"checkpoint": signed})

    async def retention(request: Request) -> Response:
        audit_trail = trail()
        # The retention period is a process setting (TOLLHOUSE_AUDIT__RETENTION_DAYS), held by the Auditor.
        days = state.auditor.settings.retention_days
        try:
            summary = await apply_retention(audit_trail, state.auditor, days)
        except Exception:
            raise Problem(503, "Unavailable", "the audit store did not complete the purge") from None
        return json_response(summary)

    return [
        Route("/audit/records", guarded(records, "audit"), methods=["GET"]),
        Route("/audit/records.jsonl", guarded(matching, "audit"), methods=["GET"]),
        Route("/audit/records/{node}/{seq}", guarded(record, "audit"), methods=["GET"]),
        Route("/audit/verify", guarded(verify, "audit"), methods=["GET"]),
        Route("/audit/export", guarded(export, "audit"), methods=["GET"]),
        Route("/audit/keys", guarded(keys, "audit"), methods=["GET"]),
        Route("/audit/status", guarded(status, "audit"), methods=["GET"]),
        Route("/audit/checkpoint", guarded(checkpoint, "admin"), methods=["POST"]),
        Route("/audit/retention", guarded(retention, "admin"), methods=["POST"]),
    ]


# One node's part of an export: records start..last, and its checkpoints from `checkpoints_from`.
Slice = tuple[str, int, int, int | None]


async def _slices(store: SqlAuditStore, since: datetime | None, until: datetime | None) -> list[Slice]:
    slices: list[Slice] = []
    for node, (first, last) in sorted((await store.window(since, until)).items()):
        start, checkpoints_from = 1, None
        if since is not None:
            anchor = await store.anchor(node, first)
            if anchor is not None:
                start = checkpoints_from = int(anchor["seq"])
                start += 1
        slices.append((node, start, last, checkpoints_from))
    return slices


async def _export_lines(
    store: SqlAuditStore, keys: list[dict[str, str]], slices: list[Slice]
) -> AsyncIterator[bytes]:
    for key in keys:
        yield orjson.dumps({"key": key}) + b"\n"
    for node, start, last, _ in slices:
        async for page in store.pages(node, start, last):
            yield b"".join(text.encode() + b"\n" for _, _, text in page)
    for node, _, last, checkpoints_from in slices:
        for checkpoint in await store.checkpoints(node, first=checkpoints_from, last=last):
            yield orjson.dumps({"checkpoint": checkpoint}) + b"\n"


async def _matching_lines(
    first: list[tuple[AuditKey, str]] | None, rest: AsyncIterator[list[tuple[AuditKey, str]]]
) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield b"".join(text.encode() + b"\n" for _, text in first)
    async for page in rest:
        yield b"".join(text.encode() + b"\n" for _, text in page)


def _only(params: Mapping[str, str], allowed: set[str]) -> None:
    """Refuse a parameter this route does not take (a misspelt filter must not widen a search)."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise Problem(400, "Bad Request", f"unknown parameter(s): {', '.join(unknown)}")


def _instant(name: str, text: str) -> datetime:
    if not _RFC3339.match(text):
        raise Problem(400, "Bad Request", f"'{name}' must be an RFC 3339 time, like 2026-11-23T10:00:00Z")
    try:
        return datetime.fromisoformat(text.upper().replace(" ", "T"))
    except ValueError:
        raise Problem(400, "Bad Request", f"'{name}' is not a valid time") from None


def _window(params: Mapping[str, str]) -> tuple[datetime | None, datetime | None]:
    since = _instant("since", params["since"]) if params.get("since") else None
    until = _instant("until", params["until"]) if params.get("until") else None
    if since is not None and until is not None and until <= since:
        raise Problem(400, "Bad Request", "'until' must be later than 'since'")
    return since, until


def _limit(text: str | None) -> int:
    if text is None:
        return 50
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise Problem(400, "Bad Request", f"'limit' must be 1 to {MAX_PAGE}")
    return int(text)


def _seq(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise Problem(400, "Bad Request", "the seq must be a positive integer")
    return int(text)


def _encode(key: AuditKey) -> str:
    raw = orjson.dumps([key.time.isoformat(), key.node, key.seq])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _cursor(text: str) -> AuditKey:
    """The position a `next_cursor` names.

    Raises:
        Problem: not a cursor this API gave out.
    """
    try:
        time, node, seq = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        key = AuditKey(datetime.fromisoformat(time), node, seq)
    except (ValueError, TypeError):
        raise Problem(400, "Bad Request", "'cursor' is not a cursor this API gave out") from None
    if not isinstance(key.node, str) or not isinstance(key.seq, int) or key.time.tzinfo is None:
        raise Problem(400, "Bad Request", "'cursor' is not a cursor this API gave out")
    return key
