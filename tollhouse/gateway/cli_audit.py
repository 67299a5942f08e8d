"""CLI commands for the audit trail: `audit verify|export|tail|status|checkpoint` (docs/audit.md).

`audit verify FILE` runs here, offline: it needs only the export and the checkpoint keys, so an
auditor can check a copy without trusting the gateway that wrote it. The keys given with
`--key` are pinned; without them the file's own key lines are used, which proves only that
the file is consistent with itself (said on stderr). Every other command asks the admin API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx2

from tollhouse import __version__
from tollhouse.gateway.cli_common import (
    API_PREFIX,
    TIMEOUT_SECONDS,
    CliError,
    UsageError,
    admin_client,
    clean,
    fields,
    items_of,
    list_of,
    print_json,
    sub_document,
    table,
    warn,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from tollhouse.audit.chain import Verification
    from tollhouse.gateway.cli_common import AdminClient

__all__ = ["add_audit_commands"]

# Verifying a large trail takes the gateway a while before it answers; an export streams.
_VERIFY_SECONDS = 3600.0
_EXPORT_READ_SECONDS = 300.0
_FILTERS = ("subject", "team", "client_id", "server", "tool", "outcome", "trace_id")
# `tail --follow` asks again for this much before the newest record seen: records of other
# nodes can be committed a little out of time order.
_LOOKBACK = timedelta(seconds=10)


# --- audit verify ------------------------------------------------------------------------------


def _key_option(text: str) -> tuple[str, Ed25519PublicKey]:
    from tollhouse.audit.chain import public_key_from_text

    kid, sep, value = text.partition("=")
    if not sep or not kid:
        raise argparse.ArgumentTypeError("expected KEY_ID=PUBLIC_KEY")
    try:
        return kid, public_key_from_text(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"key {kid!r}: {exc}") from None


def audit_verify(args: argparse.Namespace) -> int:
    if args.file is None:
        if args.key:
            raise UsageError("--key needs FILE: the gateway verifies its database with its own keys")
        with _streamed(args, "/audit/verify", {}, read_seconds=_VERIFY_SECONDS) as response:
            try:
                result = json.loads(response.read())
            except ValueError:
                result = None
        if not isinstance(result, dict):
            raise CliError("the gateway did not answer with a verification (is it a tollhouse gateway?)")
        return _report(args, result)
    with _opened(args.file) as stream:
        keys, checkpoints = _scan(stream, args.file)
        if args.key:
            keys = dict(args.key)
        else:
            warn(
                f"verifying with the {len(keys)} key(s) found in {args.file} itself: this shows the file is "
                "consistent, not who signed it; pin the keys with --key KEY_ID=PUBLIC_KEY"
            )
        stream.seek(0)
        verification = _verify_file(stream, keys, checkpoints)
    return _report(
        args,
        {
            "intact": verification.intact,
            "records": verification.records,
            "checkpoints": verification.checkpoints,
            "nodes": verification.nodes,
            "problems": [
                {"kind": p.kind, "node": p.node, "seq": p.seq, "detail": p.detail}
                for p in verification.problems
            ],
        },
    )


@contextlib.contextmanager
def _opened(name: str) -> Iterator[IO[bytes]]:
    """The export, seekable (standard input is spooled to a temporary file: it is read twice)."""
    if name == "-":
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.seek(0)
            yield spool
        return
    try:
        stream = open(name, "rb")  # noqa: SIM115 - closed below, after both passes
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror}") from None
    with stream:
        yield stream


def _lines(stream: IO[bytes], name: str) -> Iterator[tuple[int, str, Any]]:
    """(line number, kind, value) of each line: kind is key, checkpoint or record.

    Raises:
        CliError: a line that is not a JSON object (in an export that is itself a sign of tampering).
    """
    for number, raw in enumerate(stream, 1):
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            value = None
        if not isinstance(value, dict):
            raise CliError(
                f"{name}, line {number}: not a JSON object; the export is damaged or was tampered with"
            )
        if len(value) == 1 and isinstance(value.get("key"), dict):
            yield number, "key", value["key"]
        elif len(value) == 1 and isinstance(value.get("checkpoint"), dict):
            yield number, "checkpoint", value["checkpoint"]
        else:
            yield number, "record", value


def _scan(stream: IO[bytes], name: str) -> tuple[dict[str, Ed25519PublicKey], list[dict[str, Any]]]:
    """First pass: the file's keys and checkpoints (and every line checked for being JSON)."""
    from tollhouse.audit.chain import public_key_from_text

    keys: dict[str, Ed25519PublicKey] = {}
    checkpoints: list[dict[str, Any]] = []
    for number, kind, value in _lines(stream, name):
        if kind == "key":
            try:
                keys[str(value["key_id"])] = public_key_from_text(str(value["public_key"]))
            except (KeyError, ValueError):
                raise CliError(f"{name}, line {number}: not a valid key line") from None
        elif kind == "checkpoint":
            checkpoints.append(value)
    return keys, checkpoints


