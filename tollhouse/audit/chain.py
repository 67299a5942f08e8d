"""The audit trail's tamper evidence: hash-chained records and signed checkpoints.

Each gateway node keeps its own chain. A record carries its node, its sequence number in that
node's chain (1, 2, …), the hash of its predecessor (`prev`; GENESIS for the first) and its own
`hash`:

    hash_i = SHA-256( JCS(record_i without "hash") ‖ hash_{i-1} )

JCS is RFC 8785 canonical JSON (the `rfc8785` package), so the hash does not depend on key order
or number formatting. A checkpoint is a signed statement "node N's chain had head H at seq S at
time T": Ed25519 over the JCS of {node, seq, head, time, key_id}. Checkpoints are what make
truncation detectable — a chain that ends before a checkpoint's seq, or whose record at that
seq has another hash, was cut — and they anchor a chain whose oldest records were purged by
retention (its first record's `prev` must be the head of a checkpoint one seq earlier).

`verify` finds every kind of damage the issue names: an edited byte (the hash no longer
matches), a deleted record (a gap in seq and a broken `prev` link), an inserted record (a
duplicate seq or a broken link), reordering, truncation after a checkpoint, and a checkpoint
that is forged or signed by an unknown key. It reports each problem with where it is.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "GENESIS",
    "CheckpointSigner",
    "Problem",
    "Verification",
    "public_key_from_text",
    "public_key_text",
    "record_hash",
    "seal",
    "seal_canonical",
    "verify",
]

GENESIS = "0" * 64
_CHECKPOINT_FIELDS = ("node", "seq", "head", "time", "key_id")


def record_hash(record: Mapping[str, Any], prev: str) -> str:
    """SHA-256 (hex) of the record's canonical JSON without its `hash`, followed by `prev`."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(rfc8785.dumps(body) + prev.encode("ascii")).hexdigest()


def seal(record: Mapping[str, Any], node: str, seq: int, prev: str) -> dict[str, Any]:
    """The record as it is stored: with `node`, `seq`, `prev` and its `hash`."""
    return seal_canonical(record, node, seq, prev)[0]


