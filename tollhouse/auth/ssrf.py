"""SSRF guard: one URL validator and one fetcher for every URL a peer tells us about.

The gateway fetches documents whose URLs come from the other side of a trust boundary:
OAuth protected-resource and authorization-server metadata of upstreams (RFC 9728, RFC
8414), Client ID Metadata Documents (an OAuth ``client_id`` that is an https URL), JWKS of
external identity providers, A2A agent cards and push URLs. Fetched naively, such a URL
turns the gateway into a proxy into its own network: cloud metadata at 169.254.169.254,
admin ports on loopback, services on private ranges.

So every such fetch goes through here:

* Only https (plain http only to loopback, and only in dev mode); no userinfo, no
  other schemes.
* The host is resolved once and *every* address must be globally routable; IPv4 embedded
  in IPv6 (mapped, NAT64, 6to4, Teredo) is judged as the IPv4 it reaches. Odd numeric hosts
  (``2130706433``, ``0177.0.0.1``, ``127.1``) are caught because their *resolved* addresses
  are checked.
* The connection goes only to the addresses that were validated: a pinned aiohttp resolver
  answers for that one host, so a second DNS answer cannot rebind the name to an internal
  address. The URL keeps its hostname, so the Host header, SNI and certificate checks are
  unchanged.
* Redirects are followed by hand, re-validating every hop; bodies are read under a byte cap
  that does not trust Content-Length; everything runs under one overall deadline.

`UnsafeUrlError` means policy refused the URL (never worth retrying); `FetchError` means
the fetch itself failed. Neither message ever contains a response body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import aiohttp
import anyio
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = [
    "FetchError",
    "PinnedResolver",
    "UnsafeUrlError",
    "UrlPolicy",
    "fetch_bytes",
    "fetch_json",
    "resolve_safe",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_BYTES = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Ranges an operator may deliberately open with `allow_private`: RFC 1918, CGNAT shared space
# (RFC 6598) and IPv6 unique-local. Loopback, link-local (cloud metadata) and unspecified
# stay closed regardless.
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Never carried to another origin on redirect, like browsers and aiohttp's own redirects.
_CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")
_CHUNK_BYTES = 16 * 1024
# The flags aiohttp's own resolvers report for numeric results.
_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """What a fetch may reach.

    Attributes:
        allow_loopback_http: dev mode. Loopback hosts (``127.0.0.0/8`` and ``::1`` literals,
            ``localhost`` and ``*.localhost``) become reachable, over http too; such a host
            must then resolve to loopback addresses only. Nothing else is relaxed.
        allow_private: admin-configured internal targets: RFC 1918, CGNAT ``100.64.0.0/10``
            and IPv6 unique-local ``fc00::/7`` become reachable (still https only).
        allowed_hosts: if non-empty, the only hosts (case-insensitive, trailing dot ignored)
            that may be fetched, on every redirect hop. It restricts; it never bypasses the
            address checks.
    """

    allow_loopback_http: bool = False
    allow_private: bool = False
    allowed_hosts: frozenset[str] = frozenset()


class UnsafeUrlError(ValueError):
    """The URL, or an address it resolves to, is refused by policy."""


class FetchError(Exception):
    """The fetch failed: unresolvable, unreachable, timeout, non-2xx, too large or bad JSON.

    Attributes:
        status: the final HTTP status when the failure is a non-2xx answer, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Target:
    """One validated hop: the URL to request and the only addresses its host may reach."""

    url: URL
    host: str
    addresses: tuple[str, ...]


