"""Admin API for identities: users, teams, and the record of failed authentications.

Users sign in to the built-in authorization server; their roles (`admin`, `approver`,
`auditor`, `viewer`) decide what they may do in the admin API and the console. Password
hashes never leave the store; a password is set through the API (or `tollhouse users create`,
which reads it from standard input) and only its argon2id hash is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.auth.passwords import PasswordError, Passwords
from tollhouse.gateway.admin_http import Problem, iso, json_response, read_body
from tollhouse.gateway.front_door import revoke_principal
from tollhouse.registry.identity_store import SqlIdentityStore
from tollhouse.registry.models import ROLES, TEAM_NAME_RE, USER_NAME_RE, Team, User
from tollhouse.registry.store import StoreConflictError

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["identity_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]


def identity_routes(state: AdminState, guarded: Guard, passwords: Passwords) -> list[Route]:
    """The /users, /teams and /auth routes."""

    def store() -> SqlIdentityStore:
        if state.identity is None:
            raise Problem(503, "Unavailable", "identities are not configured")
        return state.identity

    async def list_users(request: Request) -> Response:
        return json_response({"items": [_user_out(u) for u in await store().list_users()]})

    async def create_user(request: Request) -> Response:
        body = await read_body(request)
        subject = body.get("name", body.get("subject"))
        if not isinstance(subject, str) or not USER_NAME_RE.match(subject):
            raise Problem(400, "Bad Request", "'name' must match [A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}")
        roles = _roles(body.get("roles", []))
        teams = await _teams(body.get("teams", []))
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            raise Problem(400, "Bad Request", "'password' must be a string")
        display = body.get("display_name")
        user = User(
            subject=subject,
            password_hash=await _hash(password) if password else None,
            display_name=display if isinstance(display, str) else None,
            roles=roles,
            teams=teams,
        )
        try:
            created = await store().create_user(user)
        except StoreConflictError:
            raise Problem(409, "Conflict", f"a user named '{subject}' already exists") from None
        return json_response(_user_out(created), 201)

    async def show_user(request: Request) -> Response:
        user = await store().get_user(request.path_params["name"])
        if user is None:
            raise Problem(404, "Not Found", f"no user '{request.path_params['name']}'")
        return json_response(_user_out(user))

    async def update_user(request: Request) -> Response:
        name = request.path_params["name"]
        body = await read_body(request)
        unknown = set(body) - {"password", "roles", "teams", "disabled", "display_name"}
        if unknown:
            raise Problem(400, "Bad Request", f"unknown field(s): {', '.join(sorted(unknown))}")
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            raise Problem(400, "Bad Request", "'password' must be a string")
        disabled = body.get("disabled")
        if disabled is not None and not isinstance(disabled, bool):
            raise Problem(400, "Bad Request", "'disabled' must be true or false")
        display = body.get("display_name")
        user = await store().update_user(
            name,
            password_hash=await _hash(password) if password else None,
            roles=_roles(body["roles"]) if "roles" in body else None,
            teams=await _teams(body["teams"]) if "teams" in body else None,
            disabled=disabled,
            display_name=display if isinstance(display, str) else None,
        )
        if user is None:
            raise Problem(404, "Not Found", f"no user '{name}'")
        if user.disabled or password:
            # A disabled user, or one whose password changed, keeps no session: their refresh
            # tokens go, and so (when disabled) do the access tokens they hold.
            await store().revoke_refresh_for(subject=name)
            if user.disabled and state.door is not None:
                await revoke_principal(state.door, store(), f"user:{name}")
        return json_response(_user_out(user))

    async def delete_user(request: Request) -> Response:
        name = request.path_params["name"]
        if not await store().delete_user(name):
            raise Problem(404, "Not Found", f"no user '{name}'")
        if state.door is not None:
            await revoke_principal(state.door, store(), f"user:{name}")
        return Response(status_code=204)

    async def list_teams(request: Request) -> Response:
        return json_response({"items": [_team_out(t) for t in await store().list_teams()]})

    async def create_team(request: Request) -> Response:
        body = await read_body(request)
        name, description = body.get("name"), body.get("description")
        if not isinstance(name, str) or not TEAM_NAME_RE.match(name):
            raise Problem(400, "Bad Request", "'name' must match [a-z0-9][a-z0-9_.-]{0,63}")
        if description is not None and not isinstance(description, str):
            raise Problem(400, "Bad Request", "'description' must be a string")
        try:
            team = await store().create_team(Team(name=name, description=description))
        except StoreConflictError:
            raise Problem(409, "Conflict", f"a team named '{name}' already exists") from None
        return json_response(_team_out(team), 201)

    async def delete_team(request: Request) -> Response:
        name = request.path_params["name"]
        if not await store().delete_team(name):
            raise Problem(404, "Not Found", f"no team '{name}'")
        return Response(status_code=204)

    async def auth_failures(request: Request) -> Response:
        if state.door is None:
            return json_response({"items": [], "counts": {}})
        try:
            limit = min(max(int(request.query_params.get("limit", "100")), 1), 1000)
        except ValueError:
            raise Problem(400, "Bad Request", "'limit' must be an integer") from None
        failures = state.door.failures
        return json_response(
            {"items": [f.to_json() for f in failures.recent(limit)], "counts": dict(failures.counts)}
        )

    async def _hash(password: str) -> str:
        try:
            # argon2 costs tens of milliseconds of CPU: off the event loop.
            return await anyio.to_thread.run_sync(passwords.hash, password)
        except PasswordError as exc:
            raise Problem(400, "Bad Request", str(exc)) from None

    async def _teams(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise Problem(400, "Bad Request", "'teams' must be a list of team names")
        known = {t.name for t in await store().list_teams()}
        missing = sorted(set(value) - known)
        if missing:
            raise Problem(400, "Bad Request", f"unknown team(s): {', '.join(missing)}; create them first")
        return tuple(sorted(set(value)))

    return [
        Route("/users", guarded(list_users), methods=["GET"]),
        Route("/users", guarded(create_user), methods=["POST"]),
        Route("/users/{name}", guarded(show_user), methods=["GET"]),
        Route("/users/{name}", guarded(update_user), methods=["PATCH"]),
        Route("/users/{name}", guarded(delete_user), methods=["DELETE"]),
        Route("/teams", guarded(list_teams), methods=["GET"]),
        Route("/teams", guarded(create_team), methods=["POST"]),
        Route("/teams/{name}", guarded(delete_team), methods=["DELETE"]),
        Route("/auth/failures", guarded(auth_failures, "audit"), methods=["GET"]),
    ]


def _roles(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise Problem(400, "Bad Request", "'roles' must be a list")
    unknown = sorted(set(value) - set(ROLES))
    if unknown:
        raise Problem(
            400, "Bad Request", f"unknown role(s): {', '.join(unknown)} (known: {', '.join(ROLES)})"
        )
    return tuple(sorted(set(value)))


def _user_out(u: User) -> dict[str, Any]:
    return {
        "name": u.subject,
        "display_name": u.display_name,
        "roles": list(u.roles),
        "teams": list(u.teams),
        "disabled": u.disabled,
        "has_password": u.password_hash is not None,
        "created_at": iso(u.created_at),
        "updated_at": iso(u.updated_at),
    }


def _team_out(t: Team) -> dict[str, Any]:
    return {"name": t.name, "description": t.description, "created_at": iso(t.created_at)}
