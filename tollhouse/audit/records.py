"""The audit record's shape (SECURITY_GOALS A1) and the builders that fill it in.

One record per MCP/A2A request, refused authentication and admin action:

    {"v": 1, "time": "2026-11-23T10:00:00.123Z", "kind": "mcp" | "a2a" | "auth" | "admin" | "system",
     "action": "tools/call" | "POST /servers" | "auth.refused" | "audit.retention" | …,
     "who": {"subject", "issuer", "client_id", "teams", "kind", "source_ip"},
     "what": {"method", "server", "tool", "pin", "args_sha256", "args", "target"},
     "where": {"snapshot"},
     "outcome": {"result", "code", "reason", "policies"},
     "correlation": {"jsonrpc_id", "trace_id", "span_id", "session_id", "usage_event", "task_id"}}

Empty values are left out, so a record says only what is known. `seal` (chain.py) adds `node`,
`seq`, `prev` and `hash` when the writer commits it. Never put a credential here: a principal is
named by subject and client id, a presented token only by its short fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785

from tollhouse.auth.principal import Principal

__all__ = [
    "AuditNotes",
    "args_digest",
    "compact",
    "new_record",
    "rfc3339_ms",
    "who_of",
]


def rfc3339_ms(when: datetime | None = None) -> str:
    """UTC with milliseconds and a `Z`: `2026-11-23T10:00:00.123Z`."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def args_digest(arguments: Any) -> str | None:
    """SHA-256 (hex) of the arguments' RFC 8785 canonical JSON; None when they cannot be canonicalised."""
    try:
        return hashlib.sha256(rfc8785.dumps(arguments)).hexdigest()
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError):
        # RecursionError: nested deeper than Python recurses (the MCP endpoint refuses those
        # earlier; this keeps every other caller, A2A included, from a 500).
        return None


def compact(value: Any) -> Any:
    """`value` without None, empty strings, empty lists and empty objects (recursively)."""
    if isinstance(value, Mapping):
        out = {k: compact(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {}, ())}
    if isinstance(value, list | tuple):
        return [compact(v) for v in value]
    return value


def who_of(principal: Principal | None, source_ip: str | None) -> dict[str, Any]:
    """The `who` part: the verified identity (never a credential) and where the request came from."""
    if principal is None:
        return {"source_ip": source_ip}
    return {
        "subject": principal.subject,
        "issuer": principal.issuer,
        "client_id": principal.client_id,
        "teams": list(principal.teams),
        "kind": principal.kind,
        "token_id": principal.token_id,
        "source_ip": source_ip,
    }


def new_record(
    kind: str,
    action: str,
    *,
    who: Mapping[str, Any],
    outcome: Mapping[str, Any],
    what: Mapping[str, Any] | None = None,
    where: Mapping[str, Any] | None = None,
    correlation: Mapping[str, Any] | None = None,
    when: datetime | None = None,
) -> dict[str, Any]:
    """A record body ready for the writer (compacted; sealed on commit)."""
    body: dict[str, Any] = compact(
        {
            "v": 1,
            "kind": kind,
            "action": action,
            "who": dict(who),
            "what": dict(what or {}),
            "where": dict(where or {}),
            "outcome": dict(outcome),
            "correlation": dict(correlation or {}),
        }
    )
    body["time"] = rfc3339_ms(when)
    return body


@dataclass
class AuditNotes:
    """What the pipeline's stages learn about one call, for its audit record (one per request).

    Shared by reference between the request's context and every CallContext derived from it,
    like the response-header list: stages write, the endpoint reads after the call.
    """

    item: Any = None  # the resolved ExposedItem (server, tool, the definition its pin hash covers)
    snapshot: int | None = None
    policies: tuple[str, ...] = ()
    policy_version: int | None = None
    usage_event: str | None = None
    task_id: str | None = None
    args: Any = None  # the arguments as the upstream saw them (after guardrail redaction)
    # A call made through a meta-tool (gateway/disclosure.py): its name, the tool and the arguments it named.
    via: str | None = None
    inner_name: str | None = None
    inner_arguments: Any = None
