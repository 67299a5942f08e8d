"""Limits & budgets: rate and concurrency rules, kill switches, recent refusals, budgets, prices.

Everything is read and changed through the admin API (`/limits`, `/kill-switches`, `/budgets`,
`/prices`); the forms here only translate fields into its JSON and show its refusals next to the
values that were typed. Budgets whose name is `*` (each team, client or user its own) show the
status of every name that used the gateway this month or holds a credit.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import yaml
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, View

__all__ = ["routes"]

MATCH_KEYS = ("subject", "team", "client", "server", "tool")
KILL_KINDS = ("subject", "client", "server")
# Budget scope -> the usage report dimension that names its accounts.
SCOPE_DIMENSION = {"team": "team", "client": "client", "user": "subject"}
MAX_STATUS_NAMES = 50
RECENT_REFUSALS = 50
NEAR_SHARE = 0.8


# -- the page ------------------------------------------------------------------------------------


async def limits_page(view: View) -> Response:
    limits = await view.api.get("/limits")
    budgets = (await view.api.get("/budgets"))["items"]
    context: dict[str, Any] = {
        "title": "Limits & budgets",
        "limits": limits,
        "kills": (await view.api.get("/kill-switches"))["items"],
        "refusals": await view.api.get("/limits/recent", limit=RECENT_REFUSALS)
        if view.viewer.can("audit")
        else None,
        "budgets": budgets,
        "budget_rows": await _budget_rows(view, budgets),
        "prices": (await view.api.get("/prices"))["items"],
        "kill_kinds": KILL_KINDS,
        "match_keys": MATCH_KEYS,
    }
    context.update(await _caller_check(view))
    return view.render("limits/index.html", context)


async def _caller_check(view: View) -> dict[str, Any]:
    """The counters one caller would hit (the "check a caller" form), when it was filled in."""
    query = view.request.query_params
    caller = {key: query.get(key, "").strip() for key in MATCH_KEYS}
    if not any(caller.values()):
        return {"caller": caller, "caller_status": None}
    params = {key: value for key, value in caller.items() if value}
    return {"caller": caller, "caller_status": (await view.api.get("/limits/status", **params))["items"]}


async def _budget_rows(view: View, budgets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per budget and account name: the current period's spending against the allowance."""
    known: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        names = await _account_names(view, budget, known)
        if not names:
            rows.append({"budget": budget, "name": budget["name"], "status": None})
        for name in names:
            status = await view.api.get(f"/budgets/{budget['id']}/status", name=name)
            rows.append({"budget": budget, "name": name, "status": status, **_standing(budget, status)})
    return rows


async def _account_names(view: View, budget: dict[str, Any], known: dict[str, list[str]]) -> list[str]:
    if budget["name"] != "*":
        return [budget["name"]]
    dimension = SCOPE_DIMENSION.get(budget["scope"], "team")
    if dimension not in known:
        report = await view.api.get("/usage/report", by=dimension)
        known[dimension] = sorted({row[dimension] for row in report["items"] if row.get(dimension)})
    credited = {grant["name"] for grant in budget.get("credits", [])}
    return sorted(set(known[dimension]) | credited)[:MAX_STATUS_NAMES]


def _standing(budget: dict[str, Any], status: dict[str, Any]) -> dict[str, str]:
    """A status word (and its badge colour) for one account: ok, near limit, on credits, exhausted, over."""
    used, amount = status["used_micro"], status["amount_micro"]
    if used < amount:
        if used >= amount * NEAR_SHARE:
            return {"standing": "near limit", "kind": "warn"}
        return {"standing": "ok", "kind": "good"}
    if budget.get("mode") == "soft":
        if status["overage_micro"]:
            return {"standing": "over", "kind": "bad"}
        return {"standing": "at limit", "kind": "warn"}
    if any(credit["remaining_micro"] > 0 for credit in status.get("credits", [])):
        return {"standing": "on credits", "kind": "warn"}
    return {"standing": "exhausted", "kind": "bad"}


# -- rate and concurrency rules ------------------------------------------------------------------


async def new_limit(view: View) -> Response:
    values = {"id": "", "window": "fixed", "failure_mode": "open", "match": {}, "per": []}
    return _limit_form(view, values, editing=False)


async def create_limit(view: View) -> Response:
    values = _limit_values(view)
    limit_id = values["id"]
    if not limit_id:
        return _limit_form(view, values, editing=False, error="Give the limit an id.", status=400)
    if "/" in limit_id:
        return _limit_form(view, values, editing=False, error="An id cannot contain '/'.", status=400)
    existing = (await view.api.get("/limits"))["items"]
    if any(item["id"] == limit_id for item in existing):
        error = f"A limit named '{limit_id}' already exists: edit it instead."
        return _limit_form(view, values, editing=False, error=error, status=409)
    return await _save_limit(view, values, editing=False)


