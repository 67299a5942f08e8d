"""The Cedar schema every policy is validated against at load.

Entity types (no namespace), as DESIGN.md's policy vocabulary names them, plus `Prompt` and
`Resource` so that `get_prompt` and `read_resource` have resources of their own:

    principals  User::"<subject>", Client::"<client id>"   (members of Team::"…" and Role::"…")
    resources   Tool::"<server>__<tool>"     in Server::"<server>" and in each Toolset::"<name>"
                Prompt::"<server>__<prompt>" in Server::"<server>"
                Resource::"<exposed uri>"    in Server::"<server>"
                Agent::"<agent>", Skill::"<agent>/<skill>" in Agent::"<agent>"

`context.arguments` is free-form in tollhouse (tool schemas differ), but Cedar 4's validator has no
open records (`additionalAttributes` is refused as an unsupported feature). So the schema is a
template: each policy is validated against a schema whose `Arguments` record declares exactly the
arguments that policy reads, typed by how it uses them (see `analysis.infer_arguments`). Everything
else — entity types, actions, entity attributes, the other context fields — is checked as usual.
The attributes are declared *required* so that `context.arguments.path` needs no `has` guard: at
evaluation an absent argument makes the policy error, and Cedar skips an erroring policy.

`read_only` and `destructive` are optional on `Tool` because they are only present for servers an
admin marked trusted; a policy must guard them (`resource has read_only && resource.read_only`).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "CONTEXT_FIELDS",
    "ENTITY_TYPES",
    "ArgumentShape",
    "arguments_type",
    "cedar_string",
    "schema_text",
]

CONTEXT_FIELDS = ("arguments", "scopes", "client_id", "source_ip", "protocol_version", "time", "method")

ENTITY_TYPES = (
    "User",
    "Client",
    "Team",
    "Role",
    "Server",
    "Toolset",
    "Tool",
    "Prompt",
    "Resource",
    "Agent",
    "Skill",
)

# A record type for `context.arguments`: attribute -> a Cedar type ("String", "Long", "Bool",
# "Set<String>", …) or a nested record.
ArgumentShape = Mapping[str, "ArgumentShape | str"]

_SCHEMA = """\
entity Team, Role;
entity User in [Team, Role] = {{ subject: String }};
entity Client in [Team, Role] = {{ client_id: String }};
entity Server = {{ name: String, trusted: Bool }};
entity Toolset = {{ name: String }};
entity Tool in [Server, Toolset] = {{
  name: String, server: String, tool: String, read_only?: Bool, destructive?: Bool
}};
entity Prompt in [Server] = {{ name: String, server: String, prompt: String }};
entity Resource in [Server] = {{ name: String, server: String, uri: String }};
entity Agent = {{ name: String }};
entity Skill in [Agent] = {{ name: String, agent: String, skill: String }};
type Arguments = {arguments};
type RequestContext = {{
  arguments: Arguments,
  scopes: Set<String>,
  client_id: String,
  source_ip: ipaddr,
  protocol_version: String,
  time: Long,
  method: String
}};
action list_tool, call_tool appliesTo {{
  principal: [User, Client], resource: [Tool], context: RequestContext
}};
action read_resource appliesTo {{
  principal: [User, Client], resource: [Resource], context: RequestContext
}};
action get_prompt appliesTo {{
  principal: [User, Client], resource: [Prompt], context: RequestContext
}};
action call_agent appliesTo {{
  principal: [User, Client], resource: [Agent, Skill], context: RequestContext
}};
"""


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def cedar_string(value: str) -> str:
    """`value` as a quoted Cedar string literal (policy and schema text share Cedar's escapes)."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def arguments_type(shape: ArgumentShape) -> str:
    """The Cedar schema text of a record type for `context.arguments` (attribute names quoted)."""
    fields = []
    for name in sorted(shape):
        value = shape[name]
        rendered = value if isinstance(value, str) else arguments_type(value)
        fields.append(f"{cedar_string(name)}: {rendered}")
    return "{ " + ", ".join(fields) + " }" if fields else "{}"


def schema_text(arguments: ArgumentShape | None = None) -> str:
    """The tollhouse schema in Cedar syntax, with `Arguments` declaring `arguments` (none by default)."""
    return _SCHEMA.format(arguments=arguments_type(arguments or {}))
