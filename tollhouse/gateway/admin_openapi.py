"""The admin API's OpenAPI 3.1 document (`GET /admin/api/v1/openapi.json`)."""

from __future__ import annotations

from typing import Any

from tollhouse import __version__

__all__ = ["openapi_document"]


def openapi_document() -> dict[str, Any]:
    """Every admin route, its summary and its success status."""

    def op(summary: str, status: str = "200") -> dict[str, Any]:
        return {"summary": summary, "security": [{"admin": []}], "responses": {status: {"description": "OK"}}}

    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    ident = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "tollhouse admin API", "version": __version__},
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/servers": {
                "get": op("List upstream MCP servers"),
                "post": op("Register a server (optional: max_in_flight, idempotent tool globs)", "201"),
            },
            "/servers/{name}": {
                "parameters": name,
                "get": op("Show a server"),
                "put": op("Update a server: keys left out, and stored secrets not sent again, are kept"),
                "delete": op("Remove a server", "204"),
            },
            "/servers/{name}/refresh": {"parameters": name, "post": op("Sync a server's catalog now")},
            "/agents": {
                "get": op("List A2A agents: status, card, skills, card pin and endpoint"),
                "post": op("Register an A2A agent (card_url or an inline card)", "201"),
            },
            "/agents/{name}": {
                "parameters": name,
                "get": op("Show an agent and its current card"),
                "delete": op("Remove an agent", "204"),
            },
            "/agents/{name}/refresh": {
                "parameters": name,
                "post": op("Fetch an agent's card again; returns once the new card is live"),
            },
            "/agents/{name}/card/diff": {
                "parameters": name,
                "get": op("The approved and current card of an agent, and their diff"),
            },
            "/agents/{name}/card/approve": {
                "parameters": name,
                "post": op("Approve an agent's current card (approver role; body: optional sha256)"),
            },
            "/agents/{name}/card/reject": {
                "parameters": name,
                "post": op("Reject an agent's current card: the agent stays held (approver role)"),
            },
            "/tools": {"get": op("List exposed tools (?state=pending|changed|rejected|approved|all: pins)")},
            "/tools/{name}": {"parameters": name, "get": op("Show a tool and its pin")},
            "/tools/{name}/diff": {
                "parameters": name,
                "get": op("The approved and current definition of a tool, their diff and scan findings"),
            },
            "/tools/{name}/approve": {
                "parameters": name,
                "post": op("Approve a tool's current definition (approver role; body: optional sha256)"),
            },
            "/tools/{name}/reject": {
                "parameters": name,
                "post": op("Reject a tool's current definition (approver role)"),
            },
            "/approvals": {"get": op("Pins awaiting a decision (?state=…, ?server=…)")},
            "/servers/{name}/instructions/diff": {
                "parameters": name,
                "get": op("The approved and current instructions of a server, and their diff"),
            },
            "/servers/{name}/instructions/approve": {
                "parameters": name,
                "post": op("Approve a server's current instructions (approver role)"),
            },
            "/servers/{name}/instructions/reject": {
                "parameters": name,
                "post": op("Reject a server's current instructions: the server stays held"),
            },
            "/toolsets": {"get": op("List toolsets with their live members")},
            "/toolsets/{name}": {
                "parameters": name,
                "get": op("Show a toolset"),
                "put": op("Create or replace a toolset (201 when created)"),
                "delete": op("Remove a toolset", "204"),
            },
            "/clients": {"get": op("List clients"), "post": op("Create a client and its credentials", "201")},
            "/clients/{ref}/revoke": {
                "parameters": [{"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}],
                "post": op("Revoke a client"),
            },
            "/users": {"get": op("List users"), "post": op("Create a user", "201")},
            "/users/{name}": {
                "parameters": name,
                "get": op("Show a user"),
                "patch": op("Change a user's roles, teams, status or password"),
                "delete": op("Remove a user and revoke their tokens", "204"),
            },
            "/teams": {"get": op("List teams"), "post": op("Create a team", "201")},
            "/teams/{name}": {"parameters": name, "delete": op("Remove a team", "204")},
            "/auth/failures": {"get": op("Recent failed authentications (admin, auditor)")},
            "/config/apply": {"post": op("Apply a declarative configuration")},
            "/config/export": {"get": op("Export the configuration")},
            "/keys": {"get": op("List credential-encryption keys and the rows each seals")},
            "/keys/rotate": {
                "post": op("Re-encrypt every stored credential under a new (or the active) key")
            },
            "/keys/{kid}": {
                "parameters": [{"name": "kid", "in": "path", "required": True, "schema": {"type": "string"}}],
                "delete": op("Remove a key no stored credential uses"),
            },
            "/usage/report": {
                "get": op("Usage totals (?by=team,tool,…&period=YYYY-MM[-DD]&bucket=hour|day)")
            },
            "/usage/chargeback.csv": {"get": op("Chargeback per team and currency for a month (CSV)")},
            "/usage/outbox": {"get": op("Usage events not yet delivered, per sink, and delivery state")},
            "/prices": {"get": op("The price book"), "put": op("Replace the price book")},
            "/budgets": {"get": op("Budgets and their credit grants"), "put": op("Replace every budget")},
            "/budgets/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "put": op("Create or replace a budget (201 when created)"),
                "delete": op("Remove a budget", "204"),
            },
            "/budgets/{id}/credits": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "post": op("Grant prepaid credit under a budget", "201"),
            },
            "/budgets/{id}/status": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": op("This period's spend, reservations, overage and credits (?name=…)"),
            },
            "/audit/records": {
                "get": op(
                    "Audit records, newest first (?since, until, subject, team, client_id, server, tool, "
                    "outcome, trace_id, kind, action, limit<=500, cursor) (admin, auditor)"
                )
            },
            "/audit/records.jsonl": {
                "get": op(
                    "Every record matching the /audit/records filters as JSON lines, newest first, "
                    "as stored (recorded) (admin, auditor)"
                )
            },
            "/stats": {
                "get": op(
                    "The overview's figures over the last ?minutes=1..1440 (default 60): calls per minute, "
                    "outcomes, error and denial rates, top tools, upstream health, pending approvals"
                )
            },
            "/audit/records/{node}/{seq}": {
                "parameters": [
                    {"name": "node", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "seq", "in": "path", "required": True, "schema": {"type": "integer"}},
                ],
                "get": op("One audit record and the checkpoint that anchors it (admin, auditor)"),
            },
            "/audit/verify": {"get": op("Verify every node's chain and checkpoints in the database")},
            "/audit/export": {
                "get": op("The trail as JSON lines: keys, records, checkpoints (?since, until; recorded)")
            },
            "/audit/keys": {"get": op("The checkpoint verification keys")},
            "/audit/status": {"get": op("The audit writer's state, each node's head and last checkpoint")},
            "/audit/checkpoint": {"post": op("Sign this node's head now (admin)")},
            "/audit/retention": {"post": op("Purge records past retention now; the run's summary (admin)")},
            "/limits": {"get": op("List rate and concurrency limits, the counter storage and its health")},
            "/limits/recent": {
                "get": op("Recent refusals by limits, the loop breaker and kill switches (audit)")
            },
            "/limits/status": {
                "get": op("Counters a caller would hit (?subject, client, team, server, tool)")
            },
            "/limits/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": op("Show a limit"),
                "put": op("Create or replace a limit (201 when created)"),
                "delete": op("Remove a limit", "204"),
            },
            "/kill-switches": {
                "get": op("List engaged kill switches"),
                "post": op("Stop a subject, client or server on every replica", "201"),
            },
            "/kill-switches/{kind}/{value}": {
                "parameters": [
                    {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "value", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "delete": op("Release a kill switch", "204"),
            },
            "/sessions": {"get": op("Live session-era MCP sessions on the replica that answers")},
            "/sessions/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "delete": op("End a session on this replica: its client's next request gets 404", "204"),
            },
            "/policies": {"get": op("List policies and the policy version")},
            "/policies/{id}": {
                "parameters": ident,
                "get": op("Show a policy"),
                "put": op("Create or replace a policy (Cedar or sugar); the whole set must compile"),
                "delete": op("Remove a policy", "204"),
            },
            "/policies/validate": {"post": op("Check proposed policies against the schema")},
            "/policies/test": {"post": op("Run policy test cases against the live or proposed set")},
            "/policies/explain": {"post": op("Which policies decide a hypothetical request, and why")},
            "/decisions": {"get": op("Recent authorization decisions on this replica")},
            "/catalog/search": {
                "get": op("Search tools and agents (?q=, limit, kind=tool|agent, client= to see as a client)")
            },
            "/access-requests": {
                "get": op("List access requests (?status=pending,granted,declined,withdrawn)")
            },
            "/access-requests/{id}": {"parameters": ident, "get": op("Show an access request")},
            "/access-requests/{id}/grant": {
                "parameters": ident,
                "post": op("Grant a request: a policy for the requester or its team (approver role)"),
            },
            "/access-requests/{id}/decline": {
                "parameters": ident,
                "post": op("Decline a request (approver role)"),
            },
        },
    }
