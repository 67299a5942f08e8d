"""Run the official A2A TCK (a2aproject/a2a-tck, branch 1.0-dev) against an A2A agent; print a JSON summary.

    python tools/a2a_tck/run.py --tck-dir /tmp/a2a-tck --tck-python /tmp/tck-venv/bin/python \\
        --sut-url http://127.0.0.1:8766/.well-known/agent-card.json \\
        [--header 'Authorization: Bearer X'] [--out results.json] [-- extra pytest args]

A local tool, not part of the test suite: the TCK lives outside the repo (see README.md beside this file).

`--sut-url` is the agent card URL or the base URL it hangs under; the TCK itself always fetches
`{base}/.well-known/agent-card.json` and then talks to the URLs the card's `supportedInterfaces` declare.

This file is also the pytest plugin that the runner loads into the TCK's own process (a copy of it, as
`tollhouse_a2a_tck_plugin`, with `-p`). The plugin
- adds each `--header` to every HTTP request the TCK sends to the SUT's origins (the card's URL and every
  interface URL the card declares). The TCK has no option for extra headers, and a reverse proxy would
  not do: the TCK reads the interface URLs from the card and calls them directly, so a proxy in front of
  the card would have to rewrite the card to stay in the path. Nothing else in the requests is changed.
  gRPC calls get no headers.
- with `--jsonrpc-exact-url` only, makes the TCK's JSON-RPC client POST to the card's JSON-RPC URL
  exactly. The stock client POSTs to that URL plus a trailing slash (`httpx` base_url + "/"), which an
  endpoint mounted at a path without one (`/a2a/jsonrpc`) answers with 404.
- tags each test in the JUnit report with its requirement level, transport and area, which the
  summary is counted from.

Exit status: 0 when nothing failed or errored, 1 when something did, 2 when the TCK could not be run.
The runner stops every process it starts: the TCK's pytest (its own process group) and a `--sut-cmd`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx
    import pytest

CARD_SUFFIX = "/.well-known/agent-card.json"
PLUGIN_MODULE = "tollhouse_a2a_tck_plugin"
TRANSPORTS = ("jsonrpc", "http_json", "grpc")
BINDING_TO_TRANSPORT = {"JSONRPC": "jsonrpc", "HTTP+JSON": "http_json", "GRPC": "grpc"}
LEVELS = ("must", "should", "may")
REASON_MAX = 300

# Environment the runner hands to the plugin inside the TCK process.
ENV_ACTIVE = "TOLLHOUSE_TCK_PLUGIN"
ENV_HEADERS = "TOLLHOUSE_TCK_HEADERS"  # JSON list of [name, value]
ENV_ORIGINS = "TOLLHOUSE_TCK_ORIGINS"  # JSON list of "scheme://host:port"
ENV_JSONRPC_EXACT = "TOLLHOUSE_TCK_JSONRPC_EXACT_URL"  # "1" to enable


class Counts(TypedDict):
    total: int
    passed: int
    failed: int
    skipped: int
    xfailed: int
    errors: int


class TestResult(TypedDict):
    test: str
    outcome: str  # passed | failed | error | skipped | xfailed
    level: str
    transport: str
    area: str
    requirement: str
    reason: str


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------


def origin_of(url: str) -> str:
    """`scheme://host:port` of a URL, with the default port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def split_sut_url(url: str) -> tuple[str, str]:
    """(base URL handed to the TCK as --sut-host, agent card URL) for a card URL or a base URL."""
    url = url.strip()
    base = url[: -len(CARD_SUFFIX)] if url.endswith(CARD_SUFFIX) else url
    base = base.rstrip("/")
    return base, base + CARD_SUFFIX


# ---------------------------------------------------------------------------------------------------------
# The pytest plugin (runs inside the TCK's process, under the TCK's Python)
# ---------------------------------------------------------------------------------------------------------


def _plugin_active() -> bool:
    return os.environ.get(ENV_ACTIVE) == "1"


def _install_header_injection(headers: list[tuple[str, str]], origins: set[str]) -> None:
    import httpx

    original_send = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if origin_of(str(request.url)) in origins:
            for name, value in headers:
                request.headers[name] = value
        return original_send(self, request, **kwargs)

    httpx.Client.send = send  # type: ignore[method-assign]


