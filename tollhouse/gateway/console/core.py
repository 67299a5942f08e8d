"""The console's page machinery: who is looking, rendering, CSRF, and turning admin API refusals into pages.

A page handler is `async def handler(view: View) -> Response`, wrapped by `Console.page(handler,
need)`. The wrapper signs the browser in (or sends it to sign in), refreshes the access token
when it is about to expire, refuses a state change whose CSRF token or Origin is wrong, checks
the role the page needs, and renders admin API refusals as pages. Roles decide what is shown;
the admin API decides what is allowed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tollhouse import __version__
from tollhouse.auth.verifiers import InvalidTokenError, TokenVerifier
from tollhouse.gateway.console.api import AdminApi, ApiError, InProcess
from tollhouse.gateway.console.format import FILTERS as FORMAT_FILTERS
from tollhouse.gateway.console.session import ConsoleSession, CookieNames, Sealer
from tollhouse.gateway.console.signin import Provider, SignInError, Tokens

__all__ = ["NAV", "Console", "Handler", "View", "Viewer", "security_headers"]

Handler = Callable[["View"], Awaitable[Response]]

# Which roles each kind of page or action needs (the same sets the admin API enforces).
NEEDS: dict[str, frozenset[str]] = {
    "read": frozenset({"admin", "approver", "auditor", "viewer"}),
    "approve": frozenset({"admin", "approver"}),
    "audit": frozenset({"admin", "auditor"}),
    "admin": frozenset({"admin"}),
}
# Navigation: (path under /ui, label, need).
NAV: tuple[tuple[str, str, str], ...] = (
    ("/", "Overview", "read"),
    ("/servers", "Servers", "read"),
    ("/tools", "Tools", "read"),
    ("/agents", "Agents", "read"),
    ("/policies", "Policies", "read"),
    ("/identity", "Teams & users", "read"),
    ("/limits", "Limits & budgets", "read"),
    ("/usage", "Usage", "read"),
    ("/audit", "Audit trail", "audit"),
    ("/sessions", "Sessions", "read"),
    ("/access", "Access requests", "read"),
)
REFRESH_MARGIN_SECONDS = 30.0
MAX_FORM_BYTES = 1024 * 1024
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def security_headers() -> dict[str, str]:
    """Headers every console response carries: no inline script, no framing, nothing cached."""
    return {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


@dataclass(frozen=True)
class Viewer:
    """The signed-in person."""

    subject: str
    roles: frozenset[str]

    def can(self, need: str) -> bool:
        """True when one of the person's roles allows `need` (read, approve, audit, admin)."""
        return bool(NEEDS[need] & self.roles)


@dataclass
class View:
    """One page request: the request, who is looking, and the admin API as them."""

    request: Request
    viewer: Viewer
    api: AdminApi
    console: Console
    session: ConsoleSession
    form: FormData | None = None
    # Set when the access token was refreshed: the new session cookie goes out with the answer.
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def csrf(self) -> str:
        return self.console.sealer.csrf(self.session.sid)

    def url(self, path: str) -> str:
        """The absolute path of a console page (`/servers` → `/ui/servers` under any base path)."""
        return self.console.ui_path + (path if path.startswith("/") else "/" + path)

    @property
    def is_htmx(self) -> bool:
        return self.request.headers.get("hx-request") == "true"

    def render(
        self, template: str, context: Mapping[str, Any] | None = None, *, status: int = 200
    ) -> Response:
        """A page (or, for htmx, the fragment the template renders when `partial` is true)."""
        flash = self.console.read_flash(self.request)
        response = self.console.bare_page(
            template,
            {
                "view": self,
                "viewer": self.viewer,
                "csrf": self.csrf,
                "ui": self.url,
                "nav": [(self.url(path), label) for path, label, need in NAV if self.viewer.can(need)],
                "current": self.request.url.path,
                "flash": flash,
                "partial": self.is_htmx and self.request.headers.get("hx-target") is not None,
                **(context or {}),
            },
            status,
        )
        if flash is not None:
            self.console.clear_flash(response)
        return response

    def redirect(self, path: str, *, notice: str | None = None, error: str | None = None) -> Response:
        """303 to a console page, with a one-time message shown there."""
        response = RedirectResponse(self.url(path), status_code=303)
        if notice is not None or error is not None:
            self.console.set_flash(
                response, "error" if error is not None else "notice", error or notice or ""
            )
        if self.is_htmx:
            # htmx follows a 303 inside the fragment; a full navigation is what a redirect means here.
            response.headers["HX-Redirect"] = self.url(path)
        return response

    def field(self, name: str, default: str = "") -> str:
        """A submitted form field as text (empty when absent or a file)."""
        if self.form is None:
            return default
        value = self.form.get(name)
        return value if isinstance(value, str) else default

    def fields(self, name: str) -> list[str]:
        if self.form is None:
            return []
        return [v for v in self.form.getlist(name) if isinstance(v, str)]

    def error_page(self, status: int, title: str, message: str) -> Response:
        return self.render("error.html", {"title": title, "message": message}, status=status)


