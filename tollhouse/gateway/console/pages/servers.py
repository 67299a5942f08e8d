"""Console pages: the registered MCP servers, one server's facts and tools, and the register/edit form.

Credentials are write-only here: the form never shows a stored secret (only that one is
stored), and leaving the secret field empty on an edit keeps the stored one. Everything an
upstream said about itself (instructions, tool names) is shown as text.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, View
from tollhouse.gateway.console.pages.tools import deciding, review
from tollhouse.policies.scanner import visible

__all__ = ["breaker", "routes"]

TRANSPORTS = ("http", "sse", "stdio")
APPROVALS = ("first-use", "manual")
AUTH_TYPES = ("none", "bearer", "header")
AWAITING = frozenset({"pending", "changed"})
# The stored-secret field each credential type reads (what the form's secret field sets).
SECRET_FIELDS = {
    "bearer": "token",
    "header": "value",
    "oauth_client_credentials": "client_secret",
    "token_exchange": "client_secret",
    "oauth_authorization_code": "client_secret",
}


@dataclass
class ServerForm:
    """The register/edit form's non-secret values (what is shown again after an error)."""

    name: str = ""
    transport: str = "http"
    url: str = ""
    command: str = ""
    approval: str = "first-use"
    auth_type: str = "none"
    header: str = ""

    @classmethod
    def submitted(cls, view: View, name: str | None = None) -> ServerForm:
        return cls(
            name=name if name is not None else view.field("name").strip(),
            transport=view.field("transport", "http"),
            url=view.field("url").strip(),
            command=view.field("command").strip(),
            approval=view.field("approval", "first-use"),
            auth_type=view.field("auth_type", "none"),
            header=view.field("header").strip(),
        )

    @classmethod
    def of(cls, server: Mapping[str, Any]) -> ServerForm:
        auth = server.get("auth") or {}
        return cls(
            name=server["name"],
            transport=server.get("transport") or "http",
            url=server.get("url") or "",
            command=shlex.join(server.get("command") or []),
            approval=server.get("approval") or "first-use",
            auth_type=auth.get("type", "none"),
            header=auth.get("header") or "",
        )


def breaker(server: Mapping[str, Any]) -> str:
    """The circuit breaker as the admin API reports it, with the failures in a row while closed."""
    state = (server.get("breaker") or {}).get("state", "closed")
    failures = (server.get("breaker") or {}).get("consecutive_failures", 0)
    return f"{state} ({failures} failed in a row)" if state == "closed" and failures else str(state)


def secret_stored(auth: Mapping[str, Any] | None) -> bool:
    return any(isinstance(v, dict) and v.get("set") for v in (auth or {}).values())


def _settings(auth: Mapping[str, Any]) -> dict[str, str]:
    """The credential's settings and references, without the stored-secret markers."""
    return {k: v for k, v in auth.items() if isinstance(v, str)}


