"""Tamper evidence: each kind of damage the issue names is found by `verify`; an untouched trail verifies."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
import rfc8785

from tollhouse.audit.chain import (
    GENESIS,
    CheckpointSigner,
    public_key_from_text,
    public_key_text,
    record_hash,
    seal,
    seal_canonical,
    verify,
)

SIGNER = CheckpointSigner(bytes(range(32)), "k1")
KEYS = {"k1": SIGNER.public_key}


def trail(
    n: int = 6, node: str = "gw-a", checkpoint_at: tuple[int, ...] = (3, 6)
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`n` sealed records of one node and checkpoints at the given seqs."""
    records: list[dict[str, Any]] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        body = {
            "time": f"2026-11-23T10:00:0{seq}.000Z",
            "method": "tools/call",
            "tool": "calc__add",
            "outcome": "ok",
        }
        record = seal(body, node, seq, prev)
        records.append(record)
        prev = record["hash"]
    checkpoints = [
        SIGNER.checkpoint(node, seq, records[seq - 1]["hash"], f"2026-11-23T10:01:0{seq}.000Z")
        for seq in checkpoint_at
    ]
    return records, checkpoints


def kinds(records: list[dict[str, Any]], checkpoints: list[dict[str, Any]]) -> set[str]:
    return {p.kind for p in verify(records, checkpoints, KEYS).problems}


def test_an_untouched_trail_verifies() -> None:
    records, checkpoints = trail()
    result = verify(records, checkpoints, KEYS)
    assert result.intact and result.records == 6 and result.checkpoints == 2 and result.nodes == {"gw-a": 6}


def test_the_hash_follows_the_formula_and_ignores_key_order() -> None:
    record = seal({"b": 1, "a": "x"}, "n", 1, GENESIS)
    reordered = {k: record[k] for k in reversed(list(record))}
    assert record_hash(reordered, GENESIS) == record["hash"]
    import hashlib

    import rfc8785

    body = {k: v for k, v in record.items() if k != "hash"}
    assert record["hash"] == hashlib.sha256(rfc8785.dumps(body) + GENESIS.encode()).hexdigest()


def test_one_edited_byte_is_found() -> None:
    records, checkpoints = trail()
    text = json.dumps(records[1])
    edited = text.replace('"ok"', '"ko"')
    assert edited != text
    records[1] = json.loads(edited)
    assert kinds(records, checkpoints) == {"edited"}


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link_and_the_checkpoint() -> None:
    records, checkpoints = trail()
    records[2]["outcome"] = "denied"
    records[2]["hash"] = record_hash(records[2], records[2]["prev"])
    found = verify(records, checkpoints, KEYS).problems
    assert {(p.kind, p.seq) for p in found} == {("broken_link", 4), ("truncated", 3)}


def test_a_deleted_record_is_found() -> None:
    records, checkpoints = trail()
    del records[3]
    found = verify(records, checkpoints, KEYS).problems
    assert [(p.kind, p.seq) for p in found] == [("gap", 5)]


def test_an_inserted_record_is_found() -> None:
    records, checkpoints = trail()
    forged = seal({"method": "tools/call", "outcome": "ok"}, "gw-a", 3, records[1]["hash"])
    records.insert(3, forged)
    assert "inserted" in kinds(records, checkpoints)


def test_reordering_is_found() -> None:
    records, checkpoints = trail()
    records[2], records[3] = records[3], records[2]
    assert kinds(records, checkpoints) >= {"reordered"}


def test_truncation_after_a_checkpoint_is_found_and_before_it_is_not_claimed() -> None:
    records, checkpoints = trail()
    assert [(p.kind, p.seq) for p in verify(records[:4], checkpoints, KEYS).problems] == [("truncated", 6)]
    # Without a checkpoint past the cut, a shorter chain is a valid (older) chain.
    assert verify(records[:4], checkpoints[:1], KEYS).intact


def test_a_forged_or_foreign_checkpoint_is_refused() -> None:
    records, checkpoints = trail()
    forged = copy.deepcopy(checkpoints)
    forged[0]["seq"] = 2
    assert kinds(records, forged) == {"bad_checkpoint"}
    stranger = CheckpointSigner(os.urandom(32), "k1")
    foreign = [stranger.checkpoint("gw-a", 6, records[5]["hash"], "2026-11-23T10:02:00.000Z")]
    assert kinds(records, foreign) == {"bad_checkpoint"}
    unknown = [CheckpointSigner(os.urandom(32), "k9").checkpoint("gw-a", 6, records[5]["hash"], "t")]
    assert [p.detail for p in verify(records, unknown, KEYS).problems] == ["signed by unknown key 'k9'"]


def test_a_purged_prefix_is_fine_when_a_checkpoint_anchors_it() -> None:
    records, checkpoints = trail()
    assert verify(records[3:], checkpoints, KEYS).intact  # seq 4's prev is checkpoint 3's head
    assert [(p.kind, p.seq) for p in verify(records[4:], checkpoints, KEYS).problems] == [("unanchored", 5)]


def test_each_node_has_its_own_chain() -> None:
    a, ca = trail(node="gw-a")
    b, cb = trail(4, node="gw-b", checkpoint_at=(4,))
    result = verify([*a, *b], [*ca, *cb], KEYS)
    assert result.intact and result.nodes == {"gw-a": 6, "gw-b": 4}
    assert [(p.kind, p.node) for p in verify([*a, *b[:2]], [*ca, *cb], KEYS).problems] == [
        ("truncated", "gw-b")
    ]


def test_the_public_key_text_round_trips_and_bad_text_is_refused() -> None:
    text = public_key_text(SIGNER.public_key)
    assert public_key_text(public_key_from_text(text)) == text
    for bad in ("", "not base64!", public_key_text(SIGNER.public_key)[:-4]):
        with pytest.raises(ValueError):
            public_key_from_text(bad)


def test_seal_canonical_is_seal_and_its_rfc8785_text() -> None:
    body = {
        "time": "2026-11-23T10:00:00.123Z",
        "what": {"args": {"é": 1.5, "\U0001f600": "x", "a\u0001": [1, {"z": None, "b": True}]}},
        "action": "tools/call",
    }
    record, text = seal_canonical(body, "node-a", 7, GENESIS)
    assert record == seal(body, "node-a", 7, GENESIS)
    assert record["hash"] == record_hash(record, GENESIS)  # the independent definition
    assert text == rfc8785.dumps(record).decode()
