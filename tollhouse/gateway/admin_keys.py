"""Admin API for the key ring: list the master keys, rotate, remove one no stored credential uses.

Rotation adds a key in front (file-backed rings) and re-encrypts every stored credential under
the active key; token signing follows through the state's listeners, while older keys stay
published so live tokens keep verifying (docs/operations.md, "The key ring").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.auth.keyring import KeyRing, KeyRingError
from tollhouse.auth.vault import CredentialCipher, VaultError
from tollhouse.gateway.admin_http import Problem as _Problem
from tollhouse.gateway.admin_http import json_response as _json
from tollhouse.gateway.admin_http import read_body as _body
from tollhouse.registry.secrets_store import SqlSecretStore

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["key_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]


def key_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /keys routes."""

    async def list_keys(request: Request) -> Response:
        return _json(await _keys_out(state))

    async def rotate_keys(request: Request) -> Response:
        body = await _body(request)
        generate = body.get("generate")
        if generate is not None and not isinstance(generate, bool):
            raise _Problem(400, "Bad Request", "'generate' must be true or false")
        async with state.keys_lock:
            ring, secrets = _key_ring(state)
            if generate is None:
                # Keys from the environment change only there: then rotation is the re-encryption.
                generate = ring.source != "env"
            if generate:
                try:
                    ring = ring.rotated()
                except KeyRingError as exc:
                    raise _Problem(409, "Conflict", str(exc)) from None
                _set_ring(state, ring)
            try:
                report = await secrets.reencrypt_all(CredentialCipher.from_keyring(ring))
            except VaultError as exc:
                raise _Problem(409, "Conflict", f"re-encryption stopped, nothing changed: {exc}") from None
        out = await _keys_out(state)
        out["reencrypted"] = report.reencrypted
        return _json(out)

    async def remove_key(request: Request) -> Response:
        kid = request.path_params["kid"]
        async with state.keys_lock:
            ring, secrets = _key_ring(state)
            if kid not in ring.kids:
                raise _Problem(404, "Not Found", f"no key '{kid}'")
            rows = (await secrets.rows_by_kid()).get(kid, 0)
            if rows:
                raise _Problem(
                    409,
                    "Conflict",
                    f"key '{kid}' still seals {rows} stored credentials: run keys rotate first",
                )
            try:
                ring = ring.without(kid)
            except KeyRingError as exc:
                raise _Problem(409, "Conflict", str(exc)) from None
            _set_ring(state, ring)
        return _json(await _keys_out(state))

    return [
        Route("/keys", guarded(list_keys), methods=["GET"]),
        Route("/keys/rotate", guarded(rotate_keys), methods=["POST"]),
        Route("/keys/{kid}", guarded(remove_key), methods=["DELETE"]),
    ]


def _key_ring(state: AdminState) -> tuple[KeyRing, SqlSecretStore]:
    if state.keyring is None or state.secrets is None:
        raise _Problem(409, "Conflict", "this gateway has no key ring")
    return state.keyring, state.secrets


def _set_ring(state: AdminState, ring: KeyRing) -> None:
    state.keyring = ring
    if state.secrets is not None:
        state.secrets.use_cipher(CredentialCipher.from_keyring(ring))
    for listener in state.keyring_listeners:
        listener(ring)


async def _keys_out(state: AdminState) -> dict[str, Any]:
    ring, secrets = _key_ring(state)
    rows = await secrets.rows_by_kid()
    source = "env" if ring.source == "env" else "file" if ring.source.startswith("file:") else ring.source
    return {
        "active": ring.active_kid,
        "source": source,
        "keys": [
            {"kid": kid, "active": kid == ring.active_kid, "rows": rows.get(kid, 0)} for kid in ring.kids
        ],
        # Rows sealed under a key this gateway does not have (a key removed out of band).
        "unknown": {kid: n for kid, n in rows.items() if kid not in ring.kids},
    }
