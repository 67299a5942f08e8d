"""Signing in to the console: the OAuth round trip, cookies, CSRF, headers, roles."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.console import add_person, csrf_of, signed_in
from tests.harness import running_gateway

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
            assert "unsafe-inline" not in csp
            assert page.headers["x-frame-options"] == "DENY"
            cookie = next(c for c in browser.cookies.jar if c.name == "tollhouse-console")
            assert not cookie.secure  # plain-http loopback: no Secure, no __Host- prefix
            assert csrf_of(page.text)


async def test_unsigned_browser_is_sent_to_sign_in(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gateway, httpx2.AsyncClient(base_url=gateway.base_url) as browser:
        response = await browser.get("/ui/")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login?next=")
