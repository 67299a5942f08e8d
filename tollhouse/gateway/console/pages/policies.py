"""Policies: the list, one policy's Cedar (admins edit, validate, save, delete), and a simulator.

The simulator asks the admin API's `POST /policies/explain` "may this principal do this action on
this resource with these arguments?" and shows the decision, the policies that decided it and the
engine's explanation, as text. It changes nothing, so every role may use it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, View
from tollhouse.registry.models import POLICY_ID_RE

__all__ = ["routes"]

ACTIONS = ("call_tool", "list_tool", "read_resource", "get_prompt", "call_agent")
RESOURCE_KINDS = ("tool", "prompt", "resource", "agent", "skill")
SIMULATION_FIELDS = (
    "principal_kind",
    "principal",
    "client",
    "teams",
    "roles",
    "scopes",
    "action",
    "resource_kind",
    "resource",
    "server",
    "toolsets",
    "arguments",
    "source_ip",
)
_EFFECT = re.compile(r"^\s*(permit|forbid)\s*\(", re.MULTILINE)
_SUMMARY_CHARS = 100
BAD_ID = "The id must start with a letter or digit and use only letters, digits and _ . : - (at most 128)."


class FormProblem(ValueError):
    """A simulation form the console cannot turn into a request (the message says why)."""


# -- the list ----------------------------------------------------------------------------------


async def list_policies(view: View) -> Response:
    answer = await view.api.get("/policies")
    items = [{**item, "effect": _effect(item), "summary": _summary(item)} for item in answer["items"]]
    return view.render(
        "policies/index.html",
        {
            "title": "Policies",
            "policies": items,
            "version": answer.get("version"),
            "can_edit": view.viewer.can("admin"),
        },
    )


def _effect(item: dict[str, Any]) -> str:
    """permit or forbid (both when a Cedar text holds both kinds of statement)."""
    if item.get("allow") is not None:
        return "permit"
    if item.get("deny") is not None:
        return "forbid"
    found = sorted(set(_EFFECT.findall(str(item.get("cedar") or ""))), reverse=True)
    return " + ".join(found) if found else "—"


def _summary(item: dict[str, Any]) -> str:
    """The description, or else the first line of Cedar that is not an annotation or a comment."""
    if item.get("description"):
        return str(item["description"])
    for line in str(item.get("cedar") or "").splitlines():
        text = line.strip()
        if text and not text.startswith(("@", "//")):
            return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"
    return ""


# -- one policy --------------------------------------------------------------------------------


async def show_policy(view: View) -> Response:
    policy = await view.api.get(f"/policies/{view.request.path_params['id']}")
    return _policy_page(view, policy, cedar=policy["cedar"], description=policy.get("description") or "")


async def new_policy(view: View) -> Response:
    return _policy_page(view, None, cedar="", description="", new_id="")


async def create_policy(view: View) -> Response:
    policy_id, cedar, description = view.field("id").strip(), view.field("cedar"), view.field("description")
    if not POLICY_ID_RE.match(policy_id):
        errors = [BAD_ID]
        return _policy_page(
            view, None, cedar=cedar, description=description, new_id=policy_id, errors=errors, status=400
        )
    if await _exists(view, policy_id):
        errors = [f"A policy with the id '{policy_id}' already exists: choose another id, or edit that one."]
        return _policy_page(
            view, None, cedar=cedar, description=description, new_id=policy_id, errors=errors, status=409
        )
    try:
        await view.api.put(f"/policies/{policy_id}", _body(cedar, description))
    except ApiError as error:
        if error.status != 400:
            raise
        return _policy_page(
            view,
            None,
            cedar=cedar,
            description=description,
            new_id=policy_id,
            errors=_problems(error),
            status=400,
        )
    return view.redirect(f"/policies/{policy_id}", notice=f"Policy '{policy_id}' created; it applies now.")


async def save_policy(view: View) -> Response:
    policy_id = view.request.path_params["id"]
    cedar, description = view.field("cedar"), view.field("description")
    try:
        await view.api.put(f"/policies/{policy_id}", _body(cedar, description))
    except ApiError as error:
        if error.status != 400:
            raise
        policy = await view.api.get(f"/policies/{policy_id}")
        return _policy_page(
            view, policy, cedar=cedar, description=description, errors=_problems(error), status=400
        )
    return view.redirect(f"/policies/{policy_id}", notice=f"Policy '{policy_id}' saved; it applies now.")


async def validate_policy(view: View) -> Response:
    """Check the edited text as part of the whole set, as Save would, without storing anything."""
    path_id = view.request.path_params["id"]
    policy_id = view.field("id").strip() or path_id
    cedar, description = view.field("cedar"), view.field("description")
    result = await _validate(view, policy_id, cedar, description)
    if view.is_htmx:
        return view.render("policies/_validation.html", {"validation": result})
    is_new = view.form is not None and "id" in view.form
    policy = None if is_new else await view.api.get(f"/policies/{path_id}")
    return _policy_page(
        view,
        policy,
        cedar=cedar,
        description=description,
        new_id=view.field("id") if is_new else None,
        validation=result,
    )


async def delete_policy(view: View) -> Response:
    policy_id = view.request.path_params["id"]
    await view.api.delete(f"/policies/{policy_id}")
    return view.redirect("/policies", notice=f"Policy '{policy_id}' deleted.")


def _policy_page(
    view: View,
    policy: dict[str, Any] | None,
    *,
    cedar: str,
    description: str,
    new_id: str | None = None,
    errors: list[str] | None = None,
    validation: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    if errors is not None:
        validation = {"valid": False, "errors": errors}
    title = f"Policy {policy['id']}" if policy is not None else "New policy"
    sugar = {k: policy[k] for k in ("allow", "deny", "guardrails") if policy and k in policy}
    return view.render(
        "policies/policy.html",
        {
            "title": title,
            "policy": policy,
            "sugar": sugar,
            "new_id": new_id,
            "cedar": cedar,
            "description": description,
            "validation": validation,
            "can_edit": view.viewer.can("admin"),
        },
        status=status,
    )


def _body(cedar: str, description: str) -> dict[str, Any]:
    return {"cedar": cedar, "description": description.strip() or None}


async def _exists(view: View, policy_id: str) -> bool:
    try:
        await view.api.get(f"/policies/{policy_id}")
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


async def _validate(view: View, policy_id: str, cedar: str, description: str) -> dict[str, Any]:
    if not POLICY_ID_RE.match(policy_id):
        return {"valid": False, "errors": [BAD_ID]}
    current = (await view.api.get("/policies"))["items"]
    others = [
        {"id": p["id"], "cedar": p["cedar"], "description": p.get("description")}
        for p in current
        if p["id"] != policy_id
    ]
    proposed = {"id": policy_id, **_body(cedar, description)}
    try:
        answer = await view.api.post("/policies/validate", {"policies": [*others, proposed]})
    except ApiError as error:
        if error.status != 400:
            raise
        return {"valid": False, "errors": _problems(error)}
    return {"valid": bool(answer["valid"]), "errors": [str(e) for e in answer["errors"]]}


def _problems(error: ApiError) -> list[str]:
    """The admin API joins a set's problems with '; ' — one line each reads better."""
    return [part for part in (p.strip() for p in error.detail.split("; ")) if part] or [error.title]