def auth_body(form: ServerForm, secret: str, current: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `auth` to send, or None to keep the current credential (an empty secret keeps the stored one)."""
    same = form.auth_type == current.get("type", "none")
    settings: dict[str, str] = _settings(current) if same else {"type": form.auth_type}
    if form.auth_type == "header":
        settings["header"] = form.header
    field = SECRET_FIELDS.get(form.auth_type)
    if secret and field is not None:
        settings.pop(f"{field}_env", None)
        settings[field] = secret
    if same and settings == _settings(current):
        return None
    return settings


def server_body(form: ServerForm, secret: str, current_auth: Mapping[str, Any]) -> dict[str, Any]:
    """The admin API body for the form.

    Raises:
        ValueError: the command line cannot be split (unbalanced quotes).
    """
    body: dict[str, Any] = {"transport": form.transport, "approval": form.approval}
    if form.transport == "stdio":
        body["command"] = shlex.split(form.command)
    else:
        body["url"] = form.url
    auth = auth_body(form, secret, current_auth)
    if auth is not None:
        body["auth"] = auth
    return body


def _path(name: str) -> str:
    return quote(name, safe="")


# -- pages -------------------------------------------------------------------------------------


async def list_servers(view: View) -> Response:
    servers = [
        {
            **s,
            "breaker": breaker(s),
            "address": s.get("url") or shlex.join(s.get("command") or []),
        }
        for s in (await view.api.get("/servers"))["items"]
    ]
    return view.render("servers/list.html", {"title": "Servers", "servers": servers})


async def show_server(view: View) -> Response:
    name = view.request.path_params["name"]
    server = await view.api.get(f"/servers/{name}")
    pins = (await view.api.get("/tools", state="all", server=name))["items"]
    instructions = await _instructions(view, name)
    return view.render(
        "servers/detail.html",
        {
            "title": f"Server {name}",
            "server": server,
            "breaker": breaker(server),
            "command": shlex.join(server.get("command") or []),
            "auth_settings": [(k, v) for k, v in _settings(server.get("auth") or {}).items() if k != "type"],
            "secret_stored": secret_stored(server.get("auth")),
            "pins": pins,
            "instructions": instructions,
            "awaiting": instructions is not None and instructions.get("status") in AWAITING,
            "path": _path(name),
        },
    )


async def _instructions(view: View, name: str) -> dict[str, Any] | None:
    """The instructions pin with its diff, or None when the server never sent instructions."""
    try:
        found: dict[str, Any] = await view.api.get(f"/servers/{name}/instructions/diff")
    except ApiError as error:
        if error.status == 404:
            return None
        raise
    return {**review(found), "text": visible(str((found.get("new") or {}).get("instructions", "")))}


def _form_page(
    view: View,
    form: ServerForm,
    *,
    editing: Mapping[str, Any] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    auth_types = list(AUTH_TYPES)
    if form.auth_type not in auth_types:
        auth_types.append(form.auth_type)  # an OAuth credential set up elsewhere, kept as it is
    title = f"Edit server {form.name}" if editing is not None else "Register a server"
    return view.render(
        "servers/form.html",
        {
            "title": title,
            "form": asdict(form),
            "editing": editing is not None,
            "secret_stored": secret_stored((editing or {}).get("auth")),
            "error": error,
            "transports": TRANSPORTS,
            "approvals": APPROVALS,
            "auth_types": auth_types,
            "path": _path(form.name),
        },
        status=status,
    )


async def new_server(view: View) -> Response:
    return _form_page(view, ServerForm())


async def create_server(view: View) -> Response:
    form = ServerForm.submitted(view)
    try:
        body = {"name": form.name, **server_body(form, view.field("token"), {})}
    except ValueError as exc:
        return _form_page(view, form, error=f"The command cannot be read: {exc}.", status=400)
    try:
        created = await view.api.post("/servers", json=body)
    except ApiError as error:
        if not error.about_the_form:
            raise
        return _form_page(view, form, error=error.detail or error.title, status=error.status)
    health = created.get("health", {})
    notice = f"Server {form.name} is registered."
    if health.get("status") == "down":
        notice += f" It is down for now: {health.get('last_error') or 'unreachable'}."
    return view.redirect(f"/servers/{_path(form.name)}", notice=notice)


async def edit_server(view: View) -> Response:
    server = await view.api.get(f"/servers/{view.request.path_params['name']}")
    return _form_page(view, ServerForm.of(server), editing=server)


async def update_server(view: View) -> Response:
    name = view.request.path_params["name"]
    server = await view.api.get(f"/servers/{name}")
    form = ServerForm.submitted(view, name=server["name"])
    try:
        body = server_body(form, view.field("token"), server.get("auth") or {})
    except ValueError as exc:
        return _form_page(view, form, editing=server, error=f"The command cannot be read: {exc}.", status=400)
    try:
        await view.api.put(f"/servers/{name}", body)
    except ApiError as error:
        if not error.about_the_form:
            raise
        return _form_page(view, form, editing=server, error=error.detail or error.title, status=error.status)
    return view.redirect(f"/servers/{_path(name)}", notice=f"Server {name} is updated.")


async def refresh_server(view: View) -> Response:
    name = view.request.path_params["name"]
    try:
        result = await view.api.post(f"/servers/{name}/refresh")
    except ApiError as error:
        if error.status != 502:
            raise
        return view.redirect(f"/servers/{_path(name)}", error=error.detail or "The server cannot be reached.")
    return view.redirect(
        f"/servers/{_path(name)}", notice=f"Server {name} is refreshed: {result['tools']} tools."
    )


async def remove_server(view: View) -> Response:
    name = view.request.path_params["name"]
    await view.api.delete(f"/servers/{name}")
    return view.redirect("/servers", notice=f"Server {name} is removed.")


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/servers", console.page(list_servers), methods=["GET"]),
        Route("/servers", console.page(create_server, "admin"), methods=["POST"]),
        Route("/servers/new", console.page(new_server, "admin"), methods=["GET"]),
        Route("/servers/{name}", console.page(show_server), methods=["GET"]),
        Route("/servers/{name}/edit", console.page(edit_server, "admin"), methods=["GET"]),
        Route("/servers/{name}/edit", console.page(update_server, "admin"), methods=["POST"]),
        Route("/servers/{name}/refresh", console.page(refresh_server, "admin"), methods=["POST"]),
        Route("/servers/{name}/remove", console.page(remove_server, "admin"), methods=["POST"]),
        *(
            Route(
                f"/servers/{{name}}/instructions/{decision}",
                console.page(
                    deciding(decision, "servers", "/instructions", "The instructions of {name} are"),
                    "approve",
                ),
                methods=["POST"],
            )
            for decision in ("approve", "reject")
        ),
    ]
