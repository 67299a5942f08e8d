"""Verifying a trail too large to hold in memory: each node's chain, one bounded chunk at a time.

`chain.verify` keeps every record it checks (about 5 KB each as Python objects), so a year of
records does not fit. `ChainVerifier` hands it chunks of one node's chain and joins them: chunk
k+1 starts with the last record of chunk k, anchored by a checkpoint signed on the spot with a
throwaway key, so the link from that record onwards is checked as if the chain were one piece
(problems of the repeated record itself were reported with chunk k and are not repeated). Each
real checkpoint is checked with the first chunk that reaches its seq; a node's last chunk gets
the rest, where a checkpoint beyond the chain's end means truncation.

What it reports is what `chain.verify` reports, with one difference: a reordering or a second
record with a seq already seen *in an earlier chunk* is named `reordered` rather than `inserted`
(it is reported either way). The database cannot hold either (its key is node and seq).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tollhouse.audit.chain import CheckpointSigner, Verification, verify

if TYPE_CHECKING:
    from tollhouse.registry.audit_store import SqlAuditStore

__all__ = ["CHUNK", "ChainVerifier", "verify_store"]

CHUNK = 10_000
# Problems of the record that opens a chunk, already reported with the chunk it closed.
_REPEATED = frozenset({"edited", "broken_link", "unanchored"})


def _seq(item: Mapping[str, Any]) -> int | None:
    seq = item.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class ChainVerifier:
    """Feed it checkpoints and records (each node's in chain order); `finish` says what is wrong.

    A checkpoint must be added before the records that reach its seq, so that it is checked
    against the record it covers; checkpoints past the end of a node's chain may come last.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey], *, chunk: int = CHUNK) -> None:
        self._joint = CheckpointSigner(os.urandom(32), f"join-{secrets.token_hex(8)}")
        self._keys = {**keys, self._joint.key_id: self._joint.public_key}
        self._chunk = chunk
        self._pending: dict[str, list[Mapping[str, Any]]] = {}
        self._buffers: dict[str, list[Mapping[str, Any]]] = {}
        self._carry: dict[str, Mapping[str, Any]] = {}
        self._reach: dict[str, int] = {}
        self.result = Verification()

    def add_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """One checkpoint to check (with the chunk of its node's chain that reaches its seq)."""
        self._pending.setdefault(str(checkpoint.get("node", "")), []).append(checkpoint)

    def add(self, record: Mapping[str, Any]) -> None:
        """The next record (in its node's chain order)."""
        node = str(record.get("node", ""))
        buffer = self._buffers.setdefault(node, [])
        buffer.append(record)
        if len(buffer) >= self._chunk:
            self._check(node, final=False)

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        """`add` each of `records`."""
        for record in records:
            self.add(record)

    def end(self, node: str) -> None:
        """Check what is left of `node`'s chain and the checkpoints past its end; forget the node."""
        self._check(node, final=True)
        for state in (self._pending, self._buffers, self._carry, self._reach):
            state.pop(node, None)

    def finish(self) -> Verification:
        """End every node still open; the result."""
        for node in sorted(set(self._buffers) | set(self._pending) | set(self._carry)):
            self.end(node)
        return self.result

    def _check(self, node: str, *, final: bool) -> None:
        records = self._buffers.pop(node, [])
        reach = max([self._reach.get(node, 0), *(s for r in records if (s := _seq(r)) is not None)])
        pending = sorted(self._pending.get(node, []), key=lambda c: _seq(c) or math.inf)
        due = pending if final else [c for c in pending if (s := _seq(c)) is not None and s <= reach]
        self._pending[node] = [] if final else pending[len(due) :]
        if not records and not due:
            return
        carry = self._carry.get(node)
        carry_seq = _seq(carry) if carry is not None else None
        joints = []
        if carry is not None and carry_seq is not None and carry_seq > 1:
            joints.append(self._joint.checkpoint(node, carry_seq - 1, str(carry.get("prev", "")), ""))
        found = verify([*([carry] if carry is not None else []), *records], [*due, *joints], self._keys)
        self.result.records += len(records)
        self.result.checkpoints += len(due)
        self.result.nodes[node] = max(self.result.nodes.get(node, 0), found.nodes.get(node, 0))
        self.result.problems.extend(
            p
            for p in found.problems
            if carry_seq is None or not (p.node == node and p.seq == carry_seq and p.kind in _REPEATED)
        )
        last = next((r for r in reversed(records) if _seq(r) is not None), None)
        if last is not None:
            self._carry[node] = last
        self._reach[node] = reach


async def verify_store(
    store: SqlAuditStore, keys: Mapping[str, Ed25519PublicKey], *, chunk: int = CHUNK
) -> Verification:
    """Verify every node's chain in the database, a page at a time (the CPU work in a worker thread).

    Checkpoints older than a chain's first remaining record (retention purged what they cover)
    are not read, except the one that anchors it.
    """
    verifier = ChainVerifier(keys, chunk=chunk)
    nodes = {h["node"] for h in await store.heads()} | {c["node"] for c in await store.latest_checkpoints()}
    for node in sorted(nodes):
        reached: int | None = None
        async for page in store.pages(node, page=chunk):
            # The first page also reads the checkpoint that anchors a chain purged by retention.
            start = page[0][0] - 1 if reached is None else reached + 1
            for checkpoint in await store.checkpoints(node, first=start, last=page[-1][0]):
                verifier.add_checkpoint(checkpoint)
            reached = page[-1][0]
            await anyio.to_thread.run_sync(_check_page, verifier, node, page)
        for checkpoint in await store.checkpoints(node, first=(reached or 0) + 1):
            verifier.add_checkpoint(checkpoint)
        await anyio.to_thread.run_sync(verifier.end, node)
    return verifier.result


def _check_page(verifier: ChainVerifier, node: str, page: list[tuple[int, str, str]]) -> None:
    verifier.add_all(_parse(node, seq, digest, text) for seq, digest, text in page)


def _parse(node: str, seq: int, digest: str, text: str) -> Mapping[str, Any]:
    """A stored record; text that is not a JSON object stands in as a record that fails its hash
    (with the row's hash, so the record after it still links)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return (
        value if isinstance(value, dict) else {"node": node, "seq": seq, "hash": digest, "unreadable": True}
    )
