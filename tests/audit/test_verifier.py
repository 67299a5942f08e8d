"""Chunked verification finds what whole-trail verification finds, whatever the chunk boundaries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tollhouse.audit.chain import GENESIS, CheckpointSigner, Verification, seal, verify
from tollhouse.audit.verifier import ChainVerifier, verify_store
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade
from tollhouse.registry.tables import AUDIT_RECORDS

SIGNER = CheckpointSigner(bytes(range(32)), "k1")
KEYS = {"k1": SIGNER.public_key}
Records = list[dict[str, Any]]


def chain(node: str, count: int) -> Records:
    records: Records = []
    prev = GENESIS
    for seq in range(1, count + 1):
        record = seal({"time": "2026-11-23T10:00:00.000Z", "n": seq}, node, seq, prev)
        prev = record["hash"]
        records.append(record)
    return records


def checkpoints(records: Records, *seqs: int) -> Records:
    by_seq = {(r["node"], r["seq"]): r["hash"] for r in records}
    return [SIGNER.checkpoint(node, seq, by_seq[(node, seq)], "t") for node, seq in _pairs(records, seqs)]


def _pairs(records: Records, seqs: tuple[int, ...]) -> list[tuple[str, int]]:
    nodes = sorted({r["node"] for r in records})
    return [
        (node, seq)
        for node in nodes
        for seq in seqs
        if any(r["node"] == node and r["seq"] == seq for r in records)
    ]


def chunked(records: Records, marks: Records, chunk: int) -> Verification:
    verifier = ChainVerifier(KEYS, chunk=chunk)
    for mark in marks:
        verifier.add_checkpoint(mark)
    verifier.add_all(records)
    return verifier.finish()


def found(result: Verification) -> set[tuple[str, str, int | None]]:
    return {(p.kind, p.node, p.seq) for p in result.problems}


def edited(records: Records, at: int) -> Records:
    return [{**r, "n": -1} if i == at else r for i, r in enumerate(records)]


def deleted(records: Records, at: int) -> Records:
    return records[:at] + records[at + 1 :]


def tail_cut(records: Records, at: int) -> Records:
    return records[:at]


def relinked(records: Records, at: int) -> Records:
    return [{**r, "prev": "f" * 64} if i == at else r for i, r in enumerate(records)]


DAMAGE: dict[str, Callable[[Records, int], Records]] = {
    "edited": edited,
    "deleted": deleted,
    "cut": tail_cut,
    "relinked": relinked,
}


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 10_000])
def test_an_intact_trail_of_two_nodes_verifies_in_any_chunk_size(chunk: int) -> None:
    records = chain("gw-a", 23) + chain("gw-b", 5)
    marks = checkpoints(records, 5, 7, 14, 23)

    result = chunked(records, marks, chunk)

    assert result.intact, result.problems
    assert (result.records, result.checkpoints, result.nodes) == (28, 5, {"gw-a": 23, "gw-b": 5})


@pytest.mark.parametrize("chunk", [2, 3, 7])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_at_every_position_is_named_as_whole_verification_names_it(chunk: int, damage: str) -> None:
    records = chain("gw-a", 17)
    marks = checkpoints(records, 6, 12, 17)
    for at in range(len(records)):
        damaged = DAMAGE[damage](records, at)
        expected = verify(damaged, marks, KEYS)
        assert found(chunked(damaged, marks, chunk)) == found(expected), (damage, at)


@pytest.mark.parametrize("chunk", [2, 5])
def test_moved_and_duplicated_records_are_found_across_chunks(chunk: int) -> None:
    records = chain("gw-a", 12)
    marks = checkpoints(records, 12)
    for at in range(len(records) - 1):
        swapped = [*records[:at], records[at + 1], records[at], *records[at + 2 :]]
        assert not chunked(swapped, marks, chunk).intact, ("swapped", at)
        doubled = [*records[: at + 1], records[at], *records[at + 1 :]]
        assert not chunked(doubled, marks, chunk).intact, ("doubled", at)
        late = [*records[:at], *records[at + 1 :], records[at]]
        assert not chunked(late, marks, chunk).intact, ("late", at)


def test_an_unknown_key_a_forged_signature_and_a_purged_start(tmp_path: Path) -> None:
    records = chain("gw-a", 9)
    marks = checkpoints(records, 4, 9)
    other = CheckpointSigner(bytes(32), "k2").checkpoint("gw-a", 9, records[-1]["hash"], "t")
    forged = {**marks[0], "head": records[2]["hash"]}

    assert found(chunked(records, [*marks, other], 2)) == {("bad_checkpoint", "gw-a", 9)}
    assert found(chunked(records, [forged, marks[1]], 2)) == {("bad_checkpoint", "gw-a", 4)}
    # Records 1-4 purged: checkpoint 4 anchors the rest; without it the start is unanchored.
    assert chunked(records[4:], marks, 2).intact
    assert found(chunked(records[4:], marks[1:], 2)) == {("unanchored", "gw-a", 5)}


@pytest.mark.anyio
async def test_the_database_is_verified_a_page_at_a_time(tmp_path: Path) -> None:
    url = database_url_for(None, str(tmp_path / "data"))
    upgrade(url)
    engine = create_engine_for(url)
    try:
        store = SqlAuditStore(engine)
        for node in ("gw-a", "gw-b"):
            await store.append(node, [{"time": "2026-11-23T10:00:00.000Z", "n": i} for i in range(11)])
        for node, seq in (("gw-a", 3), ("gw-a", 8), ("gw-b", 11)):
            record = await store.get(node, seq)
            assert record is not None
            await store.add_checkpoint(SIGNER.checkpoint(node, seq, record["hash"], "t"))
        assert await store.purge_through("gw-a", 3) == 3

        result = await verify_store(store, KEYS, chunk=3)
        assert result.intact, result.problems
        # The checkpoint that anchors gw-a's purged start is read; none older would be.
        assert (result.records, result.checkpoints, result.nodes) == (19, 3, {"gw-a": 11, "gw-b": 11})

        with engine.begin() as conn:
            conn.execute(
                sa.delete(AUDIT_RECORDS).where(AUDIT_RECORDS.c.node == "gw-a", AUDIT_RECORDS.c.seq == 7)
            )
            conn.execute(
                sa.update(AUDIT_RECORDS)
                .where(AUDIT_RECORDS.c.node == "gw-b", AUDIT_RECORDS.c.seq == 6)
                .values(record="not json")
            )
            conn.execute(
                sa.delete(AUDIT_RECORDS).where(AUDIT_RECORDS.c.node == "gw-b", AUDIT_RECORDS.c.seq >= 10)
            )
        result = await verify_store(store, KEYS, chunk=3)
        assert found(result) == {
            ("gap", "gw-a", 8),
            ("edited", "gw-b", 6),
            ("broken_link", "gw-b", 6),
            ("truncated", "gw-b", 11),
        }
    finally:
        engine.dispose()
