"""Console test helpers: people with roles, and a browser-like HTTP client signed in to `/ui/`.

`signed_in(gateway, name)` walks the real sign-in: `/ui/login` → `/oauth/authorize` →
`/oauth/login` (form with its CSRF token) → `/ui/callback`, following redirects by hand so
every hop is the one a browser would make. The returned client holds the console cookie.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import unescape

import httpx2

from tests.harness import Gateway

__all__ = ["PASSWORD", "add_person", "csrf_of", "form_fields", "signed_in"]

PASSWORD = "correct horse battery staple"
_INPUT = re.compile(r"<input[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r'(\w[\w-]*)="([^"]*)"')


def form_fields(html: str) -> dict[str, str]:
    """The hidden inputs' names and values in a page."""
    found: dict[str, str] = {}
    for tag in _INPUT.findall(html):
        attrs = dict(_ATTR.findall(tag))
        if attrs.get("type") == "hidden" and "name" in attrs:
            found[attrs["name"]] = unescape(attrs.get("value", ""))
    return found


def csrf_of(html: str) -> str:
    """The console's CSRF token in a page."""
    token = form_fields(html).get("csrf")
    assert token, "no CSRF token in the page"
    return token


async def add_person(gateway: Gateway, name: str, *roles: str, teams: tuple[str, ...] = ()) -> None:
    """A console user with these roles and the test password."""
    response = await gateway.admin.post(
        "/users", json={"name": name, "password": PASSWORD, "roles": list(roles), "teams": list(teams)}
    )
    assert response.status_code == 201, response.text


@asynccontextmanager
async def signed_in(
    gateway: Gateway, name: str, password: str = PASSWORD
) -> AsyncIterator[httpx2.AsyncClient]:
    """A client signed in to the console as `name`."""
    async with httpx2.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=30) as browser:
        response = await browser.get("/ui/")
        assert response.status_code == 303, response.text
        for _ in range(3):  # /ui/login → /oauth/authorize → /oauth/login
            response = await browser.get(response.headers["location"])
            if response.status_code != 303:
                break
        assert response.status_code == 200 and "/oauth/login" in str(response.url), response.text
        response = await browser.post(
            "/oauth/login", data={**form_fields(response.text), "username": name, "password": password}
        )
        assert response.status_code == 303, response.text
        response = await browser.get(response.headers["location"])  # /oauth/authorize: no consent asked
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert "/ui/callback?" in location, location
        response = await browser.get(location)
        assert response.status_code == 303, response.text
        yield browser