def seal_canonical(record: Mapping[str, Any], node: str, seq: int, prev: str) -> tuple[dict[str, Any], str]:
    """`seal`, and the sealed record's RFC 8785 text, canonicalising each member once.

    RFC 8785 writes an object as its members sorted by key, so the text with `hash` is the
    text without it plus one member: both come from the same per-member texts. (Top-level
    keys are plain ASCII names, where UTF-16 and code-point order agree.)
    """
    sealed = {**record, "node": node, "seq": seq, "prev": prev}
    members = {key: rfc8785.dumps(key) + b":" + rfc8785.dumps(value) for key, value in sealed.items()}
    keys = sorted(members)
    body = b"{" + b",".join(members[k] for k in keys) + b"}"
    digest = hashlib.sha256(body + prev.encode("ascii")).hexdigest()
    sealed["hash"] = digest
    members["hash"] = b'"hash":"' + digest.encode("ascii") + b'"'
    text = b"{" + b",".join(members[k] for k in sorted(members)) + b"}"
    return sealed, text.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_text(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64url: what `audit verify --key` takes."""
    return _b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Parse `public_key_text`'s output.

    Raises:
        ValueError: not a base64url Ed25519 public key.
    """
    try:
        raw = _unb64(text.strip())
    except (ValueError, TypeError):
        raise ValueError("not base64url") from None
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 key derived from the key ring (purpose `audit-checkpoint`)."""

    def __init__(self, seed: bytes, key_id: str) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.key_id = key_id
        self.public_key = self._key.public_key()

    def checkpoint(self, node: str, seq: int, head: str, time: str) -> dict[str, Any]:
        """A signed checkpoint of `node`'s chain at `seq` with head hash `head`."""
        body: dict[str, Any] = {"node": node, "seq": seq, "head": head, "time": time, "key_id": self.key_id}
        return {**body, "signature": _b64(self._key.sign(rfc8785.dumps(body)))}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the trail."""

    kind: str  # edited | gap | inserted | reordered | broken_link | truncated | bad_checkpoint | unanchored
    node: str
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f"{self.node}#{self.seq}" if self.seq is not None else self.node
        return f"{self.kind} at {where}: {self.detail}"


@dataclass
class Verification:
    """What `verify` found: per node the records checked and the last verified seq, and the problems."""

    records: int = 0
    checkpoints: int = 0
    nodes: dict[str, int] = field(default_factory=dict)  # node -> last seq seen
    problems: list[Problem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _checkpoint_ok(checkpoint: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """None when the checkpoint is well-formed and signed by a trusted key; else why not."""
    if not all(k in checkpoint for k in (*_CHECKPOINT_FIELDS, "signature")):
        return "missing fields"
    key = keys.get(str(checkpoint["key_id"]))
    if key is None:
        return f"signed by unknown key {checkpoint['key_id']!r}"
    body = {k: checkpoint[k] for k in _CHECKPOINT_FIELDS}
    try:
        key.verify(_unb64(str(checkpoint["signature"])), rfc8785.dumps(body))
    except (InvalidSignature, ValueError, TypeError):
        return "signature does not verify"
    return None


def verify(
    records: Iterable[Mapping[str, Any]],
    checkpoints: Iterable[Mapping[str, Any]],
    keys: Mapping[str, Ed25519PublicKey],
) -> Verification:
    """Check records (in the order given: per node, by seq) against their chains and the checkpoints."""
    result = Verification()
    chains: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        result.records += 1
        chains.setdefault(str(record.get("node", "")), []).append(record)
    good: dict[str, list[Mapping[str, Any]]] = {}
    for checkpoint in checkpoints:
        result.checkpoints += 1
        node = str(checkpoint.get("node", ""))
        why = _checkpoint_ok(checkpoint, keys)
        if why is not None:
            seq = checkpoint.get("seq")
            result.problems.append(
                Problem("bad_checkpoint", node, seq if isinstance(seq, int) else None, why)
            )
            continue
        good.setdefault(node, []).append(checkpoint)
    for node in sorted(set(chains) | set(good)):
        _verify_chain(node, chains.get(node, []), good.get(node, []), result)
    return result


def _verify_chain(
    node: str,
    chain: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[Mapping[str, Any]],
    result: Verification,
) -> None:
    problems = result.problems
    heads = {int(c["seq"]): str(c["head"]) for c in checkpoints}
    by_seq: dict[int, str] = {}
    expected_seq: int | None = None
    prev_hash: str | None = None
    for record in chain:
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            problems.append(Problem("edited", node, None, "a record without an integer seq"))
            continue
        stored_prev = str(record.get("prev", ""))
        if record.get("hash") != record_hash(record, stored_prev):
            problems.append(Problem("edited", node, seq, "the record does not match its hash"))
        if expected_seq is None:
            # The first record: seq 1 after GENESIS, or anchored by a checkpoint one seq earlier.
            if seq == 1:
                if stored_prev != GENESIS:
                    problems.append(
                        Problem("broken_link", node, seq, "the first record does not follow GENESIS")
                    )
            elif heads.get(seq - 1) != stored_prev:
                problems.append(
                    Problem(
                        "unanchored",
                        node,
                        seq,
                        f"records before seq {seq} are missing and no checkpoint covers them",
                    )
                )
        elif seq in by_seq:
            problems.append(Problem("inserted", node, seq, "a second record with this seq"))
        elif seq < expected_seq:
            problems.append(Problem("reordered", node, seq, f"seq {seq} after seq {expected_seq - 1}"))
        elif seq > expected_seq:
            problems.append(Problem("gap", node, seq, f"seq {expected_seq}…{seq - 1} missing"))
        elif stored_prev != prev_hash:
            problems.append(Problem("broken_link", node, seq, "prev is not the hash of the record before"))
        by_seq.setdefault(seq, str(record.get("hash", "")))
        expected_seq = max(expected_seq or 0, seq + 1)
        prev_hash = str(record.get("hash", ""))
    last = (expected_seq - 1) if expected_seq is not None else 0
    result.nodes[node] = last
    for seq, head in sorted(heads.items()):
        if seq > last:
            problems.append(
                Problem("truncated", node, seq, f"a checkpoint covers seq {seq}; the chain ends at {last}")
            )
        elif seq in by_seq and by_seq[seq] != head:
            problems.append(Problem("truncated", node, seq, "the record at this checkpoint has another hash"))