async def edit_limit(view: View) -> Response:
    spec = await view.api.get(f"/limits/{_segment(view, 'id')}")
    return _limit_form(view, spec, editing=True)


async def update_limit(view: View) -> Response:
    values = {**_limit_values(view), "id": _segment(view, "id")}
    return await _save_limit(view, values, editing=True)


async def _save_limit(view: View, values: dict[str, Any], *, editing: bool) -> Response:
    try:
        await view.api.put(f"/limits/{values['id']}", _limit_body(values))
    except ApiError as error:
        if not error.about_the_form:
            raise
        return _limit_form(view, values, editing=editing, error=error.detail, status=error.status)
    verb = "saved" if editing else "created"
    return view.redirect("/limits", notice=f"Limit {values['id']} {verb}.")


async def delete_limit(view: View) -> Response:
    limit_id = _segment(view, "id")
    await view.api.delete(f"/limits/{limit_id}")
    return view.redirect("/limits", notice=f"Limit {limit_id} deleted.")


def _limit_values(view: View) -> dict[str, Any]:
    """The submitted form in the API's shape, as text (the API validates)."""
    return {
        "id": view.field("id").strip(),
        "match": {key: value for key in MATCH_KEYS if (value := view.field(f"match_{key}").strip())},
        "rate": view.field("rate").strip(),
        "window": view.field("window", "fixed"),
        "concurrency": view.field("concurrency").strip(),
        "per": [key for key in view.fields("per") if key in MATCH_KEYS],
        "failure_mode": view.field("failure_mode", "open"),
        "description": view.field("description").strip(),
    }


def _limit_body(values: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "match": values["match"],
        "window": values["window"],
        "failure_mode": values["failure_mode"],
    }
    if values["rate"]:
        body["rate"] = values["rate"]
    concurrency = str(values["concurrency"])
    if concurrency:
        # A number goes as a number; anything else as typed, so the API's message names the problem.
        body["concurrency"] = int(concurrency) if concurrency.isdigit() else concurrency
    if values["per"]:
        body["per"] = values["per"]
    if values["description"]:
        body["description"] = values["description"]
    return body


def _limit_form(
    view: View, values: dict[str, Any], *, editing: bool, error: str | None = None, status: int = 200
) -> Response:
    shown = {
        "id": values.get("id", ""),
        "match": values.get("match") or {},
        "rate": values.get("rate") or "",
        "window": values.get("window") or "fixed",
        "concurrency": values.get("concurrency") if values.get("concurrency") is not None else "",
        "per": values.get("per") or [],
        "failure_mode": values.get("failure_mode") or "open",
        "description": values.get("description") or "",
    }
    title = f"Edit limit {shown['id']}" if editing else "New limit"
    return view.render(
        "limits/limit_form.html",
        {"title": title, "limit": shown, "editing": editing, "error": error, "match_keys": MATCH_KEYS},
        status=status,
    )


# -- kill switches -------------------------------------------------------------------------------


async def engage_kill(view: View) -> Response:
    body: dict[str, Any] = {"kind": view.field("kind"), "value": view.field("value").strip()}
    if reason := view.field("reason").strip():
        body["reason"] = reason
    try:
        await view.api.post("/kill-switches", body)
    except ApiError as error:
        if not error.about_the_form:
            raise
        return view.redirect("/limits#kill-switches", error=error.detail)
    return view.redirect(
        "/limits#kill-switches", notice=f"Kill switch engaged: {body['kind']} {body['value']}."
    )


async def release_kill(view: View) -> Response:
    kind, value = view.field("kind"), view.field("value")
    if kind not in KILL_KINDS or not value or "/" in value:
        return view.redirect("/limits#kill-switches", error="That kill switch cannot be released here.")
    await view.api.delete(f"/kill-switches/{kind}/{value}")
    return view.redirect("/limits#kill-switches", notice=f"Kill switch released: {kind} {value}.")


# -- budgets and credits -------------------------------------------------------------------------


async def new_budget(view: View) -> Response:
    values = {"id": "", "scope": "team", "name": "*", "period": "month", "amount": "", "currency": "USD"}
    return _budget_form(view, {**values, "mode": "hard", "failure_mode": "closed"}, editing=False)