def _install_jsonrpc_exact_url() -> None:
    import importlib

    import httpx

    client_class: Any = importlib.import_module("tck.transport.jsonrpc_client").JsonRpcClient
    original_init = client_class.__init__

    def init(self: Any, base_url: str) -> None:
        original_init(self, base_url)
        exact = httpx.URL(base_url)
        with_slash = exact.raw_path.rstrip(b"/") + b"/"

        def to_exact(request: httpx.Request) -> None:
            if request.url.raw_path == with_slash and exact.raw_path != with_slash:
                request.url = request.url.copy_with(raw_path=exact.raw_path)

        self._client.event_hooks["request"].append(to_exact)

    client_class.__init__ = init


def pytest_configure(config: pytest.Config) -> None:
    """Plugin hook: install the header injection and, if asked, the JSON-RPC URL fix."""
    if not _plugin_active():
        return
    headers = [(str(n), str(v)) for n, v in json.loads(os.environ.get(ENV_HEADERS, "[]"))]
    origins = set(json.loads(os.environ.get(ENV_ORIGINS, "[]")))
    if headers:
        _install_header_injection(headers, origins)
    if os.environ.get(ENV_JSONRPC_EXACT) == "1":
        _install_jsonrpc_exact_url()


_NAME_SUFFIX_TRANSPORT = (
    ("_jsonrpc", "jsonrpc"),
    ("_rest", "http_json"),
    ("_http_json", "http_json"),
    ("_grpc", "grpc"),
)
_CLASS_PREFIX_TRANSPORT = (
    ("testjsonrpc", "jsonrpc"),
    ("testrest", "http_json"),
    ("testhttpjson", "http_json"),
    ("testgrpc", "grpc"),
)
_REQUIREMENT_ID_RE = re.compile(r"([A-Z][A-Z0-9_]+-[A-Z]+-\d+[a-z]?)")


