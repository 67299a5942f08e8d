"""Retention: purge each node's oldest records, but only down to a checkpoint, so the rest verifies.

A chain whose first record is not seq 1 must hang from a checkpoint at the seq before it
(chain.py). So for each node the cut is the newest checkpoint `c` such that every record up to
`c` is older than the cutoff, `c` is not the chain's head (a node keeps at least its last
record), and the record at `c` still has the hash the checkpoint signed; records 1…c go, and
checkpoint `c` anchors what remains. Without such a checkpoint nothing is deleted
(old records wait for the next run rather than leave an unanchored chain). Each run leaves an
`audit.retention` record with its parameters and what it deleted, then a new checkpoint that
covers that record (SECURITY_GOALS A4), so a changed retention setting shows in the trail.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from tollhouse.audit.chain import record_hash
from tollhouse.audit.records import rfc3339_ms

if TYPE_CHECKING:
    from tollhouse.audit.writer import AuditTrail
    from tollhouse.gateway.auditing import Auditor
    from tollhouse.gateway.settings import AuditSettings

__all__ = ["apply_retention", "run_retention"]

logger = logging.getLogger("tollhouse.audit")


async def apply_retention(
    trail: AuditTrail, auditor: Auditor, days: int, now: datetime | None = None
) -> dict[str, Any]:
    """Purge every node's records older than `days` down to an anchoring checkpoint; the summary.

    Raises:
        Exception: the store failed (what was purged before stays purged; the next run goes on).
    """
    store = trail.store
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted: dict[str, int] = {}
    through: dict[str, int] = {}
    for head in await store.heads():
        node = str(head["node"])
        cut = await _cut(trail, node, int(head["seq"]), cutoff)
        if cut is None:
            continue
        count = await store.purge_through(node, cut)
        if count:
            deleted[node], through[node] = count, cut
            logger.info("audit retention: %d records of %s purged through seq %d", count, node, cut)
    summary = {
        "cutoff": rfc3339_ms(cutoff),
        "days": days,
        "purged": sum(deleted.values()),
        "deleted": deleted,
        "through": through,
    }
    auditor.system("audit.retention", summary)
    await trail.flush()
    await trail.checkpoint()
    return summary


async def _cut(trail: AuditTrail, node: str, head: int, cutoff: datetime) -> int | None:
    """The seq to purge `node`'s chain through, or None when no checkpoint anchors a cut."""
    store = trail.store
    young = await store.first_since(node, cutoff)
    # The newest checkpoint below the first record kept. A node's last record is always kept: a
    # chain with checkpoints and no records is what deleting a whole chain would look like.
    checkpoint = await store.anchor(node, young if young is not None else head)
    if checkpoint is None:
        return None
    seq = int(checkpoint["seq"])
    record = await store.get(node, seq)
    if record is None:
        return None  # purged by an earlier run: nothing older is left
    if (
        record.get("hash") != checkpoint.get("head")
        or record_hash(record, str(record.get("prev"))) != record["hash"]
    ):
        # A record that no longer matches its checkpoint is evidence: leave it for `audit verify`.
        logger.warning("audit retention: %s#%d does not match its checkpoint; nothing purged", node, seq)
        return None
    return seq


async def run_retention(
    trail: AuditTrail,
    auditor: Auditor,
    settings: AuditSettings,
    *,
    sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
) -> None:
    """Apply retention every `retention_interval_seconds` (first one interval after start) until cancelled.

    A failed run is logged and tried again the next round; it never ends the loop.
    """
    while True:
        await sleep(settings.retention_interval_seconds)
        try:
            await apply_retention(trail, auditor, settings.retention_days)
        except Exception as exc:
            logger.error(
                "audit retention failed (%s); retrying in %gs",
                type(exc).__name__,
                settings.retention_interval_seconds,
            )