# -- simulation --------------------------------------------------------------------------------


async def simulate_form(view: View) -> Response:
    return _simulation_page(view, _form_from_query(view.request.query_params))


async def simulate(view: View) -> Response:
    form = {name: view.field(name) for name in SIMULATION_FIELDS}
    try:
        request = _explain_request(form)
    except FormProblem as problem:
        return _simulation_page(view, form, error=str(problem), status=400)
    try:
        result = await view.api.post("/policies/explain", request)
    except ApiError as error:
        if error.status != 400:
            raise
        return _simulation_page(view, form, error=error.detail or error.title, status=400)
    return _simulation_page(view, form, result=result)


def _simulation_page(
    view: View,
    form: dict[str, str],
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    determining = [e for e in (result or {}).get("evaluated", []) if e.get("determining")]
    return view.render(
        "policies/simulate.html",
        {
            "title": "Simulate a decision",
            "form": form,
            "actions": ACTIONS,
            "resource_kinds": RESOURCE_KINDS,
            "result": result,
            "determining": determining,
            "error": error,
        },
        status=status,
    )


def _form_from_query(query: QueryParams) -> dict[str, str]:
    """A prefilled form (other pages link here with ?resource=… and the like)."""
    form = {name: query.get(name, "") for name in SIMULATION_FIELDS}
    form["principal_kind"] = form["principal_kind"] or "user"
    form["action"] = form["action"] or "call_tool"
    form["resource_kind"] = form["resource_kind"] or "tool"
    return form


def _explain_request(form: dict[str, str]) -> dict[str, Any]:
    """The admin API's explain request for a submitted simulation form.

    Raises:
        FormProblem: a field the console can already tell is wrong.
    """
    name = form["principal"].strip()
    if not name:
        raise FormProblem("Name the principal: a user's subject or a client id.")
    kind = form["principal_kind"]
    if kind not in ("user", "client"):
        raise FormProblem("The principal is a user or a client.")
    principal: dict[str, Any] = {kind: name}
    if kind == "user" and form["client"].strip():
        principal["client"] = form["client"].strip()
    for key in ("teams", "roles", "scopes"):
        principal[key] = _names(form[key])
    if form["action"] not in ACTIONS:
        raise FormProblem(f"The action is one of {', '.join(ACTIONS)}.")
    return {
        "principal": principal,
        "action": form["action"],
        "resource": _resource(form),
        "context": _context(form),
    }


def _resource(form: dict[str, str]) -> dict[str, Any]:
    kind, target = form["resource_kind"], form["resource"].strip()
    if kind not in RESOURCE_KINDS:
        raise FormProblem(f"The resource is one of {', '.join(RESOURCE_KINDS)}.")
    if not target:
        raise FormProblem("Name the resource (a tool's exposed name, an agent, a skill as agent/skill, …).")
    resource: dict[str, Any] = {kind: target}
    if form["server"].strip():
        resource["server"] = form["server"].strip()
    if kind == "tool" and form["toolsets"].strip():
        resource["toolsets"] = _names(form["toolsets"])
    return resource


def _context(form: dict[str, str]) -> dict[str, Any]:
    text = form["arguments"].strip()
    try:
        arguments = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError as exc:
        raise FormProblem(f"The arguments are not valid JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise FormProblem('The arguments must be a JSON object, like {"path": "/public/a"}.')
    context: dict[str, Any] = {"arguments": arguments}
    if form["source_ip"].strip():
        context["source_ip"] = form["source_ip"].strip()
    return context


def _names(text: str) -> list[str]:
    return sorted({part for part in re.split(r"[,\s]+", text) if part})


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/policies", console.page(list_policies), methods=["GET"]),
        Route("/policies/new", console.page(new_policy, need="admin"), methods=["GET"]),
        Route("/policies/new", console.page(create_policy, need="admin"), methods=["POST"]),
        Route("/policies/simulate", console.page(simulate_form), methods=["GET"]),
        Route("/policies/simulate", console.page(simulate), methods=["POST"]),
        Route("/policies/{id}", console.page(show_policy), methods=["GET"]),
        Route("/policies/{id}", console.page(save_policy, need="admin"), methods=["POST"]),
        Route("/policies/{id}/validate", console.page(validate_policy), methods=["POST"]),
        Route("/policies/{id}/delete", console.page(delete_policy, need="admin"), methods=["POST"]),
    ]