async def create_budget(view: View) -> Response:
    values = _budget_values(view)
    if not values["id"] or "/" in values["id"]:
        return _budget_form(view, values, editing=False, error="Give the budget an id.", status=400)
    current = (await view.api.get("/budgets"))["items"]
    if any(item["id"] == values["id"] for item in current):
        error = f"A budget named '{values['id']}' already exists: edit it instead."
        return _budget_form(view, values, editing=False, error=error, status=409)
    return await _save_budget(view, values, credits=[], editing=False)


async def edit_budget(view: View) -> Response:
    budget = await _budget(view, _segment(view, "id"))
    values = {**budget, "amount": _units(budget["amount_micro"])}
    return _budget_form(view, values, editing=True)


async def update_budget(view: View) -> Response:
    budget = await _budget(view, _segment(view, "id"))
    values = {**_budget_values(view), "id": budget["id"]}
    # PUT /budgets/{id} replaces the whole budget: its credit grants must travel with it.
    return await _save_budget(view, values, credits=budget.get("credits", []), editing=True)


async def _save_budget(
    view: View, values: dict[str, Any], *, credits: list[dict[str, Any]], editing: bool
) -> Response:
    amount = _micro(values["amount"])
    if amount is None:
        error = "The amount must be a number of currency units, e.g. 50 or 12.50."
        return _budget_form(view, values, editing=editing, error=error, status=400)
    body = {key: values[key] for key in ("scope", "name", "period", "currency", "mode", "failure_mode")}
    body["amount_micro"] = amount
    if credits:
        body["credits"] = credits
    try:
        await view.api.put(f"/budgets/{values['id']}", body)
    except ApiError as error:
        if not error.about_the_form:
            raise
        return _budget_form(view, values, editing=editing, error=error.detail, status=error.status)
    verb = "saved" if editing else "created"
    return view.redirect("/limits#budgets", notice=f"Budget {values['id']} {verb}.")


async def delete_budget(view: View) -> Response:
    budget_id = _segment(view, "id")
    await view.api.delete(f"/budgets/{budget_id}")
    return view.redirect("/limits#budgets", notice=f"Budget {budget_id} deleted.")


async def credit_form(view: View) -> Response:
    budget = await _budget(view, _segment(view, "id"))
    name = "" if budget["name"] == "*" else budget["name"]
    values = {"id": "", "name": name, "amount": "", "priority": "1", "expires_at": ""}
    return _credit_form(view, budget, values)


async def grant_credit(view: View) -> Response:
    budget = await _budget(view, _segment(view, "id"))
    values = {key: view.field(key).strip() for key in ("id", "name", "amount", "priority", "expires_at")}
    amount = _micro(values["amount"])
    if amount is None:
        error = "The amount must be a number of currency units, e.g. 10 or 2.50."
        return _credit_form(view, budget, values, error=error, status=400)
    grant: dict[str, Any] = {"id": values["id"], "amount_micro": amount}
    if values["name"]:
        grant["name"] = values["name"]
    if values["priority"]:
        grant["priority"] = int(values["priority"]) if values["priority"].isdigit() else values["priority"]
    if values["expires_at"]:
        grant["expires_at"] = values["expires_at"]
    try:
        await view.api.post(f"/budgets/{budget['id']}/credits", grant)
    except ApiError as error:
        if not error.about_the_form:
            raise
        return _credit_form(view, budget, values, error=error.detail, status=error.status)
    return view.redirect("/limits#budgets", notice=f"Credit {values['id']} granted on {budget['id']}.")


async def _budget(view: View, budget_id: str) -> dict[str, Any]:
    budgets = (await view.api.get("/budgets"))["items"]
    found = next((b for b in budgets if b["id"] == budget_id), None)
    if found is None:
        raise ApiError(404, "Not Found", f"no budget '{budget_id}'")
    return dict(found)


def _budget_values(view: View) -> dict[str, Any]:
    fields = ("id", "scope", "name", "period", "amount", "currency", "mode", "failure_mode")
    values = {key: view.field(key).strip() for key in fields}
    values["name"] = values["name"] or "*"
    values["currency"] = (values["currency"] or "USD").upper()
    return values


def _budget_form(
    view: View, values: dict[str, Any], *, editing: bool, error: str | None = None, status: int = 200
) -> Response:
    title = f"Edit budget {values['id']}" if editing else "New budget"
    return view.render(
        "limits/budget_form.html",
        {"title": title, "budget": values, "editing": editing, "error": error},
        status=status,
    )


def _credit_form(
    view: View, budget: dict[str, Any], values: dict[str, Any], *, error: str | None = None, status: int = 200
) -> Response:
    return view.render(
        "limits/credit_form.html",
        {"title": f"Grant a credit on {budget['id']}", "budget": budget, "grant": values, "error": error},
        status=status,
    )