class PinnedResolver(AbstractResolver):
    """An aiohttp resolver that answers for one host with pre-validated addresses only.

    Handing this to the `aiohttp.TCPConnector` of a request means the connection goes to an
    address that `resolve_safe` checked, never to whatever DNS answers a moment later.
    """

    def __init__(self, host: str, addresses: Sequence[str]) -> None:
        self._host = _normalize_name(host)
        self._addresses = [ipaddress.ip_address(address) for address in addresses]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The pinned addresses of `host` in `family` (AF_UNSPEC: all).

        Raises:
            OSError: `host` is not the pinned host, or none of its addresses is in `family`.
        """
        if _normalize_name(host) != self._host:
            raise OSError(f"no validated addresses for {host!r}")
        results: list[ResolveResult] = []
        for address in self._addresses:
            address_family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=address_family,
                    proto=socket.IPPROTO_TCP,
                    flags=_NUMERIC_FLAGS,
                )
            )
        if not results:
            raise OSError(f"no validated addresses for {host!r} in this address family")
        return results

    async def close(self) -> None:
        """Nothing to release."""


async def resolve_safe(url: str, policy: UrlPolicy) -> list[str]:
    """Validate `url` under `policy` and return the IP addresses it may be fetched from.

    Raises:
        UnsafeUrlError: the URL or any address its host resolves to is refused.
        FetchError: the host does not resolve.
    """
    target = await _validate(_parse(url), policy)
    return list(target.addresses)


async def fetch_json(
    url: str,
    policy: UrlPolicy,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_redirects: int = 3,
    timeout_seconds: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[Any, Mapping[str, str]]:
    """GET `url` safely and parse its body as JSON; returns (document, response headers).

    Sends ``Accept: application/json`` unless `headers` has an Accept of its own. See
    `fetch_bytes` for the rules.

    Raises:
        UnsafeUrlError: `url` or a redirect hop is refused by `policy`.
        FetchError: the fetch failed or the body is not JSON.
    """
    send = CIMultiDict(headers or {})
    send.setdefault("Accept", "application/json")
    body, response_headers, _ = await fetch_bytes(
        url,
        policy,
        max_bytes=max_bytes,
        max_redirects=max_redirects,
        timeout_seconds=timeout_seconds,
        headers=send,
    )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        # `from None`: the decode error carries the document, which must not reach logs.
        raise FetchError("the response is not valid JSON") from None
    return document, response_headers


async def fetch_bytes(
    url: str,
    policy: UrlPolicy,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_redirects: int = 3,
    timeout_seconds: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[bytes, Mapping[str, str], int]:
    """GET `url` safely; returns (body, response headers, 2xx status).

    Every hop is validated like `resolve_safe` and connected only to its validated
    addresses. Up to `max_redirects` redirects are followed (relative Locations resolved
    against the current URL; credentials headers dropped when the origin changes). The
    body is read in chunks and abandoned past `max_bytes`; `timeout_seconds` bounds the
    whole exchange, DNS and redirects included. Fragments are never sent.

    Raises:
        UnsafeUrlError: `url` or a redirect hop is refused by `policy`.
        FetchError: unresolvable, unreachable, timed out, too many redirects, a non-2xx
            final status (see `FetchError.status`) or a body larger than `max_bytes`.
    """
    current = _parse(url)
    send = CIMultiDict(headers or {})
    try:
        with anyio.fail_after(timeout_seconds):
            redirects = 0
            while True:
                target = await _validate(current, policy)
                status, response_headers, body = await _get(target, send, max_bytes)
                if status not in _REDIRECT_STATUSES:
                    break
                if redirects >= max_redirects:
                    raise FetchError(f"more than {max_redirects} redirects")
                location = response_headers.get("Location")
                if not location:
                    raise FetchError(f"HTTP {status} redirect without a Location", status=status)
                following = _parse(urljoin(str(current), location))
                if _origin(following) != _origin(current):
                    for name in _CREDENTIAL_HEADERS:
                        send.popall(name, None)
                current = following
                redirects += 1
    except TimeoutError:
        raise FetchError(f"timed out after {timeout_seconds:g}s") from None
    if not 200 <= status < 300:
        raise FetchError(f"{target.host} answered HTTP {status}", status=status)
    return body, response_headers, status


def _parse(url: str) -> URL:
    try:
        parsed = URL(url)
    except (ValueError, UnicodeError, TypeError):
        raise UnsafeUrlError("malformed URL") from None
    # Fragments are client-side only; not sending them also keeps them out of any logs.
    return parsed.with_fragment(None)


async def _validate(url: URL, policy: UrlPolicy) -> _Target:
    scheme = url.scheme
    if scheme not in ("https", "http"):
        raise UnsafeUrlError(f"scheme {scheme[:20]!r} is not allowed (https only)")
    if url.raw_user is not None or url.raw_password is not None:
        raise UnsafeUrlError("credentials in the URL are not allowed")
    # raw_host is exactly what aiohttp hands its resolver, so what is checked is what is used.
    host = url.raw_host
    if not host:
        raise UnsafeUrlError("the URL has no host")
    port = url.port
    if not port:
        raise UnsafeUrlError("the URL has no usable port")
    dev_loopback = policy.allow_loopback_http and _is_loopback_host(host)
    if scheme == "http" and not dev_loopback:
        raise UnsafeUrlError(f"plain http to {host} is not allowed (https only)")
    if policy.allowed_hosts and not _host_allowed(url, policy.allowed_hosts):
        raise UnsafeUrlError(f"{host} is not in the allowed hosts")
    addresses = await _resolve(host, port)
    for address in addresses:
        reason = _refusal(address, policy, dev_loopback)
        if reason is not None:
            raise UnsafeUrlError(f"{host} is refused: {address} is {reason}")
    return _Target(url=url, host=host, addresses=tuple(str(address) for address in addresses))


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host}") from exc
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        numeric = sockaddr[0]
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(numeric, str):
            continue
        address = ipaddress.ip_address(numeric)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchError(f"{host} has no IP addresses")
    return addresses


def _refusal(address: IPAddress, policy: UrlPolicy, dev_loopback: bool) -> str | None:
    """Why `address` may not be connected to, or None if it may."""
    if dev_loopback:
        # The dev exception is for loopback only: a loopback host that resolves anywhere
        # else is refused, even to a public address.
        return None if address.is_loopback else "not loopback (required for a loopback host)"
    for view in _views(address):
        reason = _classify(view, policy.allow_private)
        if reason is not None:
            return reason
    return None


def _views(address: IPAddress) -> list[IPAddress]:
    """`address` and the IPv4 addresses it would actually reach through a translator."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        # The kernel connects a mapped address to the IPv4 address itself.
        return [address.ipv4_mapped]
    if address in _NAT64:
        # RFC 6052: the well-known prefix carries the IPv4 destination in its last 32 bits.
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    views: list[IPAddress] = [address]
    if address.sixtofour is not None:
        views.append(address.sixtofour)
    if address.teredo is not None:
        views.extend(address.teredo)
    return views


