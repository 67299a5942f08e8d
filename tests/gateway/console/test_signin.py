"""Signing in to the console: the OAuth round trip, cookies, CSRF, headers, roles."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.console import add_person, csrf_of, signed_in
from tests.harness import running_gateway
from tests.idp import running_idp
from tollhouse.auth.external import ExternalIssuerConfig
from tollhouse.auth.settings import AuthSettings

pytestmark = pytest.mark.anyio


async def test_sign_in_round_trip_lands_on_the_overview(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway:
        await add_person(gateway, "ada", "admin")
        async with signed_in(gateway, "ada") as browser:
            page = await browser.get("/ui/")
            assert page.status_code == 200, page.text
            assert "ada" in page.text and "Overview" in page.text
            csp = page.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert page.headers["x-frame-options"] == "DENY"
            cookie = next(c for c in browser.cookies.jar if c.name == "tollhouse-console")
            assert not cookie.secure  # plain-http loopback: no Secure, no __Host- prefix
            assert csrf_of(page.text)


async def test_unsigned_browser_is_sent_to_sign_in(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway, httpx2.AsyncClient(base_url=gateway.base_url) as browser:
        response = await browser.get("/ui/")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login?next=")


async def test_state_changes_need_the_csrf_token_and_our_origin(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway:
        await add_person(gateway, "ada", "admin")
        async with signed_in(gateway, "ada") as browser:
            token = csrf_of((await browser.get("/ui/")).text)
            missing = await browser.post("/ui/logout", data={})
            assert missing.status_code == 403
            forged = await browser.post("/ui/logout", data={"csrf": token[:-2] + "xx"})
            assert forged.status_code == 403
            assert (await browser.get("/ui/")).status_code == 200  # still signed in
            foreign = await browser.post(
                "/ui/logout", data={"csrf": token}, headers={"Origin": "https://evil.example"}
            )
            assert foreign.status_code == 403
            signed_out = await browser.post("/ui/logout", data={"csrf": token})
            assert signed_out.status_code == 303
            assert signed_out.headers["location"] == "/ui/signed-out"
            again = await browser.get("/ui/")
            assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")


async def test_a_token_from_another_session_is_refused(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway:
        await add_person(gateway, "ada", "admin")
        await add_person(gateway, "bob", "admin")
        async with signed_in(gateway, "ada") as ada, signed_in(gateway, "bob") as bob:
            ada_token = csrf_of((await ada.get("/ui/")).text)
            assert (await bob.post("/ui/logout", data={"csrf": ada_token})).status_code == 403


async def test_expiring_access_tokens_are_refreshed_on_the_way(tmp_path: Path) -> None:
    # A 30 s access token is always inside the refresh margin: every page refreshes it.
    async with running_gateway(tmp_path, auth={"access_token_ttl_seconds": 30}) as gateway:
        await add_person(gateway, "ada", "admin")
        async with signed_in(gateway, "ada") as browser:
            first = browser.cookies.get("tollhouse-console")
            page = await browser.get("/ui/")
            assert page.status_code == 200
            assert "tollhouse-console=" in page.headers.get("set-cookie", "")
            assert browser.cookies.get("tollhouse-console") != first
            assert (await browser.get("/ui/")).status_code == 200


async def test_a_person_without_a_role_sees_nothing(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway:
        await add_person(gateway, "nobody")
        async with signed_in(gateway, "nobody") as browser:
            page = await browser.get("/ui/")
            assert page.status_code == 403
            assert "no console role" in page.text


async def test_sign_in_rejects_a_forged_callback(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway, httpx2.AsyncClient(base_url=gateway.base_url) as browser:
        started = await browser.get("/ui/login")
        assert started.status_code == 303 and "/oauth/authorize?" in started.headers["location"]
        assert "code_challenge_method=S256" in started.headers["location"]
        forged = await browser.get("/ui/callback", params={"code": "x", "state": "not-the-state"})
        assert forged.status_code == 400
        assert browser.cookies.get("tollhouse-console") is None


async def test_next_never_leaves_the_console(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway:
        await add_person(gateway, "ada", "admin")
        async with signed_in(gateway, "ada") as browser:
            for target in ("https://evil.example/", "//evil.example/ui/", "/admin/api/v1/servers"):
                response = await browser.get("/ui/login", params={"next": target})
                assert response.status_code == 303
                assert response.headers["location"] == "/ui/", target


async def test_static_assets_are_served_with_the_same_headers(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway, httpx2.AsyncClient(base_url=gateway.base_url) as browser:
        script = await browser.get("/ui/static/htmx.min.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert script.headers["x-frame-options"] == "DENY"
        assert (await browser.get("/ui/static/../app.py")).status_code == 404


async def test_sign_in_through_an_external_identity_provider(tmp_path: Path) -> None:
    async with running_idp() as idp:
        config = ExternalIssuerConfig(
            issuer=idp.issuer, allow_loopback_http=True, role_map={"idp-auditors": "auditor"}
        )
        async with running_gateway(
            tmp_path,
            auth=AuthSettings(builtin_server=False, external_issuers=[config]),
            console={"client_id": idp.app_client_id, "client_secret": idp.app_client_secret},
        ) as gateway:
            idp.app_redirect_uris = (gateway.base_url + "/ui/callback",)
            async with httpx2.AsyncClient(base_url=gateway.base_url, trust_env=False) as browser:
                start = await browser.get("/ui/login")
                assert start.status_code == 303
                assert start.headers["location"].startswith(idp.base_url + "/authorize?")
                assert "code_challenge_method=S256" in start.headers["location"]
                granted = await browser.get(start.headers["location"])
                assert granted.status_code == 302
                landed = await browser.get(granted.headers["location"])
                assert landed.status_code == 303, landed.text
                page = await browser.get("/ui/")
                assert page.status_code == 200, page.text
                assert "carol" in page.text and "auditor" in page.text
                # The gateway has no authorization server of its own here.
                assert (await browser.get("/oauth/login")).status_code == 404
            assert idp.requests["token"] == 1


async def test_over_https_cookies_are_host_prefixed_and_secure(tmp_path: Path) -> None:
    # The listener is loopback http, but the gateway is published at an https URL.
    async with (
        running_gateway(tmp_path, public_url="https://gw.example") as gateway,
        httpx2.AsyncClient(base_url=gateway.base_url) as browser,
    ):
        started = await browser.get("/ui/login")
        assert started.status_code == 303
        assert started.headers["location"].startswith("https://gw.example/oauth/authorize?")
        assert "redirect_uri=https%3A%2F%2Fgw.example%2Fui%2Fcallback" in started.headers["location"]
        cookie = started.headers["set-cookie"]
        assert cookie.startswith("__Host-tollhouse-console-signin=")
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=lax", "path=/"} <= attributes
        assert not any(a.startswith("domain=") for a in attributes)
