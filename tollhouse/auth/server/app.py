"""The built-in authorization server's HTTP surface: `authorization_server_routes(...)`.

Routes (DESIGN.md, Interface contract): RFC 8414 and OIDC discovery, `/oauth/authorize` (GET
shows consent, POST records the decision), `/oauth/login`, `/oauth/token`, `/oauth/register`,
`/oauth/revoke`, `/oauth/jwks.json`. The OAuth protocol work is authlib's (`oauth.py`,
`grants.py`); this module reads and caps requests, throttles, runs the sign-in and consent
pages, and turns authlib's answers into responses.

The browser side of an authorization, and what protects each step:

    GET  /oauth/authorize?…   validated by authlib first: an unknown client or an unregistered
                              redirect URI gets an error page, never a redirect
      → 303 /oauth/login?txn=…   (no login session) txn = the signed request, ≤ 10 minutes
    POST /oauth/login         CSRF token bound to a pre-login cookie and the txn; argon2;
                              lockout per user name and per address; sets the session cookie
      → 303 /oauth/authorize?txn=…   consent page: client, scopes, resource, redirect URI
    POST /oauth/authorize     CSRF token bound to the session and the txn; the txn is spent
      → 302 redirect_uri?code=…&state=…&iss=…   (RFC 9207)

A user who already approved these scopes for this client skips the consent page (the
per-user registry of approved clients the MCP security guidance asks for), unless the
client sends `prompt=consent`.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import anyio.to_thread
import orjson
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Error
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.passwords import Passwords
from tollhouse.auth.resources import DEFAULT_SCOPES, ResourceSpace
from tollhouse.auth.server.clients import ClientDirectory, Fetch, OAuthClient
from tollhouse.auth.server.cookies import LoginSession, Signer, SpentNonces, Transaction
from tollhouse.auth.server.grants import RedeemedCodes, ServerContext
from tollhouse.auth.server.metadata import authorization_server_metadata, openid_configuration
from tollhouse.auth.server.oauth import (
    AuthlibResponse,
    FormRequest,
    TollhouseAuthorizationServer,
    json_request,
)
from tollhouse.auth.server.pages import Pages
from tollhouse.auth.server.replies import (
    NO_STORE,
    basic_header_ok,
    is_client_failure,
    json_error,
    json_too_many,
    read_capped,
    redirect,
    to_response,
)
from tollhouse.auth.server.throttle import Buckets, Lockout, ThrottleSettings
from tollhouse.auth.ssrf import fetch_json
from tollhouse.auth.tokens import TokenIssuer
from tollhouse.registry.identity_store import SqlIdentityStore
from tollhouse.registry.models import ClientRecord, User
from tollhouse.registry.store import RegistryStore

__all__ = ["authorization_server_routes", "is_dev_loopback"]

TRANSACTION_TTL_SECONDS = 600  # MCP security guidance: single-use state, about ten minutes
SESSION_TTL_SECONDS = 900
PRE_LOGIN_TTL_SECONDS = 900
MAX_FORM_BYTES = 16 * 1024
MAX_REGISTRATION_BYTES = 16 * 1024
MAX_QUERY_BYTES = 8 * 1024
MAX_PARAMETERS = 50


def authorization_server_routes(
    *,
    public_url: str,
    issuer: TokenIssuer,
    identity: SqlIdentityStore,
    registry: RegistryStore,
    ring: KeyRing,
    dev_loopback: bool,
    on_revoke: Callable[[str, float], None],
    access_ttl_seconds: int = 900,
    refresh_ttl_seconds: int = 30 * 24 * 3600,
    known_scopes: Callable[[], frozenset[str]] | None = None,
    throttle: ThrottleSettings | None = None,
    source_address: Callable[[Request], str] | None = None,
    passwords: Passwords | None = None,
    clock: Callable[[], float] = time.time,
    fetch: Fetch = fetch_json,
    first_party: Sequence[ClientRecord] = (),
) -> list[BaseRoute]:
    """The authorization server's routes, to mount at the root of the gateway's app.

    `public_url` is the issuer. `dev_loopback` (public_url is loopback http) lets CIMD
    documents be fetched from loopback http URLs. `on_revoke(jti, exp)` is called when an
    access token is revoked, so the resource server can drop it at once. `known_scopes`
    returns every scope a client may ask for (default: `DEFAULT_SCOPES`); `source_address`
    says where a request comes from (default: the peer address), for throttling. `clock`
    (epoch seconds) and `fetch` (the CIMD fetcher) are seams for tests. `first_party` are
    clients the gateway runs itself (the web console): known without a database row, and
    their users are not asked to consent (they are signing in to tollhouse, not granting a
    third party access).
    """
    handlers = _Handlers.build(
        public_url=public_url.rstrip("/"),
        issuer=issuer,
        identity=identity,
        registry=registry,
        ring=ring,
        dev_loopback=dev_loopback,
        on_revoke=on_revoke,
        access_ttl_seconds=access_ttl_seconds,
        refresh_ttl_seconds=refresh_ttl_seconds,
        known_scopes=known_scopes or (lambda: frozenset(DEFAULT_SCOPES)),
        throttle=throttle or ThrottleSettings(),
        source_address=source_address or _peer_address,
        passwords=passwords or Passwords(),
        clock=clock,
        fetch=fetch,
        first_party={c.client_id: c for c in first_party},
    )
    return handlers.routes()


def is_dev_loopback(public_url: str) -> bool:
    """True when `public_url` is plain http on a loopback host (demo, tests): dev mode."""
    parts = urlsplit(public_url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost")


def _peer_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


@dataclass
class _Limits:
    authorize: Buckets
    login: Buckets
    token: Buckets
    token_failures: Buckets
    register: Buckets
    revoke: Buckets
    user_lockout: Lockout
    address_lockout: Lockout


@dataclass
class _Handlers:
    public_url: str
    context: ServerContext
    server: TollhouseAuthorizationServer
    signer: Signer
    pages: Pages
    passwords: Passwords
    limits: _Limits
    source_address: Callable[[Request], str]
    clock: Callable[[], float]
    spent: SpentNonces
    secure_cookies: bool
    base_path: str = field(init=False)

    def __post_init__(self) -> None:
        self.base_path = urlsplit(self.public_url).path.rstrip("/")

    @classmethod
    def build(
        cls,
        *,
        public_url: str,
        issuer: TokenIssuer,
        identity: SqlIdentityStore,
        registry: RegistryStore,
        ring: KeyRing,
        dev_loopback: bool,
        on_revoke: Callable[[str, float], None],
        access_ttl_seconds: int,
        refresh_ttl_seconds: int,
        known_scopes: Callable[[], frozenset[str]],
        throttle: ThrottleSettings,
        source_address: Callable[[Request], str],
        passwords: Passwords,
        clock: Callable[[], float],
        fetch: Fetch,
        first_party: Mapping[str, ClientRecord],
    ) -> _Handlers:
        def all_scopes() -> frozenset[str]:
            return frozenset(DEFAULT_SCOPES) | known_scopes()

        context = ServerContext(
            public_url=public_url,
            issuer=issuer,
            identity=identity,
            clients=ClientDirectory(
                registry,
                dev_loopback=dev_loopback,
                known_scopes=all_scopes,
                clock=clock,
                fetch=fetch,
                first_party=first_party,
            ),
            resources=ResourceSpace(public_url),
            known_scopes=all_scopes,
            on_revoke=on_revoke,
            access_ttl_seconds=access_ttl_seconds,
            refresh_ttl_seconds=refresh_ttl_seconds,
            clock=clock,
            redeemed=RedeemedCodes(clock=clock),
        )
        limits = _Limits(
            authorize=Buckets(throttle.authorize, clock=clock),
            login=Buckets(throttle.login, clock=clock),
            token=Buckets(throttle.token, clock=clock),
            token_failures=Buckets(throttle.token_failures, clock=clock),
            register=Buckets(throttle.register, clock=clock),
            revoke=Buckets(throttle.revoke, clock=clock),
            user_lockout=Lockout(
                throttle.lockout_threshold_user,
                throttle.lockout_base_seconds,
                throttle.lockout_max_seconds,
                clock=clock,
            ),
            address_lockout=Lockout(
                throttle.lockout_threshold_address,
                throttle.lockout_base_seconds,
                throttle.lockout_max_seconds,
                clock=clock,
            ),
        )
        return cls(
            public_url=public_url,
            context=context,
            server=TollhouseAuthorizationServer(context),
            signer=Signer(ring, clock=clock),
            pages=Pages(),
            passwords=passwords,
            limits=limits,
            source_address=source_address,
            clock=clock,
            spent=SpentNonces(clock=clock),
            secure_cookies=public_url.startswith("https://"),
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/.well-known/oauth-authorization-server", self.metadata, methods=["GET"]),
            Route("/.well-known/openid-configuration", self.openid, methods=["GET"]),
            Route("/oauth/jwks.json", self.jwks, methods=["GET"]),
            Route("/oauth/authorize", self.authorize, methods=["GET"]),
            Route("/oauth/authorize", self.decide, methods=["POST"]),
            Route("/oauth/login", self.login_page, methods=["GET"]),
            Route("/oauth/login", self.login, methods=["POST"]),
            Route("/oauth/token", self.token, methods=["POST"]),
            Route("/oauth/register", self.register, methods=["POST"]),
            Route("/oauth/revoke", self.revoke, methods=["POST"]),
        ]

    # -- documents -------------------------------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        return JSONResponse(authorization_server_metadata(self.public_url, self._scopes()))

    async def openid(self, request: Request) -> Response:
        return JSONResponse(openid_configuration(self.public_url, self._scopes()))

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.context.issuer.jwks(), headers={"Cache-Control": "public, max-age=300"})

    def _scopes(self) -> list[str]:
        return sorted(self.context.known_scopes())

    # -- authorization ---------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        wait = self.limits.authorize.take(self.source_address(request))
        if wait:
            return self._too_many(wait)
        sealed = request.query_params.get("txn")
        if sealed is not None:
            txn = Transaction.open(self.signer, sealed)
            if txn is None:
                return self._expired()
            pairs = list(txn.params)
        else:
            txn = None
            pairs = request.query_params.multi_items()
            if len(request.url.query) > MAX_QUERY_BYTES or len(pairs) > MAX_PARAMETERS:
                return self.pages.error("The authorization request is too large.")
        oauth_request = self._oauth_request("GET", "/oauth/authorize", pairs, request)
        try:
            grant = await self.server.call(self.server.get_consent_grant, oauth_request, None)
        except OAuth2Error as error:
            return self._authorization_error(error)
        prompt = set(oauth_request.payload.data.get("prompt", "").split())
        signed_in = await self._signed_in(request)
        if signed_in is None:
            if "none" in prompt:
                return self._redirect_error(grant.redirect_uri, oauth_request, "login_required")
            txn = txn or Transaction.new(tuple(pairs), self.clock() + TRANSACTION_TTL_SECONDS)
            return RedirectResponse(
                self._url("/oauth/login", txn=txn.seal(self.signer, self.clock())),
                status_code=303,
                headers=NO_STORE,
            )
        session, user = signed_in
        client: OAuthClient = grant.client
        scopes = (oauth_request.scope or "").split()
        if client.client_id in self.context.clients.first_party:
            return await self._respond(oauth_request, grant, user)
        if "consent" not in prompt:
            approved = await self.context.identity.consented_scopes(user.subject, client.client_id)
            if approved is not None and set(scopes) <= approved:
                return await self._respond(oauth_request, grant, user)
        if "none" in prompt:
            return self._redirect_error(grant.redirect_uri, oauth_request, "consent_required")
        txn = txn or Transaction.new(tuple(pairs), self.clock() + TRANSACTION_TTL_SECONDS)
        return self.pages.render(
            "consent.html",
            {
                "title": "Allow access?",
                "subject": user.display_name or user.subject,
                "client_name": client.display_name,
                "client_host": client.metadata_host,
                "client_note": _client_note(client),
                "client_id": client.client_id,
                "scopes": scopes,
                "resource": oauth_request.resource,
                "redirect_uri": grant.redirect_uri,
                "action": self.base_path + "/oauth/authorize",
                "txn": txn.seal(self.signer, self.clock()),
                "csrf": self.signer.token("consent", session.sid, txn.nonce),
            },
            form_targets=[_origin_source(grant.redirect_uri)],
        )

    async def decide(self, request: Request) -> Response:
        form = await self._form(request)
        if form is None:
            return self.pages.error("The form is too large or malformed.", status_code=413)
        values = dict(form)
        txn = Transaction.open(self.signer, values.get("txn"))
        if txn is None:
            return self._expired()
        session = LoginSession.open(self.signer, request.cookies.get(self._cookie("session")))
        if session is None:
            return self.pages.error(
                "Your sign-in has expired. Start again from the application.", status_code=403
            )
        if not self.signer.check_token("consent", values.get("csrf"), session.sid, txn.nonce):
            return self.pages.error(
                "The form could not be verified. Start again from the application.", status_code=403
            )
        if not self.spent.spend(txn.nonce, txn.expires_at):
            return self.pages.error("This request was already answered. Start again from the application.")
        user = await self.context.identity.get_user(session.subject)
        if user is None or user.disabled:
            return self.pages.error("This account cannot sign in.", status_code=403)
        oauth_request = self._oauth_request("GET", "/oauth/authorize", list(txn.params), request)
        try:
            grant = await self.server.call(self.server.get_consent_grant, oauth_request, user)
        except OAuth2Error as error:
            return self._authorization_error(error)
        if values.get("decision") != "allow":
            return await self._respond(oauth_request, grant, None)
        scopes = frozenset((oauth_request.scope or "").split())
        await self.context.identity.save_consent(user.subject, grant.client.client_id, scopes)
        return await self._respond(oauth_request, grant, user)

    async def _respond(self, oauth_request: FormRequest, grant: Any, user: User | None) -> Response:
        answer: AuthlibResponse = await self.server.call(
            self.server.create_authorization_response, request=oauth_request, grant_user=user, grant=grant
        )
        return to_response(answer)

    def _authorization_error(self, error: OAuth2Error) -> Response:
        if error.redirect_uri:
            # The client and its redirect URI are verified: RFC 6749 §4.1.2.1 sends the error there.
            return redirect(
                add_params_to_uri(error.redirect_uri, [*error.get_body(), ("iss", self.public_url)])
            )
        if isinstance(error, InvalidClientError):
            return self.pages.error(
                "This application is not registered with this gateway, or its registration could not be "
                "verified.",
                detail=error.get_error_description() or None,
            )
        return self.pages.error(
            "The application sent an authorization request this gateway cannot accept.",
            detail=f"{error.error}: {error.get_error_description()}",
        )

    def _redirect_error(self, redirect_uri: str, oauth_request: FormRequest, error: str) -> Response:
        params = [("error", error)]
        if state := oauth_request.payload.state:
            params.append(("state", state))
        params.append(("iss", self.public_url))
        return redirect(add_params_to_uri(redirect_uri, params))

    # -- sign-in ---------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        sealed = request.query_params.get("txn")
        txn = Transaction.open(self.signer, sealed)
        if txn is None or sealed is None:
            return self._expired()
        pre = self.signer.unsign("pre", request.cookies.get(self._cookie("login")))
        pre_id = (
            pre["id"] if pre is not None and isinstance(pre.get("id"), str) else secrets.token_urlsafe(16)
        )
        response = self._login_form(sealed, txn, pre_id)
        if pre is None:
            self._set_cookie(
                response,
                "login",
                self.signer.sign("pre", {"id": pre_id}, PRE_LOGIN_TTL_SECONDS),
                PRE_LOGIN_TTL_SECONDS,
            )
        return response

    def _login_form(
        self,
        sealed: str,
        txn: Transaction,
        pre_id: str,
        *,
        error: str | None = None,
        username: str = "",
        status_code: int = 200,
        retry_after: float | None = None,
    ) -> Response:
        headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after else None
        return self.pages.render(
            "login.html",
            {
                "title": "Sign in",
                "error": error,
                "username": username,
                "action": self.base_path + "/oauth/login",
                "txn": sealed,
                "csrf": self.signer.token("login", pre_id, txn.nonce),
            },
            status_code=status_code,
            headers=headers,
        )

    async def login(self, request: Request) -> Response:
        address = self.source_address(request)
        wait = self.limits.login.take(address)
        if wait:
            return self._too_many(wait)
        form = await self._form(request)
        if form is None:
            return self.pages.error("The form is too large or malformed.", status_code=413)
        values = dict(form)
        sealed = values.get("txn", "")
        txn = Transaction.open(self.signer, sealed)
        if txn is None:
            return self._expired()
        pre = self.signer.unsign("pre", request.cookies.get(self._cookie("login")))
        pre_id = pre.get("id") if pre is not None else None
        if not isinstance(pre_id, str) or not self.signer.check_token(
            "login", values.get("csrf"), pre_id, txn.nonce
        ):
            return self.pages.error(
                "The sign-in form could not be verified (are cookies enabled?). "
                "Start again from the application.",
                status_code=403,
            )
        username = values.get("username", "").strip()[:256]
        password = values.get("password", "")
        user_key, address_key = "user:" + username.casefold(), "address:" + address
        locked = max(
            self.limits.user_lockout.retry_after(user_key),
            self.limits.address_lockout.retry_after(address_key),
        )
        if locked:
            return self._login_form(
                sealed,
                txn,
                pre_id,
                username=username,
                status_code=429,
                retry_after=locked,
                error="Too many failed sign-ins. Wait a while, then try again.",
            )
        user = await self.context.identity.get_user(username) if username else None
        stored = user.password_hash if user is not None else None
        verified = await anyio.to_thread.run_sync(self.passwords.verify, stored, password)
        if not verified or user is None or user.disabled:
            self.limits.user_lockout.failure(user_key)
            self.limits.address_lockout.failure(address_key)
            return self._login_form(
                sealed,
                txn,
                pre_id,
                username=username,
                status_code=401,
                error="The user name or password is not correct.",
            )
        self.limits.user_lockout.success(user_key)
        response = RedirectResponse(
            self._url("/oauth/authorize", txn=sealed), status_code=303, headers=NO_STORE
        )
        session = LoginSession(secrets.token_urlsafe(16), user.subject)
        self._set_cookie(
            response, "session", session.seal(self.signer, SESSION_TTL_SECONDS), SESSION_TTL_SECONDS
        )
        return response

    async def _signed_in(self, request: Request) -> tuple[LoginSession, User] | None:
        session = LoginSession.open(self.signer, request.cookies.get(self._cookie("session")))
        if session is None:
            return None
        user = await self.context.identity.get_user(session.subject)
        return None if user is None or user.disabled else (session, user)

    # -- token, registration, revocation ---------------------------------------------------

    async def _client_form(
        self, request: Request, limit: Buckets, path: str
    ) -> tuple[FormRequest, str] | Response:
        """The throttled, size-capped form of a client-authenticated POST, or the refusal."""
        address = self.source_address(request)
        wait = limit.take(address) or self.limits.token_failures.exhausted(address)
        if wait:
            return json_too_many(wait)
        form = await self._form(request)
        if form is None:
            return json_error("invalid_request", "The request body is too large or malformed.", 400)
        if not basic_header_ok(request):
            self.limits.token_failures.take(address)
            return json_error("invalid_client", "Malformed Basic credentials.", 401)
        return self._oauth_request("POST", path, form, request), address

    def _answer_client(self, answer: AuthlibResponse, address: str) -> Response:
        if is_client_failure(answer):
            # Failed client authentication counts towards the address's lockout.
            self.limits.token_failures.take(address)
        return to_response(answer)

    async def token(self, request: Request) -> Response:
        prepared = await self._client_form(request, self.limits.token, "/oauth/token")
        if isinstance(prepared, Response):
            return prepared
        oauth_request, address = prepared
        answer: AuthlibResponse = await self.server.call(self.server.create_token_response, oauth_request)
        return self._answer_client(answer, address)

    async def register(self, request: Request) -> Response:
        wait = self.limits.register.take(self.source_address(request))
        if wait:
            return json_too_many(wait)
        body = await read_capped(request, MAX_REGISTRATION_BYTES)
        if body is None:
            return json_error("invalid_client_metadata", "The registration document is too large.", 413)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not data:
            return json_error("invalid_client_metadata", "The body must be a JSON object.", 400)
        oauth_request = json_request(self._url("/oauth/register"), data, request.headers)
        answer: AuthlibResponse = await self.server.call(
            self.server.create_endpoint_response, "client_registration", oauth_request
        )
        return to_response(answer)

    async def revoke(self, request: Request) -> Response:
        prepared = await self._client_form(request, self.limits.revoke, "/oauth/revoke")
        if isinstance(prepared, Response):
            return prepared
        oauth_request, address = prepared
        answer: AuthlibResponse = await self.server.call(
            self.server.create_endpoint_response, "revocation", oauth_request
        )
        return self._answer_client(answer, address)

    # -- helpers ---------------------------------------------------------------------------

    def _oauth_request(
        self, method: str, path: str, pairs: list[tuple[str, str]], request: Request
    ) -> FormRequest:
        return FormRequest(method, self.public_url + path, pairs, request.headers)

    async def _form(self, request: Request) -> list[tuple[str, str]] | None:
        body = await read_capped(request, MAX_FORM_BYTES)
        if body is None:
            return None
        try:
            pairs = parse_qsl(
                body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=False,
                max_num_fields=MAX_PARAMETERS,
            )
        except (UnicodeDecodeError, ValueError):
            return None
        return pairs

    def _url(self, path: str, **query: str) -> str:
        suffix = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return self.public_url + path + (f"?{suffix}" if suffix else "")

    def _cookie(self, name: str) -> str:
        # The __Host- prefix pins the cookie to this origin (Secure, Path=/, no Domain).
        return f"__Host-tollhouse-{name}" if self.secure_cookies else f"tollhouse-{name}"

    def _set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            self._cookie(name),
            value,
            max_age=max_age,
            path="/",
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )

    def _expired(self) -> Response:
        return self.pages.error(
            "This sign-in request has expired or is not valid. Start again from the application."
        )

    def _too_many(self, wait: float) -> Response:
        return self.pages.error(
            "Too many requests. Wait a moment, then try again.", status_code=429, retry_after=math.ceil(wait)
        )


def _client_note(client: OAuthClient) -> str | None:
    registration = client.record.registration
    if registration == "cimd":
        return "The name is chosen by the application itself; check the host it is served from."
    if registration == "dcr":
        return "This application registered itself; its name has not been verified."
    return None


def _origin_source(redirect_uri: str) -> str:
    """A CSP source expression for where the consent form's redirect goes."""
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"