def _classify(address: IPAddress, allow_private: bool) -> str | None:
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if any(address in network for network in _PRIVATE_NETWORKS):
        return None if allow_private else "private"
    # Documentation, benchmarking, reserved, broadcast and similar special-purpose ranges.
    if address.is_reserved or not address.is_global:
        return "not globally routable"
    return None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_loopback_host(host: str) -> bool:
    literal = _ip_literal(host)
    if literal is not None:
        return literal.is_loopback
    name = _normalize_name(host)
    return name == "localhost" or name.endswith(".localhost")


def _normalize_name(host: str) -> str:
    literal = _ip_literal(host.strip("[]"))
    if literal is not None:
        return str(literal)
    return host.lower().rstrip(".")


def _host_allowed(url: URL, allowed_hosts: frozenset[str]) -> bool:
    allowed = {_normalize_name(host) for host in allowed_hosts}
    # Both spellings of an internationalized name: punycode and Unicode.
    return any(host is not None and _normalize_name(host) in allowed for host in (url.raw_host, url.host))


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return url.scheme, url.raw_host, url.port


async def _get(
    target: _Target, headers: CIMultiDict[str], max_bytes: int
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """One GET without redirects; the body is read only for 2xx answers."""
    connector = aiohttp.TCPConnector(
        resolver=PinnedResolver(target.host, target.addresses), use_dns_cache=False, force_close=True
    )
    session = aiohttp.ClientSession(
        connector=connector,
        # The caller's anyio deadline bounds the whole exchange.
        timeout=aiohttp.ClientTimeout(total=None),
        # No proxies from the environment: a proxy would resolve the name itself.
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Identity bodies only, so max_bytes bounds what is parsed, not a compressed size.
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    )
    try:
        async with session, session.get(target.url, headers=headers, allow_redirects=False) as response:
            status = response.status
            response_headers = CIMultiDictProxy(CIMultiDict(response.headers))
            if not 200 <= status < 300:
                return status, response_headers, b""
            body = await _read_capped(response, max_bytes)
            return status, response_headers, body
    except (aiohttp.ClientError, OSError) as exc:
        if isinstance(exc, TimeoutError):
            raise
        raise FetchError(f"cannot fetch from {target.host}: {type(exc).__name__}") from exc


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    too_large = FetchError(f"the response is larger than {max_bytes} bytes")
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        response.close()
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            # Abandon the connection rather than drain an arbitrarily long body.
            response.close()
            raise too_large
    return bytes(body)
