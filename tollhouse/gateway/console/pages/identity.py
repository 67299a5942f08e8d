"""Teams, users and clients: the lists for every role; creating, changing and removing for admins.

A new client's credentials are in the admin API's answer to its creation and nowhere else (only
their hashes are stored), so the console shows them once, on the page that answers the form, and
never again.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, View
from tollhouse.registry.models import ROLES

__all__ = ["routes"]

# Refusals a form answers in place (the field's problem), rather than as an error page.


# -- the page ----------------------------------------------------------------------------------


async def identity(view: View) -> Response:
    return await _identity_page(view)


async def _identity_page(
    view: View,
    *,
    forms: dict[str, dict[str, Any]] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    teams = (await view.api.get("/teams"))["items"]
    users = (await view.api.get("/users"))["items"]
    clients = (await view.api.get("/clients"))["items"]
    blank: dict[str, dict[str, Any]] = {
        "team": {"name": "", "description": ""},
        "user": {"name": "", "display_name": "", "roles": [], "teams": []},
        "client": {"name": "", "team": "", "scopes": ""},
    }
    return view.render(
        "identity/index.html",
        {
            "title": "Teams, users and clients",
            "teams": teams,
            "users": users,
            "clients": clients,
            "roles": ROLES,
            "forms": {**blank, **(forms or {})},
            "errors": errors or {},
            "can_edit": view.viewer.can("admin"),
        },
        status=status,
    )


# -- teams -------------------------------------------------------------------------------------


async def create_team(view: View) -> Response:
    form = {"name": view.field("name").strip(), "description": view.field("description").strip()}
    try:
        await view.api.post("/teams", {"name": form["name"], "description": form["description"] or None})
    except ApiError as error:
        if not error.about_the_form:
            raise
        return await _identity_page(
            view, forms={"team": form}, errors={"team": error.detail}, status=error.status
        )
    return view.redirect("/identity", notice=f"Team '{form['name']}' created.")


async def delete_team(view: View) -> Response:
    name = view.request.path_params["name"]
    await view.api.delete(f"/teams/{name}")
    return view.redirect("/identity", notice=f"Team '{name}' deleted.")


# -- users -------------------------------------------------------------------------------------


async def create_user(view: View) -> Response:
    form = {
        "name": view.field("name").strip(),
        "display_name": view.field("display_name").strip(),
        "roles": view.fields("roles"),
        "teams": view.fields("teams"),
    }
    body: dict[str, Any] = {"name": form["name"], "roles": form["roles"], "teams": form["teams"]}
    if form["display_name"]:
        body["display_name"] = form["display_name"]
    if view.field("password"):
        body["password"] = view.field("password")
    try:
        await view.api.post("/users", body)
    except ApiError as error:
        if not error.about_the_form:
            raise
        # The password is never sent back to the browser, not even to re-fill the form.
        return await _identity_page(
            view, forms={"user": form}, errors={"user": error.detail}, status=error.status
        )
    return view.redirect("/identity", notice=f"User '{form['name']}' created.")


async def show_user(view: View) -> Response:
    user = await view.api.get(f"/users/{view.request.path_params['name']}")
    return await _user_page(view, user)


async def _user_page(
    view: View, user: dict[str, Any], *, error: str | None = None, status: int = 200
) -> Response:
    teams = (await view.api.get("/teams"))["items"]
    return view.render(
        "identity/user.html",
        {
            "title": f"User {user['name']}",
            "user": user,
            "roles": ROLES,
            "teams": teams,
            "error": error,
            "can_edit": view.viewer.can("admin"),
            "is_self": user["name"] == view.viewer.subject,
        },
        status=status,
    )


async def update_user(view: View) -> Response:
    name = view.request.path_params["name"]
    body: dict[str, Any] = {
        "roles": view.fields("roles"),
        "teams": view.fields("teams"),
        "disabled": view.field("disabled") == "on",
        "display_name": view.field("display_name").strip(),
    }
    if view.field("password"):
        body["password"] = view.field("password")
    try:
        await view.api.patch(f"/users/{name}", body)
    except ApiError as error:
        if not error.about_the_form:
            raise
        user = await view.api.get(f"/users/{name}")
        return await _user_page(view, user, error=error.detail, status=error.status)
    return view.redirect(f"/identity/users/{name}", notice=f"User '{name}' updated.")


async def delete_user(view: View) -> Response:
    name = view.request.path_params["name"]
    await view.api.delete(f"/users/{name}")
    return view.redirect("/identity", notice=f"User '{name}' deleted; their tokens no longer work.")


# -- clients -----------------------------------------------------------------------------------


async def create_client(view: View) -> Response:
    form = {
        "name": view.field("name").strip(),
        "team": view.field("team").strip(),
        "scopes": view.field("scopes").strip(),
    }
    body = {
        "name": form["name"],
        "team": form["team"] or None,
        "scopes": sorted({s for s in re.split(r"[,\s]+", form["scopes"]) if s}),
    }
    try:
        created = await view.api.post("/clients", body)
    except ApiError as error:
        if not error.about_the_form:
            raise
        return await _identity_page(
            view, forms={"client": form}, errors={"client": error.detail}, status=error.status
        )
    # Rendered here, not after a redirect: the credentials exist only in this answer.
    return view.render(
        "identity/client_created.html",
        {"title": f"Client {created['name']} created", "client": created},
        status=201,
    )


async def revoke_client(view: View) -> Response:
    ref = view.request.path_params["ref"]
    revoked = await view.api.post(f"/clients/{ref}/revoke")
    return view.redirect(
        "/identity", notice=f"Client '{revoked['name']}' revoked; its key, secret and tokens no longer work."
    )


def routes(console: Console) -> list[BaseRoute]:
    admin = "admin"
    return [
        Route("/identity", console.page(identity), methods=["GET"]),
        Route("/identity/teams", console.page(create_team, need=admin), methods=["POST"]),
        Route("/identity/teams/{name}/delete", console.page(delete_team, need=admin), methods=["POST"]),
        Route("/identity/users", console.page(create_user, need=admin), methods=["POST"]),
        Route("/identity/users/{name}", console.page(show_user), methods=["GET"]),
        Route("/identity/users/{name}", console.page(update_user, need=admin), methods=["POST"]),
        Route("/identity/users/{name}/delete", console.page(delete_user, need=admin), methods=["POST"]),
        Route("/identity/clients", console.page(create_client, need=admin), methods=["POST"]),
        Route("/identity/clients/{ref}/revoke", console.page(revoke_client, need=admin), methods=["POST"]),
    ]
