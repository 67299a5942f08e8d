"""The official MCP conformance server suite against examples/servers/everything.py.

The slow tests run the whole active server suite of the pinned
`@modelcontextprotocol/conformance`, at its default spec versions and at 2026-07-28,
against the everything server served in-process, directly and through a real tollhouse
at `/servers/everything/mcp`, and allow no failure beyond tests/conformance_baseline.yaml.
The suite sends no credentials, so a loopback `BearerProxy` in front of the gateway adds
a client's key; it forwards Host and Origin as the suite sent them, so the gateway's own
Origin check is what `dns-rebinding-protection` tests. They need `tools/conformance/install.sh`: without the
tools they skip, except in CI (`TOLLHOUSE_TEST_REQUIRE_SERVICES=1`), where they fail.

The fast tests pin down how the harness judges results, with no suite involved.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from starlette.types import Receive, Scope, Send

from examples.servers.everything import EverythingState, build_app
from examples.servers.studio import build_app as studio_app
from tests.bearer_proxy import BearerProxy
from tests.conformance import (
    ACTIVE_SERVER_SCENARIOS,
    BASELINE,
    Check,
    ScenarioResult,
    collect,
    judge,
    load_baseline,
    missing_tools,
    run_conformance,
)
from tests.harness import running_gateway
from tests.servers import serve

SPEC_VERSIONS = [pytest.param(None, id="default"), pytest.param("2026-07-28", id="2026-07-28")]


@pytest.fixture
def conformance_tools() -> None:
    """Skip without the pinned tools; in CI their absence is a failure."""
    reason = missing_tools()
    if reason is None:
        return
    if os.environ.get("TOLLHOUSE_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; CI must install them (make conformance-tools)")
    pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_everything_passes_the_active_server_suite(
    conformance_tools: None, spec_version: str | None, tmp_path: Path
) -> None:
    state = EverythingState()
    async with serve(build_app(state), path="/mcp") as url:
        result = await run_conformance(
            url, spec_version=spec_version, out_dir=tmp_path / "results", expected_failures=BASELINE
        )
    print(result.summary())
    assert result.ok, result.report()
    assert set(result.scenarios) == ACTIVE_SERVER_SCENARIOS[spec_version]
    assert all(scenario.passed for scenario in result.scenarios.values()), result.report()
    if spec_version is None:
        # The 2025-era utilities reached the fixture, not just some default handler.
        assert state.log_level is not None
        assert state.subscribe_count >= 1
        assert state.unsubscribe_count >= 1


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_everything_through_the_gateway_passes_the_active_server_suite(
    conformance_tools: None, spec_version: str | None, tmp_path: Path
) -> None:
    async with (
        serve(build_app(), path="/mcp") as everything_url,
        running_gateway(tmp_path) as gw,
    ):
        server = await gw.add_server("everything", everything_url)
        assert server["health"]["status"] == "healthy", server
        key = await gw.create_client("conformance")
        path = "/servers/everything/mcp"
        async with serve(BearerProxy(gw.base_url, key), path=path) as url:
            result = await run_conformance(
                url, spec_version=spec_version, out_dir=tmp_path / "results", expected_failures=BASELINE
            )
    # Only the suite's checks count here: the gateway speaks 2026-07-28 to the everything
    # server, so the 2025-era utilities (logging/setLevel, resources/subscribe) are the
    # gateway's own to answer and need not reach the fixture.
    print(result.summary())
    assert result.ok, result.report()
    assert set(result.scenarios) == ACTIVE_SERVER_SCENARIOS[spec_version]
    assert all(scenario.passed for scenario in result.scenarios.values()), result.report()


@pytest.mark.slow
@pytest.mark.anyio
async def test_harness_reports_a_server_without_the_fixtures(conformance_tools: None, tmp_path: Path) -> None:
    # studio has none of the suite's fixtures: the run must fail, and say why.
    async with serve(studio_app(), path="/mcp") as url:
        result = await run_conformance(
            url, spec_version="2026-07-28", out_dir=tmp_path / "results", expected_failures=BASELINE
        )
    assert not result.ok
    assert result.exit_code == 1
    assert not result.problems, result.report()  # the suite's exit code agrees with the parsed checks
    assert "tools-call-image" in result.unexpected_failures
    assert "No image content found" in result.report()
    assert result.scenarios["tools-list"].passed


# ----- the harness's judgement (fast) ------------------------------------------------


def _scenario(name: str, *statuses: tuple[str, str]) -> ScenarioResult:
    return ScenarioResult(name, tuple(Check(check_id, status) for check_id, status in statuses))


def test_judge_follows_the_suites_baseline_rules() -> None:
    scenarios = {
        "clean": _scenario("clean", ("a", "SUCCESS"), ("b", "INFO")),
        "warned": _scenario("warned", ("a", "SUCCESS"), ("b", "WARNING")),
        "broken": _scenario("broken", ("a", "FAILURE"), ("b", "FAILURE")),
        "partly": _scenario("partly", ("a", "FAILURE"), ("b", "FAILURE")),
        "fixed": _scenario("fixed", ("a", "SUCCESS")),
        "fixed-check": _scenario("fixed-check", ("a", "SUCCESS"), ("b", "SKIPPED")),
    }
    baseline = ["broken", "partly:a", "fixed", "fixed-check:a", "fixed-check:b", "not-run"]
    unexpected, expected, stale = judge(scenarios, baseline)
    assert unexpected == ("partly:b", "warned")
    assert expected == ("broken", "partly:a")
    # A baselined check that was skipped (or absent) is tolerated, not stale.
    assert stale == ("fixed", "fixed-check:a")
    assert judge(scenarios, []) == (("broken", "partly", "warned"), (), ())


def test_baseline_is_empty_and_in_the_suites_format(tmp_path: Path) -> None:
    assert load_baseline(BASELINE) == ()
    assert load_baseline(None) == ()
    good = tmp_path / "good.yaml"
    good.write_text("server:\n  - tools-call-error\n  - ping:ping\n")
    assert load_baseline(good) == ("tools-call-error", "ping:ping")
    for text in (
        "server:\n  - ping: ping\n",  # a mapping, not "scenario:check"
        "server: ping\n",
        "tools: []\n",
        "server:\n  - ping\n  - ping:ping\n",  # wholesale and per-check at once
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError):
            load_baseline(bad)


def test_collect_reads_checks_and_reports_scenarios_without_results(tmp_path: Path) -> None:
    older = tmp_path / "server-tools-list-2026-01-01T00-00-00-000Z"
    newer = tmp_path / "server-tools-list-2026-01-01T00-00-01-000Z"
    for folder, status in ((older, "FAILURE"), (newer, "SUCCESS")):
        folder.mkdir()
        checks = [{"id": "tools-list", "status": status, "description": "lists tools"}]
        (folder / "checks.json").write_text(json.dumps(checks))
    (tmp_path / "output.txt").write_text("not a scenario")
    scenarios = collect(tmp_path, ["tools-list", "ping"])
    assert scenarios["tools-list"].passed
    assert scenarios["tools-list"].checks == (Check("tools-list", "SUCCESS", "lists tools"),)
    assert not scenarios["ping"].passed
    assert scenarios["ping"].failing_checks[0].error_message is not None


# ----- the bearer proxy (fast) --------------------------------------------------------


class _Upstream:
    """Records what reached it; `/stream` sends one SSE event, then waits for the client to go."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.disconnected = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
        self.seen = {"method": scope["method"], "path": scope["path"], "query": scope["query_string"]}
        self.seen |= {"body": body, "headers": headers}
        if scope["path"] == "/stream":
            sse = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": sse})
            await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            return
        reply = [(b"content-type", b"text/plain"), (b"x-upstream", b"yes"), (b"keep-alive", b"timeout=5")]
        await send({"type": "http.response.start", "status": 418, "headers": reply})
        await send({"type": "http.response.body", "body": b"short and stout"})