# -- prices --------------------------------------------------------------------------------------


async def prices_form(view: View) -> Response:
    prices = (await view.api.get("/prices"))["items"]
    return _prices_form(view, _as_yaml(prices))


async def replace_prices(view: View) -> Response:
    text = view.field("prices")
    try:
        items = _parse_prices(text)
    except ValueError as problem:
        return _prices_form(view, text, error=str(problem), status=400)
    try:
        saved = (await view.api.put("/prices", {"items": items}))["items"]
    except ApiError as error:
        if not error.about_the_form:
            raise
        return _prices_form(view, text, error=error.detail, status=error.status)
    return view.redirect("/limits#prices", notice=f"Prices replaced ({len(saved)} rules).")


def _parse_prices(text: str) -> list[Any]:
    """A YAML or JSON list of price rules (or a mapping holding one under `prices` or `items`).

    Raises:
        ValueError: not YAML, or not a list.
    """
    try:
        data = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"This is not valid YAML or JSON{where}.") from None
    if isinstance(data, dict):
        data = data.get("prices", data.get("items"))
    if not isinstance(data, list):
        raise ValueError("Give a list of price rules (or a mapping with a 'prices' list).")
    return data


def _as_yaml(prices: list[dict[str, Any]]) -> str:
    if not prices:
        return "# e.g.\n# - match: {server: calc}\n#   per_call_micro: 2000\n#   currency: USD\n"
    return yaml.safe_dump(orjson.loads(orjson.dumps(prices)), sort_keys=False, default_flow_style=False)


def _prices_form(view: View, text: str, *, error: str | None = None, status: int = 200) -> Response:
    return view.render(
        "limits/prices_form.html", {"title": "Edit prices", "text": text, "error": error}, status=status
    )


# -- helpers -------------------------------------------------------------------------------------


def _segment(view: View, name: str) -> str:
    """A path parameter that is safe to put in an admin API path (no '/')."""
    value = str(view.request.path_params[name])
    if not value or "/" in value:
        raise ApiError(404, "Not Found", "There is nothing here.")
    return value


def _micro(text: str) -> int | None:
    """Currency units as typed ("12.5", "1,000") in micro-units; None for anything else."""
    try:
        amount = Decimal(text.replace(",", "").replace("_", "").strip())
    except InvalidOperation:
        return None
    micro = amount * 1_000_000
    if not amount.is_finite() or amount < 0 or micro != micro.to_integral_value():
        return None
    return int(micro)


def _units(micro: int) -> str:
    """Micro-units as a plain decimal for an input field (no thousands separators)."""
    whole, fraction = divmod(int(micro), 1_000_000)
    return f"{whole}.{fraction:06d}".rstrip("0").rstrip(".") if fraction else str(whole)


def routes(console: Console) -> list[BaseRoute]:
    admin = "admin"
    return [
        Route("/limits", console.page(limits_page), methods=["GET"]),
        Route("/limits/rules/new", console.page(new_limit, admin), methods=["GET"]),
        Route("/limits/rules/new", console.page(create_limit, admin), methods=["POST"]),
        Route("/limits/rules/{id}", console.page(edit_limit, admin), methods=["GET"]),
        Route("/limits/rules/{id}", console.page(update_limit, admin), methods=["POST"]),
        Route("/limits/rules/{id}/delete", console.page(delete_limit, admin), methods=["POST"]),
        Route("/limits/kill-switches", console.page(engage_kill, admin), methods=["POST"]),
        Route("/limits/kill-switches/release", console.page(release_kill, admin), methods=["POST"]),
        Route("/limits/budgets/new", console.page(new_budget, admin), methods=["GET"]),
        Route("/limits/budgets/new", console.page(create_budget, admin), methods=["POST"]),
        Route("/limits/budgets/{id}", console.page(edit_budget, admin), methods=["GET"]),
        Route("/limits/budgets/{id}", console.page(update_budget, admin), methods=["POST"]),
        Route("/limits/budgets/{id}/delete", console.page(delete_budget, admin), methods=["POST"]),
        Route("/limits/budgets/{id}/credits", console.page(credit_form, admin), methods=["GET"]),
        Route("/limits/budgets/{id}/credits", console.page(grant_credit, admin), methods=["POST"]),
        Route("/limits/prices", console.page(prices_form, admin), methods=["GET"]),
        Route("/limits/prices", console.page(replace_prices, admin), methods=["POST"]),
    ]
