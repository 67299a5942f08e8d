"""The SSRF guard: hostile URLs are refused, redirects re-validated, bodies capped, IPs pinned.

Everything runs offline: hostile URLs are refused before DNS or resolve locally (IP
literals, odd numeric forms, localhost); names under ``.test`` come from a fake
`socket.getaddrinfo`; fetches that must succeed go to Starlette apps on 127.0.0.1 with the
dev-mode loopback policy.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import serve
from tollhouse.auth.ssrf import (
    FetchError,
    PinnedResolver,
    UnsafeUrlError,
    UrlPolicy,
    fetch_bytes,
    fetch_json,
    resolve_safe,
)

pytestmark = pytest.mark.anyio

DEFAULT = UrlPolicy()
DEV = UrlPolicy(allow_loopback_http=True)
SECRET = "s3cr3t-body-marker"
MAX = 1024

# (URL, a fragment of the refusal message that proves *why* it was refused).
HOSTILE = [
    ("http://example.com", "plain http"),
    ("http://example.com/.well-known/oauth-protected-resource", "plain http"),
    ("https://127.0.0.1/", "loopback"),
    ("https://127.255.255.254/", "loopback"),
    ("https://localhost/", "loopback"),
    ("https://LOCALHOST/", "loopback"),
    ("https://[::1]/", "loopback"),
    ("https://10.0.0.1/", "private"),
    ("https://172.16.5.4/", "private"),
    ("https://192.168.1.1/", "private"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://[fe80::1]/", "link-local"),
    ("https://[fe80::1%25eth0]/", "link-local"),
    ("https://[fc00::1]/", "private"),
    ("https://[fd00:ec2::254]/", "private"),
    ("https://[::ffff:127.0.0.1]/", "loopback"),
    ("https://[::ffff:169.254.169.254]/", "link-local"),
    ("https://[::ffff:10.0.0.1]/", "private"),
    ("https://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64 of 169.254.169.254
    ("https://[2002:7f00:1::]/", "loopback"),  # 6to4 of 127.0.0.1
    ("https://[::7f00:1]/", "not globally routable"),  # deprecated IPv4-compatible
    # Odd numeric forms: not IP literals to `ipaddress`, so only the check of the *resolved*
    # address (getaddrinfo turns each into 127.0.0.1 or 0.0.0.0) can catch them.
    ("https://2130706433/", "127.0.0.1 is loopback"),
    ("https://0177.0.0.1/", "127.0.0.1 is loopback"),
    ("https://0x7f.0.0.1/", "127.0.0.1 is loopback"),
    ("https://127.1/", "127.0.0.1 is loopback"),
    ("https://0/", "0.0.0.0 is unspecified"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://[::]/", "unspecified"),
    ("https://100.64.0.1/", "private"),
    ("https://224.0.0.1/", "multicast"),
    ("https://[ff02::1]/", "multicast"),
    ("https://192.0.2.1/", "not globally routable"),
    ("https://[2001:db8::1]/", "not globally routable"),
    ("https://198.18.0.1/", "not globally routable"),
    ("https://240.0.0.1/", "not globally routable"),
    ("https://255.255.255.255/", "not globally routable"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("data:application/json,{}", "scheme 'data'"),
    ("ftp://example.com/x", "scheme 'ftp'"),
    ("gopher://example.com/", "scheme 'gopher'"),
    ("//example.com/", "scheme ''"),
    ("https://user@example.com/", "credentials"),
    ("https://user:pw@example.com/", "credentials"),
    ("https://:@example.com/", "credentials"),
    ("https:///nohost", "no host"),
    ("https://example.com\\@127.0.0.1/", "malformed"),
    ("https://example.com:0/", "port"),
]


def _ids(cases: list[tuple[str, str]]) -> list[str]:
    return [url for url, _ in cases]


@pytest.mark.parametrize(("url", "why"), HOSTILE, ids=_ids(HOSTILE))
async def test_resolve_safe_refuses_hostile_urls(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrlError) as caught:
        await resolve_safe(url, DEFAULT)
    assert why in str(caught.value)


@pytest.mark.parametrize(("url", "why"), HOSTILE, ids=_ids(HOSTILE))
async def test_fetch_json_refuses_hostile_urls(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrlError) as caught:
        await fetch_json(url, DEFAULT)
    assert why in str(caught.value)


# --- names from a fake DNS --------------------------------------------------------------

FAKE_DNS: dict[str, list[str]] = {
    "metadata.test": ["169.254.169.254"],
    "intranet.test": ["10.1.2.3"],
    # ANY bad address refuses the name, even next to a public one.
    "mixed.test": ["93.184.215.14", "10.0.0.5"],
    "mixed6.test": ["2606:4700::1111", "::1"],
    "public.test": ["93.184.215.14", "2606:4700::1111", "93.184.215.14"],
    "evil.localhost": ["8.8.8.8"],
}


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Answer getaddrinfo for the FAKE_DNS names; yields the names looked up, in order."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if host not in FAKE_DNS and host != "rebind.localhost":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        if host == "rebind.localhost":
            # Loopback on the first answer, a (non-routable) other address afterwards: a
            # second lookup at connect time would go astray.
            answers = ["127.0.0.1"] if len(lookups) == 1 else ["192.0.2.7"]
        else:
            answers = FAKE_DNS[host]
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (ip, int(port or 0), 0, 0) if ":" in ip else (ip, int(port or 0)),
            )
            for ip in answers
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield lookups


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://metadata.test/", "169.254.169.254 is link-local"),
        ("https://intranet.test/", "10.1.2.3 is private"),
        ("https://mixed.test/", "10.0.0.5 is private"),
        ("https://mixed6.test/", "::1 is loopback"),
    ],
)
async def test_names_resolving_to_internal_addresses_are_refused(
    fake_dns: list[str], url: str, why: str
) -> None:
    with pytest.raises(UnsafeUrlError) as caught:
        await resolve_safe(url, DEFAULT)
    assert why in str(caught.value)


async def test_a_public_name_yields_its_distinct_addresses(fake_dns: list[str]) -> None:
    assert await resolve_safe("https://public.test/x", DEFAULT) == ["93.184.215.14", "2606:4700::1111"]
    assert fake_dns == ["public.test"]


async def test_a_loopback_name_must_resolve_to_loopback_even_in_dev_mode(fake_dns: list[str]) -> None:
    with pytest.raises(UnsafeUrlError, match="not loopback"):
        await resolve_safe("http://evil.localhost/", DEV)


async def test_an_unresolvable_name_is_a_fetch_error() -> None:
    with pytest.raises(FetchError, match="cannot resolve"):
        await resolve_safe("https://does-not-exist.invalid/", DEFAULT)


# --- policies ---------------------------------------------------------------------------


async def test_dev_mode_allows_loopback_over_http_and_https() -> None:
    assert await resolve_safe("http://127.0.0.1:8080/x", DEV) == ["127.0.0.1"]
    assert await resolve_safe("https://127.0.0.1/", DEV) == ["127.0.0.1"]
    assert await resolve_safe("http://[::1]/", DEV) == ["::1"]
    addresses = await resolve_safe("http://localhost/", DEV)
    assert addresses
    assert all(address in {"127.0.0.1", "::1"} for address in addresses)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.1/", "plain http"),
        ("http://example.com/", "plain http"),
        ("http://169.254.169.254/", "plain http"),
        ("https://10.0.0.1/", "private"),
        ("https://169.254.169.254/", "link-local"),
        ("http://0.0.0.0/", "plain http"),
        # Loopback only in its plain spellings: odd forms and mapped addresses stay refused.
        ("http://2130706433/", "plain http"),
        ("https://2130706433/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "plain http"),
        ("https://[::ffff:127.0.0.1]/", "loopback"),
        ("file:///etc/passwd", "scheme"),
        ("http://user@127.0.0.1/", "credentials"),
    ],
)
async def test_dev_mode_relaxes_nothing_but_loopback(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrlError, match=why):
        await resolve_safe(url, DEV)


async def test_allow_private_opens_private_ranges_only() -> None:
    policy = UrlPolicy(allow_private=True)
    assert await resolve_safe("https://10.0.0.1/", policy) == ["10.0.0.1"]
    assert await resolve_safe("https://192.168.1.1:8443/", policy) == ["192.168.1.1"]
    assert await resolve_safe("https://100.64.0.1/", policy) == ["100.64.0.1"]
    assert await resolve_safe("https://[fd12::1]/", policy) == ["fd12::1"]
    for url, why in [
        ("file:///etc/passwd", "scheme"),
        ("http://10.0.0.1/", "plain http"),
        ("https://169.254.169.254/", "link-local"),
        ("https://127.0.0.1/", "loopback"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://224.0.0.1/", "multicast"),
    ]:
        with pytest.raises(UnsafeUrlError, match=why):
            await resolve_safe(url, policy)


async def test_allowed_hosts_restricts_but_never_bypasses_address_checks() -> None:
    policy = UrlPolicy(allow_private=True, allowed_hosts=frozenset({"10.0.0.1", "[FD12::1]"}))
    assert await resolve_safe("https://10.0.0.1/", policy) == ["10.0.0.1"]
    assert await resolve_safe("https://[fd12:0::1]/", policy) == ["fd12::1"]
    with pytest.raises(UnsafeUrlError, match="allowed hosts"):
        await resolve_safe("https://10.0.0.2/", policy)
    with pytest.raises(UnsafeUrlError, match="allowed hosts"):
        await resolve_safe("https://localhost/", policy)
    with pytest.raises(UnsafeUrlError, match="loopback"):
        await resolve_safe("https://127.0.0.1/", UrlPolicy(allowed_hosts=frozenset({"127.0.0.1"})))


async def test_allowed_hosts_match_case_and_trailing_dot_insensitively(fake_dns: list[str]) -> None:
    policy = UrlPolicy(allowed_hosts=frozenset({"Public.Test."}))
    assert await resolve_safe("https://PUBLIC.test/", policy) == ["93.184.215.14", "2606:4700::1111"]


# --- the pinned resolver ----------------------------------------------------------------


async def test_pinned_resolver_answers_only_with_the_validated_addresses() -> None:
    resolver = PinnedResolver("api.example.com", ["93.184.215.14", "2606:4700::1111"])
    results = await resolver.resolve("api.example.com", 443, family=socket.AF_UNSPEC)
    assert [(r["host"], r["port"], r["family"], r["hostname"]) for r in results] == [
        ("93.184.215.14", 443, socket.AF_INET, "api.example.com"),
        ("2606:4700::1111", 443, socket.AF_INET6, "api.example.com"),
    ]
    assert [r["host"] for r in await resolver.resolve("API.example.com.", 443)] == ["93.184.215.14"]
    assert [r["host"] for r in await resolver.resolve("api.example.com", 443, socket.AF_INET6)] == [
        "2606:4700::1111"
    ]
    for other in ("evil.example.com", "127.0.0.1", "example.com"):
        with pytest.raises(OSError, match="no validated addresses"):
            await resolver.resolve(other, 443, family=socket.AF_UNSPEC)
    await resolver.close()


async def test_pinned_resolver_refuses_a_family_it_has_no_address_for() -> None:
    resolver = PinnedResolver("v4.example.com", ["93.184.215.14"])
    with pytest.raises(OSError, match="address family"):
        await resolver.resolve("v4.example.com", 443, family=socket.AF_INET6)


# --- real fetches against loopback servers ----------------------------------------------


class Site:
    """A Starlette app with the documents, redirects and misbehaviours the tests need."""

    def __init__(self) -> None:
        self.base = ""
        self.release = anyio.Event()
        self.app = Starlette(
            routes=[
                Route("/doc", self.doc),
                Route("/chain/{n:int}", self.chain),
                Route("/to", self.to),
                Route("/headers", self.headers),
                Route("/big", self.big),
                Route("/big-stream", self.big_stream),
                Route("/exact", self.exact),
                Route("/text", self.text),
                Route("/status/{code:int}", self.status),
                Route("/hang", self.hang),
            ]
        )

    async def doc(self, request: Request) -> Response:
        return JSONResponse({"issuer": "https://as.example", "n": 1})

    async def chain(self, request: Request) -> Response:
        n: int = request.path_params["n"]
        if n == 0:
            return JSONResponse({"chain": "done"})
        # Alternate a relative and an absolute Location (another origin: localhost).
        port = request.url.port
        location = f"{n - 1}" if n % 2 else f"http://localhost:{port}/chain/{n - 1}"
        return Response(status_code=302 if n % 3 else 307, headers={"location": location})

    async def to(self, request: Request) -> Response:
        return Response(status_code=302, headers={"location": request.query_params["u"]})

    async def headers(self, request: Request) -> Response:
        return JSONResponse({"path": request.url.path, "headers": dict(request.headers)})

    async def big(self, request: Request) -> Response:
        return Response(b'"' + b"x" * MAX + b'"', media_type="application/json")

    async def big_stream(self, request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"y" * 256

        # No Content-Length: only counting what arrives can catch it.
        return StreamingResponse(chunks(), media_type="application/json")

    async def exact(self, request: Request) -> Response:
        return Response(b'"' + b"z" * (MAX - 2) + b'"', media_type="application/json")

    async def text(self, request: Request) -> Response:
        return PlainTextResponse(f"<html>{SECRET}</html>")

    async def status(self, request: Request) -> Response:
        return JSONResponse({"error": SECRET}, status_code=request.path_params["code"])

    async def hang(self, request: Request) -> Response:
        await self.release.wait()
        return JSONResponse({})


@asynccontextmanager
async def site() -> AsyncIterator[Site]:
    instance = Site()
    async with serve(instance.app) as base:
        instance.base = base
        try:
            yield instance
        finally:
            # Let a parked /hang handler finish so the server stops at once.
            instance.release.set()


def to(s: Site, target: str) -> str:
    return f"{s.base}/to?u={quote(target, safe='')}"


async def test_a_loopback_document_is_fetched_in_dev_mode() -> None:
    async with site() as s:
        document, headers = await fetch_json(f"{s.base}/doc#fragment", DEV)
        assert document == {"issuer": "https://as.example", "n": 1}
        assert headers["content-type"] == "application/json"
        body, _, status = await fetch_bytes(f"{s.base}/doc", DEV)
        assert (body, status) == (b'{"issuer":"https://as.example","n":1}', 200)


async def test_loopback_http_is_refused_without_dev_mode() -> None:
    async with site() as s:
        with pytest.raises(UnsafeUrlError, match="plain http"):
            await fetch_json(f"{s.base}/doc", DEFAULT)
        with pytest.raises(UnsafeUrlError, match="plain http"):
            await fetch_json(f"{s.base}/doc", UrlPolicy(allow_private=True))


async def test_what_is_sent_and_that_the_hostname_is_kept() -> None:
    async with site() as s:
        port = s.base.rsplit(":", 1)[1]
        document, _ = await fetch_json(
            f"http://localhost:{port}/headers?q=1#frag", DEV, headers={"X-Trace": "t1"}
        )
    assert document["path"] == "/headers"
    sent = document["headers"]
    assert sent["host"] == f"localhost:{port}"
    assert sent["accept"] == "application/json"
    assert sent["x-trace"] == "t1"
    assert "accept-encoding" not in sent
    assert "cookie" not in sent


async def test_the_connection_goes_to_the_validated_address_only(fake_dns: list[str]) -> None:
    # DNS answers loopback once, then an unreachable address: a second lookup (a DNS
    # rebinding window) would send the request astray; pinning connects to 127.0.0.1.
    async with site() as s:
        port = s.base.rsplit(":", 1)[1]
        document, _ = await fetch_json(f"http://rebind.localhost:{port}/headers", DEV, timeout_seconds=5)
    assert document["headers"]["host"] == f"rebind.localhost:{port}"
    assert fake_dns == ["rebind.localhost"]


async def test_a_redirect_chain_within_the_limit_is_followed() -> None:
    async with site() as s:
        document, _ = await fetch_json(f"{s.base}/chain/3", DEV, max_redirects=3)
        assert document == {"chain": "done"}
        assert (await fetch_json(f"{s.base}/chain/0", DEV, max_redirects=0))[0] == {"chain": "done"}


async def test_a_redirect_chain_longer_than_the_limit_is_refused() -> None:
    async with site() as s:
        with pytest.raises(FetchError, match="more than 3 redirects"):
            await fetch_json(f"{s.base}/chain/4", DEV, max_redirects=3)
        with pytest.raises(FetchError, match="more than 0 redirects"):
            await fetch_json(f"{s.base}/chain/1", DEV, max_redirects=0)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("http://169.254.169.254/latest/meta-data/", "plain http"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.0.0.1/", "private"),
        ("http://example.com/", "plain http"),
        ("//example.com/", "plain http"),  # scheme-relative: inherits http
        ("http://[::ffff:127.0.0.1]/doc", "plain http"),
        ("http://user:pw@localhost/doc", "credentials"),
    ],
)
async def test_every_redirect_hop_is_revalidated(target: str, why: str) -> None:
    async with site() as s:
        with pytest.raises(UnsafeUrlError, match=why):
            await fetch_json(to(s, target), DEV)


async def test_a_redirect_to_a_host_outside_the_allow_list_is_refused() -> None:
    policy = UrlPolicy(allow_loopback_http=True, allowed_hosts=frozenset({"127.0.0.1"}))
    async with site() as s:
        port = s.base.rsplit(":", 1)[1]
        assert (await fetch_json(to(s, f"{s.base}/doc"), policy))[0]["n"] == 1
        with pytest.raises(UnsafeUrlError, match="allowed hosts"):
            await fetch_json(to(s, f"http://localhost:{port}/doc"), policy)


async def test_credentials_do_not_follow_a_redirect_to_another_origin() -> None:
    async with site() as s:
        port = s.base.rsplit(":", 1)[1]
        sent_headers = {"Authorization": "Bearer t0ken", "Cookie": "a=b", "X-Trace": "t2"}
        same, _ = await fetch_json(to(s, f"{s.base}/headers"), DEV, headers=sent_headers)
        other, _ = await fetch_json(to(s, f"http://localhost:{port}/headers"), DEV, headers=sent_headers)
    assert same["headers"]["authorization"] == "Bearer t0ken"
    assert "authorization" not in other["headers"]
    assert "cookie" not in other["headers"]
    assert other["headers"]["x-trace"] == "t2"


async def test_a_redirect_without_location_is_a_fetch_error() -> None:
    async with site() as s:
        with pytest.raises(FetchError, match="without a Location") as caught:
            await fetch_json(f"{s.base}/status/302", DEV)
    assert caught.value.status == 302


@pytest.mark.parametrize("path", ["/big", "/big-stream"], ids=["content-length", "streamed"])
async def test_an_oversized_body_is_refused(path: str) -> None:
    async with site() as s:
        with pytest.raises(FetchError, match=f"larger than {MAX} bytes"):
            await fetch_json(f"{s.base}{path}", DEV, max_bytes=MAX)
        with pytest.raises(FetchError, match=f"larger than {MAX} bytes"):
            await fetch_bytes(f"{s.base}{path}", DEV, max_bytes=MAX)
        # The cap applies after redirects too.
        with pytest.raises(FetchError, match=f"larger than {MAX} bytes"):
            await fetch_bytes(to(s, f"{s.base}{path}"), DEV, max_bytes=MAX)


async def test_a_body_of_exactly_max_bytes_is_accepted() -> None:
    async with site() as s:
        document, _ = await fetch_json(f"{s.base}/exact", DEV, max_bytes=MAX)
    assert document == "z" * (MAX - 2)


async def test_a_non_json_body_is_a_fetch_error_without_the_body() -> None:
    async with site() as s:
        with pytest.raises(FetchError, match="not valid JSON") as caught:
            await fetch_json(f"{s.base}/text", DEV)
        body, _, _ = await fetch_bytes(f"{s.base}/text", DEV)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert SECRET.encode() in body


@pytest.mark.parametrize("code", [204, 404, 500])
async def test_a_non_2xx_or_empty_answer_is_a_fetch_error(code: int) -> None:
    async with site() as s:
        with pytest.raises(FetchError) as caught:
            await fetch_json(f"{s.base}/status/{code}", DEV)
    assert SECRET not in str(caught.value)
    if code == 204:
        assert "not valid JSON" in str(caught.value)
    else:
        assert caught.value.status == code
        assert f"HTTP {code}" in str(caught.value)


async def test_fetch_bytes_raises_on_non_2xx_too() -> None:
    async with site() as s:
        with pytest.raises(FetchError, match="HTTP 404"):
            await fetch_bytes(f"{s.base}/status/404", DEV)


async def test_the_overall_timeout_is_a_fetch_error() -> None:
    async with site() as s:
        with pytest.raises(FetchError, match="timed out"):
            await fetch_json(f"{s.base}/hang", DEV, timeout_seconds=0.2)


async def test_a_refused_connection_is_a_fetch_error() -> None:
    # Bound but not listening: connecting is refused, deterministically.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(FetchError, match=r"cannot fetch from 127\.0\.0\.1"):
            await fetch_json(f"http://127.0.0.1:{port}/doc", DEV)