@dataclass
class Console:
    """Everything pages share; built once per app by `console_app`."""

    public_url: str
    provider: Provider | None
    verifier: TokenVerifier
    audience: str
    admin: InProcess
    sealer: Sealer
    cookies: CookieNames
    session_ttl_seconds: float
    clock: Callable[[], float] = time.time
    env: Environment = field(init=False)
    ui_path: str = field(init=False)

    def __post_init__(self) -> None:
        self.ui_path = urlsplit(self.public_url).path.rstrip("/") + "/ui"
        self.env = Environment(
            loader=PackageLoader("tollhouse.gateway.console", "templates"),
            autoescape=select_autoescape(["html", "svg"], default_for_string=True, default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(FORMAT_FILTERS)
        self.env.globals["version"] = __version__

    def static_url(self, name: str) -> str:
        return f"{self.ui_path}/static/{name}?v={__version__}"

    # -- cookies ---------------------------------------------------------------------------

    def set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=self.cookies.secure,
            httponly=True,
            samesite="lax",
        )

    def drop_cookie(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", secure=self.cookies.secure, httponly=True, samesite="lax")

    def set_flash(self, response: Response, kind: str, message: str) -> None:
        value = self.sealer.seal("flash", {"k": kind, "m": message[:500]}, 60)
        self.set_cookie(response, self.cookies.flash, value, 60)

    def read_flash(self, request: Request) -> dict[str, str] | None:
        payload = self.sealer.open("flash", request.cookies.get(self.cookies.flash))
        if payload is None or not isinstance(payload.get("k"), str) or not isinstance(payload.get("m"), str):
            return None
        return {"kind": payload["k"], "message": payload["m"]}

    def clear_flash(self, response: Response) -> None:
        self.drop_cookie(response, self.cookies.flash)

    def save_session(self, response: Response, session: ConsoleSession) -> None:
        ttl = max(1, int(session.ends_at - self.clock()))
        self.set_cookie(
            response, self.cookies.session, self.sealer.seal("session", session.to_payload(), ttl), ttl
        )

    def session_from(
        self, tokens: Tokens, subject: str, *, sid: str | None = None, ends_at: float | None = None
    ) -> ConsoleSession:
        now = self.clock()
        return ConsoleSession(
            sid=sid or ConsoleSession.new_sid(),
            subject=subject,
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            access_expires_at=now + tokens.expires_in,
            ends_at=ends_at if ends_at is not None else now + self.session_ttl_seconds,
        )

    # -- the page wrapper ------------------------------------------------------------------

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        if request.method != "GET":
            target = self.ui_path + "/"
        response = RedirectResponse(f"{self.ui_path}/login?next={quote(target, safe='')}", status_code=303)
        if request.headers.get("hx-request") == "true":
            response.headers["HX-Redirect"] = f"{self.ui_path}/login"
        return response

    def bare_page(self, template: str, context: Mapping[str, Any], status: int) -> Response:
        """A page; on its own (`context` naming no viewer), one for someone not signed in: no
        navigation, no forms. `View.render` fills in the signed-in parts."""
        body = self.env.get_template(template).render(
            {
                "view": None,
                "viewer": None,
                "csrf": "",
                "ui": lambda p: self.ui_path + p,
                "nav": [],
                "current": "",
                "flash": None,
                "partial": False,
                "static": self.static_url,
                **context,
            }
        )
        return HTMLResponse(body, status_code=status)

    async def viewer_of(self, request: Request) -> tuple[ConsoleSession, Viewer, bool] | None:
        """The session and person behind a request (refreshing the access token when needed)."""
        session = ConsoleSession.from_payload(
            self.sealer.open("session", request.cookies.get(self.cookies.session))
        )
        if session is None:
            return None
        now = self.clock()
        refreshed = False
        if session.access_expires_at - REFRESH_MARGIN_SECONDS <= now:
            if session.refresh_token is None or self.provider is None:
                return None
            try:
                tokens = await self.provider.refresh(session.refresh_token, client_address(request))
            except SignInError:
                return None
            session = self.session_from(tokens, session.subject, sid=session.sid, ends_at=session.ends_at)
            refreshed = True
        try:
            principal = await self.verifier.verify(session.access_token, self.audience)
        except InvalidTokenError:
            return None
        if principal.kind != "user" or principal.subject != session.subject:
            return None
        return session, Viewer(principal.subject, frozenset(principal.roles)), refreshed

    def page(self, handler: Handler, need: str = "read") -> Callable[[Request], Awaitable[Response]]:
        """An endpoint that runs `handler` for a signed-in person who may `need`."""

        async def endpoint(request: Request) -> Response:
            found = await self.viewer_of(request)
            if found is None:
                response = self.login_redirect(request)
                self.drop_cookie(response, self.cookies.session)
                return response
            session, viewer, refreshed = found
            view = View(
                request,
                viewer,
                AdminApi(self.admin, token=session.access_token, client=client_address(request)),
                self,
                session,
            )
            response = await self._run(view, handler, need)
            if refreshed:
                self.save_session(response, session)
            return response

        return endpoint

    async def _run(self, view: View, handler: Handler, need: str) -> Response:
        request = view.request
        if not view.viewer.roles:
            return view.error_page(
                403, "No console role", "Your account has no console role. Ask an administrator for one."
            )
        if request.method in _UNSAFE:
            refusal = await self._check_state_change(view)
            if refusal is not None:
                return refusal
        if not view.viewer.can(need):
            return view.error_page(403, "Not allowed", "Your role does not allow this page or action.")
        try:
            return await handler(view)
        except ApiError as error:
            if error.status == 401:
                response = self.login_redirect(request)
                self.drop_cookie(response, self.cookies.session)
                return response
            if error.status == 403:
                return view.error_page(403, "Not allowed", error.detail or "Your role does not allow this.")
            if error.status == 404:
                return view.error_page(404, "Not found", error.detail or "There is nothing here.")
            return view.error_page(
                error.status if 400 <= error.status < 600 else 500, error.title, error.detail
            )

    async def _check_state_change(self, view: View) -> Response | None:
        request = view.request
        origin = request.headers.get("origin")
        if origin is not None and origin != self.origin:
            return view.error_page(403, "Refused", "This change did not come from the console.")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
            return view.error_page(413, "Too large", "The form is too large.")
        token = request.headers.get("x-csrf-token")
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            try:
                view.form = await request.form(max_files=0, max_fields=2000)
            except Exception:  # malformed form bodies: Starlette raises several kinds
                return view.error_page(400, "Bad form", "The form could not be read.")
            if token is None:
                submitted = view.form.get("csrf")
                token = submitted if isinstance(submitted, str) else None
        if not self.sealer.check_csrf(view.session.sid, token):
            return view.error_page(
                403,
                "Refused",
                "The form could not be verified (missing or stale CSRF token). Reload and retry.",
            )
        return None

    @property
    def origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"


def client_address(request: Request) -> tuple[str, int] | None:
    """The browser's address, passed on so the admin API's records name where a change came from."""
    return (request.client.host, request.client.port) if request.client is not None else None


def static_root() -> str:
    return str(files("tollhouse.gateway.console") / "static")