def _item_requirement(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        requirement = callspec.params.get("requirement")
        rid = getattr(requirement, "id", None)
        if isinstance(rid, str):
            return rid
    for owner in (getattr(item, "function", None), getattr(item, "cls", None)):
        match = _REQUIREMENT_ID_RE.search(getattr(owner, "__doc__", None) or "")
        if match:
            return match.group(1)
    return ""


def _item_level(item: pytest.Item, requirement: str) -> str:
    for level in LEVELS:
        if item.get_closest_marker(level) is not None:
            return level
    if requirement:
        with suppress(Exception):
            import importlib

            registry: Any = importlib.import_module("tck.requirements.registry")
            return str(registry.get_requirement_by_id(requirement).level.value).lower()
    return "unspecified"


def _item_transport(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        transport = callspec.params.get("transport")
        if isinstance(transport, str):
            return transport
    for transport in TRANSPORTS:
        if item.get_closest_marker(transport) is not None:
            return transport
    # Tests written once per transport say so in their own or their class's name.
    name = getattr(item, "originalname", item.name).lower()
    cls = (getattr(getattr(item, "cls", None), "__name__", "") or "").lower()
    for suffix, transport in _NAME_SUFFIX_TRANSPORT:
        if name.endswith(suffix):
            return transport
    for prefix, transport in _CLASS_PREFIX_TRANSPORT:
        if cls.startswith(prefix):
            return transport
    path = item.nodeid.split("::", 1)[0]
    if "/agent_card/" in path:
        return "agent_card"
    for transport in TRANSPORTS:
        if f"/{transport}/" in path:
            return transport
    return "any"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[Any]) -> None:
    """Plugin hook: record level, transport, area and requirement as JUnit properties of each test."""
    if not _plugin_active():
        return
    for item in items:
        requirement = _item_requirement(item)
        parts = item.nodeid.split("::", 1)[0].split("/")
        area = parts[2] if len(parts) > 3 and parts[:2] == ["tests", "compatibility"] else "other"
        item.user_properties.extend(
            [
                ("tck_level", _item_level(item, requirement)),
                ("tck_transport", _item_transport(item)),
                ("tck_area", area),
                ("tck_requirement", requirement),
                ("tck_nodeid", item.nodeid),
            ]
        )


# ---------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------


class RunnerError(Exception):
    """The TCK could not be run."""


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in text for c in "\r\n"):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Run the A2A TCK against an A2A agent and print a JSON summary.",
        epilog="Arguments after `--` go to the TCK's pytest as they are (e.g. -- -k CORE-SEND).",
    )
    ap.add_argument("--tck-dir", type=Path, required=True, help="work tree of a2aproject/a2a-tck (1.0-dev)")
    ap.add_argument("--tck-python", default=sys.executable, help="Python of the venv the TCK is installed in")
    sut = ap.add_mutually_exclusive_group(required=True)
    sut.add_argument("--sut-url", help="agent card URL (…/.well-known/agent-card.json) or its base URL")
    sut.add_argument(
        "--sut-cmd",
        help="command that starts the SUT and prints 'READY <url>' on stdout; stopped at the end",
    )
    ap.add_argument("--sut-cwd", type=Path, default=None, help="working directory for --sut-cmd")
    ap.add_argument(
        "--header",
        action="append",
        default=[],
        type=parse_header,
        metavar="'NAME: VALUE'",
        help="header added to every request to the SUT (repeatable)",
    )
    ap.add_argument(
        "--transport",
        default=None,
        help="comma-separated subset of jsonrpc,http_json,grpc (default: all the card declares, "
        "less grpc when --header is given)",
    )
    ap.add_argument("--level", choices=LEVELS, default=None, help="run only one RFC 2119 level")
    ap.add_argument(
        "--jsonrpc-exact-url",
        action="store_true",
        help="POST JSON-RPC to the card's URL as declared instead of the stock TCK's URL + '/'",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON summary to this file")
    ap.add_argument(
        "--reports-dir",
        type=Path,
        default=None,
        help="keep the TCK's reports (JUnit, compatibility.json/html, pytest-html) here",
    )
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds before the TCK run is stopped")
    ap.add_argument(
        "--quiet", action="store_true", help="do not pass the TCK's (or --sut-cmd's) output to stderr"
    )
    ap.add_argument("pytest_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.transport:
        unknown = set(args.transport.split(",")) - set(TRANSPORTS)
        if unknown:
            ap.error(f"unknown transport(s): {', '.join(sorted(unknown))}")
    return args


def _log(message: str) -> None:
    print(f"[a2a-tck] {message}", file=sys.stderr, flush=True)


def _stop_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop a process started with start_new_session=True, with its process group, while it runs.

    Once the leader has been reaped its pid (the group's id) may be reused, so an exited one is left alone.
    """
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def started_sut(cmd: str, cwd: Path | None, quiet: bool, timeout: float = 60.0) -> Iterator[str]:
    """Start `cmd`, wait for its 'READY <url>' line, yield the URL; stop it on the way out."""
    proc = subprocess.Popen(
        shlex.split(cmd),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else None,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        found: list[str] = []

        def read_ready() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not found and line.startswith("READY "):
                    found.append(line.split(None, 1)[1].strip())
            # keep draining so the SUT never blocks on a full pipe

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while not found:
            if proc.poll() is not None:
                raise RunnerError(f"--sut-cmd exited with {proc.returncode} before printing READY")
            if time.monotonic() > deadline:
                raise RunnerError(f"--sut-cmd printed no READY line within {timeout:.0f}s")
            time.sleep(0.05)
        _log(f"SUT started (pid {proc.pid}): {found[0]}")
        yield found[0]
    finally:
        _stop_group(proc)


def fetch_card(card_url: str, headers: list[tuple[str, str]], timeout: float = 30.0) -> dict[str, Any]:
    """GET the agent card (retrying while the SUT comes up)."""
    if urlsplit(card_url).scheme not in ("http", "https"):
        raise RunnerError(f"not an http(s) URL: {card_url}")
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        request = urllib.request.Request(card_url, headers=dict(headers))  # noqa: S310 (scheme checked)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                card = json.loads(response.read())
            if not isinstance(card, dict):
                raise RunnerError(f"agent card at {card_url} is not a JSON object")
            return card
        except urllib.error.HTTPError as exc:
            raise RunnerError(f"GET {card_url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
            time.sleep(0.2)
    raise RunnerError(f"GET {card_url}: {last}")


def tck_commit(tck_dir: Path) -> str:
    """The TCK commit: `.tck-commit` in the work tree (written when it was exported), else its git HEAD."""
    marker = tck_dir / ".tck-commit"
    if marker.is_file():
        return marker.read_text().strip()
    if (tck_dir / ".git").exists():
        with suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["git", "-C", str(tck_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0:
                return out.stdout.strip()
    return "unknown"


def declared_transports(card: dict[str, Any]) -> dict[str, str]:
    """transport name → URL of the first interface per binding (as the TCK picks them)."""
    found: dict[str, str] = {}
    for iface in card.get("supportedInterfaces") or []:
        transport = BINDING_TO_TRANSPORT.get(str(iface.get("protocolBinding", "")))
        if transport and transport not in found:
            found[transport] = str(iface.get("url", ""))
    return found


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            line = re.sub(r"^(E\s+)?AssertionError:\s*", "", line)
            line = re.sub(r"\s*\(see specification/[^)]*\)", "", line)
            return line if len(line) <= REASON_MAX else line[: REASON_MAX - 1] + "…"
    return ""


# TCK assertion messages start with the requirement that failed: "CORE-SEND-001 [title] ...".
_FAILED_REQUIREMENT_RE = re.compile(r"([A-Z][A-Z0-9_]+-[A-Z]+-\d+[a-z]?) \[")


def parse_junit(path: Path) -> list[TestResult]:
    results: list[TestResult] = []
    root = ET.parse(path).getroot()  # noqa: S314 (our own pytest's report)
    for case in root.iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        nodeid = props.get("tck_nodeid") or f"{case.get('classname')}::{case.get('name')}"
        outcome, reason = "passed", ""
        for child in case:
            if child.tag == "failure":
                outcome, reason = "failed", _first_line(child.get("message")) or _first_line(child.text)
            elif child.tag == "error":
                outcome = "error"
                reason = _first_line(child.get("message")) + " — " + _last_error_line(child.text)
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                reason = _first_line(child.get("message"))
        failed_requirement = _FAILED_REQUIREMENT_RE.match(reason)
        results.append(
            TestResult(
                test=nodeid,
                outcome=outcome,
                level=props.get("tck_level", "unspecified"),
                transport=props.get("tck_transport", "any"),
                area=props.get("tck_area", "other"),
                requirement=failed_requirement.group(1)
                if failed_requirement
                else props.get("tck_requirement", ""),
                reason=reason,
            )
        )
    return results


def _last_error_line(text: str | None) -> str:
    lines = [ln[1:].strip() for ln in (text or "").splitlines() if ln.startswith("E ")]
    return _first_line(lines[-1]) if lines else ""


def _zero() -> Counts:
    return Counts(total=0, passed=0, failed=0, skipped=0, xfailed=0, errors=0)


_OUTCOME_KEY = {"passed": "passed", "failed": "failed", "error": "errors", "skipped": "skipped"}


def _add(counts: Counts, outcome: str) -> None:
    counts["total"] += 1
    key = _OUTCOME_KEY.get(outcome, "xfailed")
    counts[key] += 1  # type: ignore[literal-required]


def summarize(
    results: list[TestResult],
    *,
    sut: str,
    sut_host: str,
    commit: str,
    transports: list[str],
    returncode: int,
    compatibility: dict[str, Any] | None,
    header_names: list[str],
    jsonrpc_exact_url: bool,
) -> dict[str, Any]:
    overall = _zero()
    by_category: dict[str, Counts] = {}
    by_transport: dict[str, Counts] = {}
    by_area: dict[str, Counts] = {}
    for r in results:
        _add(overall, r["outcome"])
        _add(by_category.setdefault(r["level"], _zero()), r["outcome"])
        _add(by_transport.setdefault(r["transport"], _zero()), r["outcome"])
        _add(by_area.setdefault(r["area"], _zero()), r["outcome"])

    def listed(*outcomes: str) -> list[dict[str, str]]:
        keys = ("test", "outcome", "level", "transport", "requirement", "reason")
        return [{k: r[k] for k in keys} for r in results if r["outcome"] in outcomes]  # type: ignore[literal-required]

    summary: dict[str, Any] = {
        "sut": sut,
        "sut_host": sut_host,
        "tck_commit": commit,
        "transports": transports,
    }
    summary.update(overall)
    summary.update(
        {
            "failed_tests": listed("failed", "error"),
            "xfailed_tests": listed("xfailed"),
            "by_category": dict(sorted(by_category.items())),
            "by_transport": dict(sorted(by_transport.items())),
            "by_area": dict(sorted(by_area.items())),
            "tck_compatibility": (compatibility or {}).get("summary"),
            "tck_per_transport": (compatibility or {}).get("per_transport"),
            "pytest_returncode": returncode,
            "runner": {"headers": header_names, "jsonrpc_exact_url": jsonrpc_exact_url},
        }
    )
    return summary


def run_tck(args: argparse.Namespace, sut_url: str) -> dict[str, Any]:
    tck_dir: Path = args.tck_dir.resolve()
    if not (tck_dir / "tests" / "compatibility" / "conftest.py").is_file():
        raise RunnerError(f"{tck_dir} is not an a2a-tck work tree (no tests/compatibility/conftest.py)")
    headers: list[tuple[str, str]] = args.header
    sut_host, card_url = split_sut_url(sut_url)

    card = fetch_card(card_url, headers)
    declared = declared_transports(card)
    if not declared:
        raise RunnerError("the agent card declares no JSONRPC, HTTP+JSON or GRPC interface")
    for transport, url in declared.items():
        _log(f"card declares {transport}: {url}")
    if args.transport:
        transports = [t for t in args.transport.split(",") if t]
    else:
        transports = [t for t in TRANSPORTS if t in declared and not (t == "grpc" and headers)]
        if headers and "grpc" in declared:
            _log("skipping grpc: --header is not added to gRPC calls (pass --transport to force it)")
    if "jsonrpc" in transports and not args.jsonrpc_exact_url:
        path = urlsplit(declared.get("jsonrpc", "")).path
        if not path.endswith("/"):
            _log(
                f"note: the stock TCK POSTs JSON-RPC to {path or ''}/ (with a trailing slash); "
                "pass --jsonrpc-exact-url if the SUT serves only the URL its card declares"
            )
    origins = sorted({origin_of(card_url), *(origin_of(u) for u in declared.values() if u)})

    with tempfile.TemporaryDirectory(prefix="a2a-tck-run-") as tmp:
        tmp_path = Path(tmp)
        shutil.copyfile(Path(__file__).resolve(), tmp_path / f"{PLUGIN_MODULE}.py")
        reports = (args.reports_dir or tmp_path / "reports").resolve()
        reports.mkdir(parents=True, exist_ok=True)
        junit = reports / "junitreport.xml"
        junit.unlink(missing_ok=True)
        cmd = [
            args.tck_python,
            "-m",
            "pytest",
            "tests/compatibility/",
            f"--sut-host={sut_host}",
            f"--transport={','.join(transports)}",
            "--tb=short",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            PLUGIN_MODULE,
            f"--compatibility-report={reports / 'compatibility'}",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit2",
            "-o",
            "junit_logging=no",
        ]
        if args.reports_dir:
            cmd += [f"--html={reports / 'tck_report.html'}", "--self-contained-html"]
        if args.level:
            cmd += ["-m", args.level]
        cmd += args.pytest_args
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(
            {
                "PYTHONPATH": str(tmp_path),
                "PYTHONDONTWRITEBYTECODE": "1",
                ENV_ACTIVE: "1",
                ENV_HEADERS: json.dumps([list(h) for h in headers]),
                ENV_ORIGINS: json.dumps(origins),
                ENV_JSONRPC_EXACT: "1" if args.jsonrpc_exact_url else "",
            }
        )
        _log("running: " + shlex.join(cmd) + f"  (cwd {tck_dir})")
        proc = subprocess.Popen(
            cmd,
            cwd=tck_dir,
            env=env,
            stdout=subprocess.DEVNULL if args.quiet else sys.stderr,
            stderr=subprocess.STDOUT if not args.quiet else subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired as exc:
            raise RunnerError(f"the TCK run took longer than {args.timeout:.0f}s and was stopped") from exc
        finally:
            _stop_group(proc)
        if not junit.is_file():
            raise RunnerError(f"the TCK wrote no JUnit report (pytest exit status {returncode})")
        results = parse_junit(junit)
        compat_path = reports / "compatibility.json"
        compatibility = json.loads(compat_path.read_text()) if compat_path.is_file() else None

    return summarize(
        results,
        sut=sut_url,
        sut_host=sut_host,
        commit=tck_commit(tck_dir),
        transports=transports,
        returncode=returncode,
        compatibility=compatibility,
        header_names=[name for name, _ in headers],
        jsonrpc_exact_url=args.jsonrpc_exact_url,
    )


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM, and SIGINT even where the shell started us with it ignored, unwind through the `finally`
    # blocks that stop the TCK and the SUT.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    try:
        if args.sut_cmd:
            with started_sut(args.sut_cmd, args.sut_cwd, args.quiet) as url:
                summary = run_tck(args, url)
        else:
            summary = run_tck(args, args.sut_url)
    except RunnerError as exc:
        _log(f"error: {exc}")
        return 2
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if summary["failed"] == 0 and summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