def _verify_file(
    stream: IO[bytes], keys: dict[str, Ed25519PublicKey], checkpoints: list[dict[str, Any]]
) -> Verification:
    """Second pass: the records, a chunk at a time, against the checkpoints."""
    from tollhouse.audit.verifier import ChainVerifier

    verifier = ChainVerifier(keys)
    for checkpoint in checkpoints:
        verifier.add_checkpoint(checkpoint)
    for _, kind, value in _lines(stream, "the export"):
        if kind == "record":
            verifier.add(value)
    return verifier.finish()


def _report(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """Print a verification (summary and one line per problem); 0 only when intact."""
    if args.json:
        print_json(result)
        return 0 if result.get("intact") is True else 1
    nodes = sub_document(result, "nodes")
    chains = ", ".join(f"{clean(n)}#{clean(seq)}" for n, seq in sorted(nodes.items())) or "none"
    problems = list_of(result, "problems")
    omitted = result.get("problems_omitted") or 0
    verdict = (
        "intact" if result.get("intact") is True else f"NOT intact, {len(problems) + omitted} problem(s)"
    )
    print(
        f"records {result.get('records', 0)}, checkpoints {result.get('checkpoints', 0)}, "
        f"nodes {len(nodes)} ({chains}): {verdict}"
    )
    for p in problems:
        print(
            f"{clean(p.get('kind'))} {clean(p.get('node'))} {clean(p.get('seq'))}: {clean(p.get('detail'))}"
        )
    if omitted:
        print(f"… and {omitted} more")
    return 0 if result.get("intact") is True else 1


# --- audit export ------------------------------------------------------------------------------


def audit_export(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("since", args.since), ("until", args.until)) if v}
    with _streamed(args, "/audit/export", params, read_seconds=_EXPORT_READ_SECONDS) as response:
        if args.out is None:
            out = getattr(sys.stdout, "buffer", None)
            for chunk in response.iter_bytes():
                if out is not None:
                    out.write(chunk)
                else:
                    sys.stdout.write(chunk.decode("utf-8"))
            sys.stdout.flush()
            return 0
        _write_atomically(args.out, response.iter_bytes())
    return 0


