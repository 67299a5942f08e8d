"""Tool pins: what an approver (or first use) accepted, by hash, and the rules that move pins.

Pure module: no I/O. A pin is one (server, kind, name): a tool's whole definition, or a
server's instructions. Its hash is SHA-256 over the RFC 8785 (JCS) canonical JSON of the
definition as the upstream sent it, so key order and JSON formatting never count as a
change, while any change of content (a description, a schema keyword, an annotation,
`_meta`, whitespace *inside* a string) does. `reconcile` decides, for one catalog sync,
which pins are approved, which need a person, and why (docs/pinning.md has the story).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

import rfc8785

from tollhouse.registry.models import Approval, JSONObject, JSONValue

__all__ = [
    "CARD",
    "INSTRUCTIONS",
    "Pin",
    "PinKey",
    "PinKind",
    "PinState",
    "PinStatus",
    "Reconciled",
    "Scan",
    "instructions_definition",
    "jcs",
    "pin_sha256",
    "reconcile",
]

PinKind = Literal["tool", "instructions", "card"]
PinState = Literal["approved", "pending", "rejected"]
# What callers and admins see: a pending pin that once had an approved definition is "changed".
PinStatus = Literal["approved", "pending", "changed", "rejected"]
PinKey = tuple[PinKind, str]
INSTRUCTIONS: PinKey = ("instructions", "")
CARD: PinKey = ("card", "")  # an A2A agent's card (without its signatures)
Scan = Callable[[PinKind, JSONObject], list[JSONObject]]

# The first-use decider, recorded as `decided_by` of pins nobody had to look at.
FIRST_USE = "first-use"
_SAFE_INTEGER = 2**53 - 1


def _jcs_numbers(value: JSONValue) -> JSONValue:
    """Integers beyond ±(2**53 - 1) as the IEEE-754 doubles RFC 8785 §3.2.2.3 says they are."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and abs(value) > _SAFE_INTEGER:
        as_float = float(value) if abs(value) < 2**1023 else math.inf
        # Too large even for a double: keep it distinct and deterministic as a tagged string.
        return as_float if math.isfinite(as_float) else f"\x00int:{value}"
    if isinstance(value, dict):
        return {k: _jcs_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jcs_numbers(v) for v in value]
    return value


def jcs(value: JSONValue) -> bytes:
    """RFC 8785 canonical JSON of `value` (large integers read as doubles, as JCS does)."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        return rfc8785.dumps(_jcs_numbers(value))


def pin_sha256(definition: JSONObject) -> str:
    """SHA-256 hex of the JCS form of a definition: the identity a pin approves."""
    return hashlib.sha256(jcs(definition)).hexdigest()


def instructions_definition(instructions: str | None) -> JSONObject:
    """What is pinned for a server's instructions (absent instructions pin as null)."""
    return {"instructions": instructions}


@dataclass(frozen=True)
class Pin:
    """One pinned definition: the latest seen, its state, and the last approved one for the diff."""

    server: str
    kind: PinKind
    name: str  # the upstream tool name; "" for instructions
    sha256: str
    definition: JSONObject
    state: PinState
    reason: str  # why it is in this state: registration, first-use, manual, new, renamed, changed, …
    approved_sha256: str | None = None
    approved_definition: JSONObject | None = None
    findings: tuple[JSONObject, ...] = ()
    first_seen_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None

    @property
    def key(self) -> PinKey:
        """(kind, name): unique within one server."""
        return (self.kind, self.name)

    @property
    def status(self) -> PinStatus:
        """approved, pending (never approved), changed (approved before, differs now) or rejected."""
        if self.state == "pending" and self.approved_sha256 is not None:
            return "changed"
        return self.state

    def approve(self, by: str, at: datetime) -> Pin:
        """This pin with its latest definition approved by `by`."""
        return replace(
            self,
            state="approved",
            reason="approved",
            approved_sha256=self.sha256,
            approved_definition=self.definition,
            decided_at=at,
            decided_by=by,
        )

    def reject(self, by: str, at: datetime) -> Pin:
        """This pin with its latest definition rejected by `by`.

        An earlier approved definition is kept (the upstream going back to it is live again),
        unless it is the one rejected now: a withdrawn approval must not come back by itself.
        """
        withdrawn = self.approved_sha256 == self.sha256
        return replace(
            self,
            state="rejected",
            reason="rejected",
            approved_sha256=None if withdrawn else self.approved_sha256,
            approved_definition=None if withdrawn else self.approved_definition,
            decided_at=at,
            decided_by=by,
        )


