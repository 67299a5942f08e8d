"""The sign-in, consent and error pages: our own Jinja2 templates, autoescaped, no JavaScript.

Every page goes out with a CSP that allows nothing but its one inline stylesheet (by hash) and
form posts to this origin, refuses framing (`frame-ancestors 'none'` plus `X-Frame-Options`
for old browsers), and is neither cached nor leaks its URL (which carries the pending
authorization) through a Referer. Templates ship inside the package and are the only ones
ever loaded: nothing a client sends is compiled as a template (SECURITY_GOALS.md S20).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse, Response

__all__ = ["Pages", "security_headers"]


def security_headers(*, form_targets: Iterable[str] = ()) -> dict[str, str]:
    """Headers every HTML response carries; `form_targets` may receive the form's redirect."""
    # Chrome applies form-action to the redirects that follow a form post, so the consent
    # page must also allow the client's redirect origin or the browser stops at our 302.
    targets = " ".join(["'self'", *sorted(set(form_targets))])
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; style-src {_STYLE_SOURCE}; img-src 'none'; form-action {targets}; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Referrer-Policy": "no-referrer",
    }


class Pages:
    """Renders the package's templates."""

    def __init__(self) -> None:
        self._env = Environment(
            loader=PackageLoader("tollhouse.auth.server", "templates"),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
        )

    def render(
        self,
        template: str,
        context: Mapping[str, Any],
        *,
        status_code: int = 200,
        form_targets: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """An HTML response of `template` with the security headers."""
        body = self._env.get_template(template).render({**context, "css": Markup(_CSS)})  # noqa: S704
        return HTMLResponse(
            body,
            status_code=status_code,
            headers={**security_headers(form_targets=form_targets), **(headers or {})},
        )

    def error(
        self,
        message: str,
        *,
        status_code: int = 400,
        detail: str | None = None,
        retry_after: int | None = None,
    ) -> Response:
        """The error page: never a redirect, since the client or its redirect URI is not trusted."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return self.render(
            "error.html",
            {"title": "Cannot continue", "message": message, "detail": detail},
            status_code=status_code,
            headers=headers,
        )


def _load_css() -> str:
    return (files("tollhouse.auth.server") / "templates" / "style.css").read_text("utf-8").strip()


_CSS = _load_css()
_STYLE_SOURCE = "'sha256-" + base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode() + "'"