def _write_atomically(name: str, chunks: Iterator[bytes]) -> None:
    """Write `chunks` to `name` only if all of them arrive: a cut-off export could look intact."""
    target = Path(name)
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as exc:
        raise CliError(f"cannot write {name}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(partial, target)
    except OSError as exc:
        raise CliError(f"cannot write {name}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


@contextlib.contextmanager
def _streamed(
    args: argparse.Namespace, path: str, params: dict[str, str], *, read_seconds: float
) -> Iterator[httpx2.Response]:
    """GET `path` from the admin API as a stream, with a read deadline long enough for it.

    Raises:
        CliError: the gateway is unreachable, answered with an error, or the stream broke off.
    """
    with admin_client(args) as api:  # resolves --url/--token (and refuses a bad URL) as every command does
        headers = {"User-Agent": f"tollhouse-cli/{__version__}"}
        if api.token:
            headers["Authorization"] = f"Bearer {api.token}"
        timeout = httpx2.Timeout(TIMEOUT_SECONDS, read=read_seconds)
        # trust_env=False: a proxy variable must not divert admin credentials.
        with httpx2.Client(
            base_url=api.url + API_PREFIX, headers=headers, timeout=timeout, trust_env=False
        ) as http:
            try:
                with http.stream("GET", path, params=params) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise CliError(_problem(api, response))
                    yield response
            except httpx2.ConnectError:
                raise CliError(f"cannot reach the gateway at {api.url} (is it running?)") from None
            except httpx2.TimeoutException:
                raise CliError(f"the gateway at {api.url} stopped answering") from None
            except httpx2.HTTPError as exc:
                raise CliError(f"request to the gateway at {api.url} failed: {clean(str(exc))}") from None


def _problem(api: AdminClient, response: httpx2.Response) -> str:
    return api.problem(response)  # the same one-line message as every other command


# --- audit tail --------------------------------------------------------------------------------


def _filter_params(args: argparse.Namespace) -> dict[str, str]:
    return {name: getattr(args, name) for name in _FILTERS if getattr(args, name)}


def _key(record: dict[str, Any]) -> tuple[str, str, int]:
    seq = record.get("seq")
    return str(record.get("time", "")), str(record.get("node", "")), seq if isinstance(seq, int) else 0


def _line(record: dict[str, Any]) -> str:
    who = sub_document(record, "who")
    what = sub_document(record, "what")
    outcome = sub_document(record, "outcome")
    if what.get("server") or what.get("tool"):
        target = f"{clean(what.get('server'))}/{clean(what.get('tool'))}"
    else:
        target = clean(what.get("target"))
    result = clean(outcome.get("result"))
    if outcome.get("code") is not None:
        result += f" ({clean(outcome.get('code'))})"
    return "  ".join(
        [
            clean(record.get("time")),
            f"{clean(record.get('node'))}#{clean(record.get('seq'))}",
            clean(record.get("action")),
            clean(who.get("subject") or who.get("source_ip")),
            target,
            result,
        ]
    )


def _emit(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    for record in records:
        # ensure_ascii (the default) escapes control characters, so record text cannot drive the terminal.
        print(json.dumps(record, separators=(",", ":")) if args.json else _line(record), flush=True)


def _newest(api: AdminClient, params: dict[str, str], count: int) -> list[dict[str, Any]]:
    """Up to `count` newest records matching `params`, newest first."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(found) < count:
        page = api.request(
            "GET",
            "/audit/records",
            params={
                **params,
                "limit": str(min(500, count - len(found))),
                **({"cursor": cursor} if cursor else {}),
            },
        )
        found.extend(items_of(page))
        cursor = page.get("next_cursor") if isinstance(page.get("next_cursor"), str) else None
        if cursor is None:
            break
    return found[:count]


def poll_newer(
    api: AdminClient, params: dict[str, str], seen: dict[tuple[str, int], str]
) -> list[dict[str, Any]]:
    """Records not in `seen` (node, seq -> time) since a little before the newest seen, oldest first.

    `seen` is updated, and forgets what is older than the look-back.
    """
    query = dict(params)
    if seen:
        newest = max(datetime.fromisoformat(t) for t in seen.values())
        since = newest - _LOOKBACK
        query["since"] = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        for place, when in list(seen.items()):
            if datetime.fromisoformat(when) < since:
                del seen[place]
    fresh: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = api.request(
            "GET",
            "/audit/records",
            params={**query, "limit": "500", **({"cursor": cursor} if cursor else {})},
        )
        items = items_of(page)
        fresh.extend(r for r in items if (str(r.get("node")), _key(r)[2]) not in seen)
        cursor = page.get("next_cursor") if isinstance(page.get("next_cursor"), str) else None
        if cursor is None or not seen:  # the first poll of an empty tail shows one page
            break
    fresh.sort(key=_key)
    for record in fresh:
        seen[(str(record.get("node")), _key(record)[2])] = str(record.get("time"))
    return fresh


def audit_tail(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError("--limit must be 0 or more")
    if args.interval <= 0:
        raise UsageError("--interval must be more than 0")
    params = _filter_params(args)
    with admin_client(args) as api:
        records = list(reversed(_newest(api, params, args.limit))) if args.limit else []
        _emit(args, records)
        if not args.follow:
            return 0
        seen = {(str(r.get("node")), _key(r)[2]): str(r.get("time")) for r in records}
        if not seen:  # start from now: what exists already was asked for with --limit
            seen = {("", 0): datetime.now(UTC).isoformat()}
        while True:
            time.sleep(args.interval)
            _emit(args, poll_newer(api, params, seen))


# --- audit status, checkpoint ------------------------------------------------------------------


def audit_status(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        status = api.request("GET", "/audit/status")
    if args.json:
        print_json(status)
        return 0
    fields(
        [
            ("node", clean(status.get("node"))),
            ("healthy", "yes" if status.get("healthy") else "NO"),
            ("queued", status.get("queued")),
            ("written", status.get("written")),
            ("dropped", status.get("dropped")),
            ("failures", status.get("failures")),
            ("checkpoints", status.get("checkpoints")),
            ("since commit", clean(status.get("seconds_since_commit"))),
        ]
    )
    marks = {c.get("node"): c for c in list_of(status, "last_checkpoints") if isinstance(c, dict)}
    heads = [h for h in list_of(status, "heads") if isinstance(h, dict)]
    print()
    table(
        ("NODE", "HEAD", "LAST RECORD", "CHECKPOINT", "CHECKPOINT TIME", "KEY"),
        [
            [
                h.get("node"),
                h.get("seq"),
                h.get("time"),
                marks.get(h.get("node"), {}).get("seq"),
                marks.get(h.get("node"), {}).get("time"),
                marks.get(h.get("node"), {}).get("key_id"),
            ]
            for h in heads
        ],
    )
    for key in list_of(status, "keys"):
        if isinstance(key, dict):
            print(f"key {clean(key.get('key_id'))}={clean(key.get('public_key'))}")
    return 0


def audit_checkpoint(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        answer = api.request("POST", "/audit/checkpoint")
    if args.json:
        print_json(answer)
        return 0
    checkpoint = answer.get("checkpoint")
    if not isinstance(checkpoint, dict):
        print("nothing to sign: this node's chain is empty")
        return 0
    print(
        f"checkpoint {clean(checkpoint.get('node'))}#{clean(checkpoint.get('seq'))} "
        f"head {clean(checkpoint.get('head'))} signed with key {clean(checkpoint.get('key_id'))}"
    )
    return 0


def add_audit_commands(branch: Any, leaf: Any) -> None:
    """Register `tollhouse audit …` (`branch`/`leaf` are build_parser's helpers)."""
    audit = branch("audit", "the audit trail: verify, export, tail")
    verify = leaf(
        audit,
        "verify",
        audit_verify,
        "check the trail's hash chains and signed checkpoints: an export FILE offline, or the "
        "gateway's database; exits 0 only if intact",
        with_json=True,
    )
    verify.add_argument("file", nargs="?", metavar="FILE", help="a JSONL export ('-': standard input)")
    verify.add_argument(
        "--key",
        action="append",
        type=_key_option,
        metavar="KEY_ID=PUBLIC_KEY",
        help="a trusted checkpoint key (repeatable; `audit status` prints them as key KEY_ID=PUBLIC_KEY); "
        "the file's own key lines are then ignored",
    )
    export = leaf(audit, "export", audit_export, "write the trail (JSONL: keys, records, checkpoints)")
    export.add_argument("--since", metavar="TIME", help="RFC 3339; records at or after it")
    export.add_argument("--until", metavar="TIME", help="RFC 3339; records before it")
    export.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    tail = leaf(
        audit, "tail", audit_tail, "the newest records, oldest first; --follow for more", with_json=True
    )
    tail.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep polling for newer records")
    tail.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between polls")
    for name in _FILTERS:
        tail.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=name.upper().replace("_", "-"))
    leaf(
        audit,
        "status",
        audit_status,
        "the audit writer, each node's head and last checkpoint",
        with_json=True,
    )
    leaf(audit, "checkpoint", audit_checkpoint, "sign this node's head now", with_json=True)