@pytest.mark.anyio
async def test_bearer_proxy_forwards_as_sent_but_for_the_credential() -> None:
    upstream = _Upstream()
    async with (
        serve(upstream) as target,
        serve(BearerProxy(target, "tok-1")) as proxy,
        httpx2.AsyncClient(trust_env=False) as http,
    ):
        response = await http.post(
            f"{proxy}/servers/x/mcp?a=1&b=%2F",
            content=b'{"jsonrpc": "2.0"}',
            headers={
                "Host": "evil.example.com",
                "Origin": "http://evil.example.com",
                "Authorization": "Bearer client-supplied",
                "Proxy-Authorization": "Basic hop",
                "Content-Type": "application/json",
                "Mcp-Session-Id": "s-1",
            },
        )
    assert response.status_code == 418
    assert response.text == "short and stout"
    assert response.headers["x-upstream"] == "yes"
    assert "keep-alive" not in response.headers  # hop-by-hop
    assert len(response.headers.get_list("date")) == 1  # the proxy's, not both
    seen = upstream.seen
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/servers/x/mcp", b"a=1&b=%2F")
    assert seen["body"] == b'{"jsonrpc": "2.0"}'
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    # Host and Origin as the client sent them, so the gateway behind judges them itself.
    assert headers["host"] == ["evil.example.com"]
    assert headers["origin"] == ["http://evil.example.com"]
    assert headers["authorization"] == ["Bearer tok-1"]
    assert headers["mcp-session-id"] == ["s-1"]
    assert headers["content-type"] == ["application/json"]
    assert "proxy-authorization" not in headers


@pytest.mark.anyio
async def test_bearer_proxy_streams_and_closes_upstream_when_the_client_leaves() -> None:
    upstream = _Upstream()
    async with (
        serve(upstream) as target,
        serve(BearerProxy(target, "tok-1")) as proxy,
        httpx2.AsyncClient(trust_env=False) as http,
    ):
        with anyio.fail_after(10):
            async with http.stream("GET", f"{proxy}/stream") as response:
                assert response.headers["content-type"] == "text/event-stream"
                # The event arrives while the upstream still holds the stream open.
                chunks = response.aiter_raw()
                assert await anext(chunks) == b"data: first\n\n"
            await upstream.disconnected.wait()


@pytest.mark.anyio
async def test_bearer_proxy_answers_502_when_the_target_is_down() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        target = f"http://127.0.0.1:{closed.getsockname()[1]}"
        async with serve(BearerProxy(target, "tok")) as proxy, httpx2.AsyncClient(trust_env=False) as http:
            response = await http.get(f"{proxy}/mcp")
    assert response.status_code == 502
    assert response.text.startswith("Bad Gateway")


def test_bearer_proxy_refuses_non_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        BearerProxy("http://example.com", "tok")
