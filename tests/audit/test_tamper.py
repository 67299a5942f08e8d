"""Tamper evidence end to end (SECURITY_GOALS A2): export with the CLI, tamper, `audit verify` names it.

A real gateway with a real upstream makes the trail; `tollhouse audit export` writes it to a
file, and `tollhouse audit verify FILE` checks that file offline. Each kind of tampering the
goal lists — a byte edited, a record deleted, inserted or moved, the tail cut after a
checkpoint, a checkpoint forged, a key swapped — makes verify exit 1 naming the problem. Rows
edited or deleted in the gateway's own database are found by `GET /audit/verify` too.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.test_cli import run_cli
from tests.e2e.test_usage import FORBID_BLOCK, call
from tests.harness import ADMIN_TOKEN, Gateway, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.audit.chain import public_key_text, seal
from tollhouse.audit.records import rfc3339_ms
from tollhouse.registry.migrate import create_engine_for, database_url_for
from tollhouse.registry.tables import AUDIT_RECORDS

pytestmark = pytest.mark.anyio

NODE = "gw-test"
Lines = list[str]


@asynccontextmanager
async def audited(tmp_path: Path) -> AsyncIterator[tuple[Gateway, dict[str, str]]]:
    """A gateway (node gw-test) with the calc upstream, a forbid policy and two clients."""
    calc, _ = echo_upstream("calc")
    async with (
        serve(calc.streamable_http_app(), path="/mcp") as calc_url,
        running_gateway(tmp_path, node_name=NODE) as gw,
    ):
        await gw.add_server("calc", calc_url)
        response = await gw.admin.put("/policies/forbid-block", json={"cedar": FORBID_BLOCK})
        assert response.status_code == 201, response.text
        keys = {
            "platform": await gw.create_client("bot-platform", team="platform"),
            "finance": await gw.create_client("bot-finance", team="finance"),
        }
        yield gw, keys


async def checkpoint(gw: Gateway) -> dict[str, Any]:
    response = await gw.admin.post("/audit/checkpoint")
    assert response.status_code == 200, response.text
    signed: dict[str, Any] = response.json()["checkpoint"]
    return signed


def parts(lines: Lines) -> tuple[list[int], list[int], list[int]]:
    """Indexes of the key, record and checkpoint lines."""
    kinds: dict[str, list[int]] = {"key": [], "record": [], "checkpoint": []}
    for index, line in enumerate(lines):
        value = json.loads(line)
        kinds["key" if "key" in value else "checkpoint" if "checkpoint" in value else "record"].append(index)
    return kinds["key"], kinds["record"], kinds["checkpoint"]


def edit_a_byte(lines: Lines) -> Lines:
    _, records, _ = parts(lines)
    i = records[len(records) // 2]
    assert '"v":1' in lines[i]
    return [*lines[:i], lines[i].replace('"v":1', '"v":2', 1), *lines[i + 1 :]]


def delete_one(lines: Lines) -> Lines:
    i = parts(lines)[1][len(parts(lines)[1]) // 2]
    return lines[:i] + lines[i + 1 :]


def insert_one(lines: Lines) -> Lines:
    # A well-formed record sealed onto its predecessor: only the chain's numbering betrays it.
    i = parts(lines)[1][len(parts(lines)[1]) // 2]
    before = json.loads(lines[i])
    body = {k: v for k, v in before.items() if k not in ("node", "seq", "prev", "hash")}
    forged = seal({**body, "action": "forged"}, before["node"], before["seq"] + 1, before["hash"])
    return [*lines[: i + 1], json.dumps(forged, separators=(",", ":")), *lines[i + 1 :]]


def swap_two(lines: Lines) -> Lines:
    i = parts(lines)[1][len(parts(lines)[1]) // 2]
    return [*lines[:i], lines[i + 1], lines[i], *lines[i + 2 :]]


def cut_the_tail(lines: Lines) -> Lines:
    # Truncation after a checkpoint: the records from the one the last checkpoint covers onwards go.
    _, records, checkpoints = parts(lines)
    covered = json.loads(lines[checkpoints[-1]])["checkpoint"]["seq"]
    return [line for j, line in enumerate(lines) if j not in records or json.loads(line)["seq"] < covered]


def forge_a_signature(lines: Lines) -> Lines:
    i = parts(lines)[2][-1]
    value = json.loads(lines[i])
    signature = value["checkpoint"]["signature"]
    value["checkpoint"]["signature"] = ("A" if signature[0] != "A" else "B") + signature[1:]
    return [*lines[:i], json.dumps(value), *lines[i + 1 :]]


TAMPERING: dict[str, tuple[Callable[[Lines], Lines], str]] = {
    "a byte edited": (edit_a_byte, "edited"),
    "a record deleted": (delete_one, "gap"),
    "a record inserted": (insert_one, "inserted"),
    "two records swapped": (swap_two, "reordered"),
    "the tail cut after a checkpoint": (cut_the_tail, "truncated"),
    "a checkpoint's signature altered": (forge_a_signature, "bad_checkpoint"),
}


async def test_an_export_verifies_offline_and_each_kind_of_tampering_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    export = tmp_path / "audit.jsonl"
    async with audited(tmp_path) as (gw, keys):
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        for name, arguments in [
            ("calc__echo", {"text": "a"}),
            ("calc__block", {}),
            ("calc__echo", {"text": "b"}),
        ]:
            await call(gw, keys["platform"], name, arguments)
        await call(gw, keys["finance"], "calc__fail", {"message": "no"})
        assert (await gw.admin.delete("/policies/forbid-block")).status_code == 204
        await checkpoint(gw)
        await call(gw, keys["finance"], "calc__echo", {"text": "after the checkpoint"})
        await checkpoint(gw)
        code, out, err = await run_cli(capsys, *g, "audit", "export", "--out", str(export))
        assert code == 0, err
        assert out == ""
        [key] = (await gw.admin.get("/audit/keys")).json()["items"]
        code, stdout_export, err = await run_cli(capsys, *g, "audit", "export")
        assert code == 0, err
    pinned = ["--key", f"{key['key_id']}={key['public_key']}"]
    lines = export.read_text().splitlines()
    key_lines, record_lines, checkpoint_lines = parts(lines)
    # To standard output the same, plus the record of the first export (made in between).
    again = stdout_export.splitlines()
    assert again[: checkpoint_lines[0]] == lines[: checkpoint_lines[0]]
    assert json.loads(again[checkpoint_lines[0]])["action"] == "GET /admin/api/v1/audit/export"
    # Keys first, then the records of the chain in order, then the checkpoints.
    assert key_lines == [0] and checkpoint_lines == list(range(len(lines) - 2, len(lines)))
    seqs = [json.loads(lines[i])["seq"] for i in record_lines]
    assert seqs == list(range(1, len(seqs) + 1))
    assert any(json.loads(lines[i])["action"] == "tools/call" for i in record_lines)

    code, out, err = await run_cli(capsys, "audit", "verify", str(export))
    assert code == 0, out + err
    assert out.startswith(f"records {len(seqs)}, checkpoints 2, nodes 1 ({NODE}#{seqs[-1]}): intact")
    assert "key(s) found in" in err  # unpinned: the file's own keys, and it says so
    code, out, err = await run_cli(capsys, "audit", "verify", str(export), *pinned, "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == {
        "intact": True,
        "records": len(seqs),
        "checkpoints": 2,
        "nodes": {NODE: seqs[-1]},
        "problems": [],
    }

    for what, (tamper, kind) in TAMPERING.items():
        tampered = tmp_path / "tampered.jsonl"
        tampered.write_text("\n".join(tamper(lines)) + "\n")
        code, out, _ = await run_cli(capsys, "audit", "verify", str(tampered), *pinned)
        assert code == 1, what
        assert "NOT intact" in out.splitlines()[0], what
        assert any(line.startswith(f"{kind} {NODE} ") for line in out.splitlines()[1:]), (what, out)

    # A key that did not sign the checkpoints, pinned in place of the real one.
    other = public_key_text(Ed25519PrivateKey.generate().public_key())
    code, out, _ = await run_cli(
        capsys, "audit", "verify", str(export), "--key", f"{key['key_id']}={other}", "--json"
    )
    assert code == 1
    assert {p["kind"] for p in json.loads(out)["problems"]} == {"bad_checkpoint"}
    # Keys from the file are ignored once keys are pinned: a forger's own key line does not help.
    forged_key = json.dumps({"key": {"key_id": key["key_id"], "public_key": other}})
    (tmp_path / "rekeyed.jsonl").write_text("\n".join([forged_key, *lines[1:]]) + "\n")
    code, _, _ = await run_cli(capsys, "audit", "verify", str(tmp_path / "rekeyed.jsonl"), *pinned)
    assert code == 0

    # A line that is not JSON is named by its number.
    broken = [*lines[:3], lines[3][:-5], *lines[4:]]
    (tmp_path / "broken.jsonl").write_text("\n".join(broken) + "\n")
    code, out, err = await run_cli(capsys, "audit", "verify", str(tmp_path / "broken.jsonl"))
    assert code == 1 and "line 4" in err
    code, _, err = await run_cli(capsys, "audit", "verify", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "cannot read" in err
    code, _, err = await run_cli(capsys, "audit", "verify", str(export), "--key", "no-equals-sign")
    assert code == 2 and "KEY_ID=PUBLIC_KEY" in err

    # Standard input works too.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(export.read_bytes())))
    code, out, _ = await run_cli(capsys, "audit", "verify", "-", *pinned)
    assert code == 0 and out.endswith(": intact\n")


async def test_rows_edited_or_deleted_in_the_database_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with audited(tmp_path) as (gw, keys):
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        await call(gw, keys["platform"], "calc__echo", {"text": "x"}, 3, vary=True)
        await checkpoint(gw)
        verified = (await gw.admin.get("/audit/verify")).json()
        assert verified["intact"] and verified["nodes"] == {NODE: verified["records"]}
        code, out, _ = await run_cli(capsys, *g, "audit", "verify")
        assert code == 0 and out.rstrip().endswith(": intact")

        engine = create_engine_for(database_url_for(None, str(tmp_path / "data")))
        try:
            with engine.begin() as conn:
                row = AUDIT_RECORDS.c
                text = conn.execute(sa.select(row.record).where(row.node == NODE, row.seq == 2)).scalar_one()
                conn.execute(
                    sa.update(AUDIT_RECORDS)
                    .where(row.node == NODE, row.seq == 2)
                    .values(record=text.replace('"v":1', '"v":2'))
                )
                conn.execute(sa.delete(AUDIT_RECORDS).where(row.node == NODE, row.seq == 4))
        finally:
            engine.dispose()

        verified = (await gw.admin.get("/audit/verify")).json()
        assert not verified["intact"]
        assert {(p["kind"], p["seq"]) for p in verified["problems"]} == {("edited", 2), ("gap", 5)}
        code, out, _ = await run_cli(capsys, *g, "audit", "verify")
        assert code == 1
        assert f"edited {NODE} 2: the record does not match its hash" in out
        assert f"gap {NODE} 5: seq 4…4 missing" in out
        # The export of a damaged trail carries the damage: offline verification finds it too.
        export = tmp_path / "audit.jsonl"
        code, _, err = await run_cli(capsys, *g, "audit", "export", "--out", str(export))
        assert code == 0, err
        code, out, _ = await run_cli(capsys, "audit", "verify", str(export), "--json")
        assert code == 1
        assert {(p["kind"], p["seq"]) for p in json.loads(out)["problems"]} == {("edited", 2), ("gap", 5)}


async def test_an_export_window_is_anchored_by_a_checkpoint_and_verifies_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with audited(tmp_path) as (gw, keys):
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        await call(gw, keys["platform"], "calc__echo", {"text": "before"}, 2, vary=True)
        first = await checkpoint(gw)
        await call(gw, keys["finance"], "calc__echo", {"text": "inside"}, 3, vary=True)
        second = await checkpoint(gw)
        await call(gw, keys["platform"], "calc__echo", {"text": "after"}, 2, vary=True)
        await checkpoint(gw)
        records = sorted(
            (await gw.admin.get("/audit/records", params={"limit": 500})).json()["items"], key=seq_of
        )
        by_seq = {r["seq"]: r for r in records}
        # The window: from the first record after the first checkpoint, to before the second's record.
        since, until = by_seq[first["seq"] + 1]["time"], by_seq[second["seq"] + 1]["time"]
        assert by_seq[first["seq"]]["time"] < since
        [key] = (await gw.admin.get("/audit/keys")).json()["items"]
        pinned = ["--key", f"{key['key_id']}={key['public_key']}"]

        window = tmp_path / "window.jsonl"
        code, _, err = await run_cli(
            capsys, *g, "audit", "export", "--since", since, "--until", until, "--out", str(window)
        )
        assert code == 0, err
        exported = [json.loads(line) for line in window.read_text().splitlines()]
        inside = [r["seq"] for r in records if since <= r["time"] < until]
        assert [r["seq"] for r in exported if "seq" in r] == inside  # nothing outside the window
        assert inside[0] == first["seq"] + 1
        assert [c["checkpoint"]["seq"] for c in exported if "checkpoint" in c] == [
            s for s in (first["seq"], second["seq"]) if s <= inside[-1]
        ]
        code, out, _ = await run_cli(capsys, "audit", "verify", str(window), *pinned)
        assert code == 0, out

        for extra in (["--since", since], ["--until", until]):
            part = tmp_path / "part.jsonl"
            code, _, err = await run_cli(capsys, *g, "audit", "export", *extra, "--out", str(part))
            assert code == 0, err
            code, out, _ = await run_cli(capsys, "audit", "verify", str(part), *pinned)
            assert code == 0, (extra, out)

        # Each export is itself recorded, with its window.
        exports = (
            await gw.admin.get("/audit/records", params={"action": "GET /admin/api/v1/audit/export"})
        ).json()
        windows = [(r["what"].get("since"), r["what"].get("until")) for r in exports["items"]]
        assert windows == [(None, until), (since, None), (since, until)]
        assert all(r["who"]["subject"] == "admin-token" for r in exports["items"])

        code, _, err = await run_cli(capsys, *g, "audit", "export", "--since", "yesterday")
        assert code == 1 and "RFC 3339" in err
        later = rfc3339_ms(datetime.fromisoformat(until) + timedelta(days=1))
        code, _, err = await run_cli(capsys, *g, "audit", "export", "--since", later, "--until", until)
        assert code == 1 and "later than" in err


def seq_of(record: dict[str, Any]) -> int:
    seq: int = record["seq"]
    return seq