@dataclass(frozen=True)
class Reconciled:
    """The pins of one server after a sync, and those that must be written."""

    pins: dict[PinKey, Pin]
    changed: list[Pin]


def reconcile(
    server: str,
    approval: Approval,
    tools: Sequence[JSONObject],
    instructions: str | None,
    pins: Mapping[PinKey, Pin],
    previous_tools: Iterable[str],
    now: datetime,
    scan: Scan,
    card: JSONObject | None = None,
) -> Reconciled:
    """Fold one sync of `server` into its pins.

    Rules (docs/pinning.md):
    - a definition equal to the approved one is approved (a tool changed and changed back,
      or removed and restored, is live again);
    - a definition equal to the last one seen keeps its state (a rejection stands);
    - any other definition of a known pin is pending ("changed" once it had an approval);
    - a new tool is approved under first-use and pending under manual, except that after the
      first sync a new tool that appears in the same sync in which a listed tool vanished is
      a possible rename and pending under either mode;
    - the server's instructions are pinned like a tool; the first ones are pending only
      under manual and only when not empty;
    - an A2A agent's card (without its signatures) is pinned like instructions: the first
      one is pending only under manual, and a changed card holds the agent until approved.
    Pins of tools that are gone are kept, so a tool that comes back is judged as before.
    """
    out = dict(pins)
    changed: list[Pin] = []
    initial = not pins
    names = [str(t.get("name")) for t in tools]
    vanished = set(previous_tools) - set(names)

    def fold(kind: PinKind, name: str, definition: JSONObject, first_state: PinState, reason: str) -> None:
        sha = pin_sha256(definition)
        pin = out.get((kind, name))
        if pin is None:
            auto = first_state == "approved"
            new = Pin(
                server=server,
                kind=kind,
                name=name,
                sha256=sha,
                definition=definition,
                state=first_state,
                reason=reason,
                approved_sha256=sha if auto else None,
                approved_definition=definition if auto else None,
                findings=tuple(scan(kind, definition)),
                first_seen_at=now,
                decided_at=now if auto else None,
                decided_by=FIRST_USE if auto else None,
            )
        elif sha == pin.sha256:
            return
        elif sha == pin.approved_sha256:
            new = replace(
                pin,
                sha256=sha,
                definition=definition,
                state="approved",
                reason="restored",
                findings=tuple(scan(kind, definition)),
            )
        else:
            new = replace(
                pin,
                sha256=sha,
                definition=definition,
                state="pending",
                reason="changed" if pin.approved_sha256 is not None else "new",
                findings=tuple(scan(kind, definition)),
            )
        out[(kind, name)] = new
        changed.append(new)

    # Empty instructions give the model nothing to read: never pending on first sight.
    first: PinState = "pending" if instructions and approval == "manual" else "approved"
    fold("instructions", "", instructions_definition(instructions), first, _first_reason(approval, initial))
    if card is not None:
        first_card: PinState = "pending" if approval == "manual" else "approved"
        fold("card", "", card, first_card, _first_reason(approval, initial))
    listed: set[str] = set()
    for tool, name in zip(tools, names, strict=True):
        if name in listed:
            continue  # an upstream listing a name twice: the first counts, as in the catalog store
        listed.add(name)
        if approval == "manual":
            fold("tool", name, tool, "pending", "manual")
        elif initial:
            fold("tool", name, tool, "approved", "registration")
        elif vanished and ("tool", name) not in pins:
            fold("tool", name, tool, "pending", "renamed")
        else:
            fold("tool", name, tool, "approved", "first-use")
    return Reconciled(out, changed)


def _first_reason(approval: Approval, initial: bool) -> str:
    if approval == "manual":
        return "manual"
    return "registration" if initial else "first-use"
