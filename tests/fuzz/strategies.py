"""Hypothesis strategies for MCP over Streamable HTTP, both protocol eras, valid and mutated.

A `Case` is one HTTP request (headers and body bytes) plus what the strategy knows about it:
whether it is a *valid routed call*, the only kind of message that may reach the upstream.
The strategy builds a valid message for a method (shapes from the MCP schema, the `mcp`
package's types), then applies mutations, each of which is either *breaking* (the message
no longer conforms: a wrong type, a missing field, a bad header, a wrong id) or *benign*
(an unknown extra key, the Base64 form of `Mcp-Name`, `Accept: */*`). `may_reach` stays
true only while every mutation was benign and the message is a routed call of a known
target, so the oracle is the construction itself, not the gateway's code.

"Valid routed call", precisely: POST with `Content-Type: application/json`, an Accept that
takes JSON and SSE, the fuzz client's bearer key, no foreign Origin; one JSON object with
`"jsonrpc": "2.0"`, an `id` that is a string or an integer, and one of
- `tools/call` of an existing tool whose `arguments` satisfy its input schema (decided by
  `jsonschema` against `TOOLS`),
- `resources/read` of a URI under `tollhouse://fuzz/` (the gateway routes those by prefix),
- `prompts/get` of an existing prompt, `arguments` absent or an object of strings,
- `completion/complete` with a `ref/prompt` to an existing prompt or a `ref/resource` under
  `tollhouse://fuzz/`, `argument` `{name: str, value: str}`, `context` absent or
  `{arguments?: {str: str}}`;
in the 2026-07-28 era with `_meta` protocol version and client capabilities and matching
`MCP-Protocol-Version`/`Mcp-Method`/`Mcp-Name` headers; in the session era with the id of a
live session and `MCP-Protocol-Version` absent or that session's version. Fields the gateway
consumes itself and never forwards (`progressToken`, the `_meta` log level, unknown keys)
do not affect validity; `task` and `inputResponses` are not generated.

Header values may hold placeholders the test fills in: `{key}` (the fuzz client's API key)
and `{session:VERSION}` (the id of a live session of that version).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from hypothesis import strategies as st

__all__ = [
    "MODERN",
    "PROMPTS",
    "RESOURCES",
    "RESOURCE_PREFIX",
    "ROUTED",
    "SERVER",
    "SESSION_VERSIONS",
    "TOOLS",
    "Case",
    "mcp_cases",
    "raw_cases",
]

MODERN = "2026-07-28"
SESSION_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
SERVER = "fuzz"
# The counting upstream's tools (original name -> input schema); exposed as fuzz__<name>.
TOOLS: dict[str, dict[str, Any]] = {
    "echo": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "add": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
}
PROMPTS = ("greet",)
RESOURCE_PREFIX = f"tollhouse://{SERVER}/"
RESOURCES = ("note://fuzz/a",)
# Methods whose upstream requests the test counts: the ones the gateway routes per message.
ROUTED = frozenset(
    {"tools/call", "resources/read", "prompts/get", "completion/complete"}
    | {"tasks/get", "tasks/result", "tasks/cancel", "tasks/update", "tasks/list"}
)
_OTHER_METHODS = (
    "initialize",
    "ping",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "logging/setLevel",
    "server/discover",
    "subscriptions/listen",
    "tasks/get",
    "tasks/list",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/message",
    "sampling/createMessage",
    "no/such-method",
    "",
)
_PV_KEY = "io.modelcontextprotocol/protocolVersion"
_CAPS_KEY = "io.modelcontextprotocol/clientCapabilities"
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in TOOLS.items()}


@dataclass(frozen=True)
class Case:
    """One HTTP request to the MCP endpoint and whether it may reach the upstream."""

    headers: tuple[tuple[str, str], ...]
    body: bytes
    may_reach: bool = False
    method: str = "POST"
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> str:
        """A corpus file for this case (`load` reads it back byte for byte)."""
        data: dict[str, Any] = {
            "description": "; ".join(self.notes) or "found by the fuzzer",
            "method": self.method,
            "headers": dict(self.headers),
            "may_reach_upstream": self.may_reach,
        }
        try:
            data["body_text"] = self.body.decode("utf-8")
        except UnicodeDecodeError:
            data["body_base64"] = base64.b64encode(self.body).decode("ascii")
        return json.dumps(data, indent=2, ensure_ascii=True)

    @classmethod
    def load(cls, data: dict[str, Any]) -> Case:
        """A case from a corpus file: `body` (a JSON value), `body_text` or `body_base64`.

        `repeat: {"marker": M, "text": T, "count": N}` replaces M in `body_text` with N times T,
        so a huge input stays a small file.
        """
        if "body_base64" in data:
            body = base64.b64decode(data["body_base64"])
        elif "body_text" in data:
            text = str(data["body_text"])
            repeat = data.get("repeat")
            if isinstance(repeat, dict):
                text = text.replace(repeat["marker"], repeat["text"] * int(repeat["count"]), 1)
            body = text.encode("utf-8")
        else:
            body = json.dumps(data.get("body")).encode("utf-8")
        return cls(
            headers=tuple((str(k), str(v)) for k, v in data["headers"].items()),
            body=body,
            may_reach=bool(data.get("may_reach_upstream", False)),
            method=str(data.get("method", "POST")),
            notes=(str(data.get("description", "")),),
        )


# -- JSON values ----------------------------------------------------------------------------

_text = st.text(max_size=40)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
# Known-nasty values: long strings, deep nesting (bounded below the 1 MiB body limit), odd text.
huge_strings = st.builds(
    lambda n, c: c * n, st.integers(1_000, 300_000), st.sampled_from("x\u00e9\u2603\U0001f600")
)


def _nest(depth: int, as_object: bool) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": value} if as_object else [value]
    return value


deep_values = st.builds(_nest, st.integers(1, 700), st.booleans())  # json.dumps recurses
nasty_values = (
    json_values | huge_strings | deep_values | st.sampled_from(["", "\u0000", "\u202e", "=?base64?x?="])
)


def _not(kind: type | tuple[type, ...]) -> st.SearchStrategy[Any]:
    """A JSON value that is not of `kind` (bool is never an int here, as in JSON Schema)."""

    def wrong(value: Any) -> bool:
        if isinstance(value, bool):
            return not (kind is bool or (isinstance(kind, tuple) and bool in kind))
        return not isinstance(value, kind)

    return json_values.filter(wrong)


# -- message parts --------------------------------------------------------------------------


@dataclass
class _Draft:
    """A message under construction; `valid` turns false at the first breaking envelope mutation."""

    era: str  # MODERN or a session version
    method: str
    params: dict[str, Any]
    valid: bool = True
    mutate: bool = True  # false: a pristine message (a third of them), so valid calls are common
    notes: list[str] = field(default_factory=list)

    def breaking(self, note: str) -> None:
        self.valid = False
        self.notes.append(note)


def _string_map(draw: st.DrawFn) -> Any:
    """Mostly a `{str: str}` map; sometimes with a value of another type, or not a map at all."""
    values: dict[str, Any] = draw(st.dictionaries(_text, _text, max_size=3))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        values[draw(_text)] = draw(_not(str))
    elif kind == 1:
        return draw(_not(dict))
    return values


def _tool_call(draw: st.DrawFn, params: dict[str, Any]) -> None:
    original = draw(st.sampled_from(sorted(TOOLS)))
    params["name"] = f"{SERVER}__{original}"
    if draw(st.integers(0, 9)) == 0:
        params["name"] = draw(st.sampled_from([f"{SERVER}__nope", original, f"{SERVER}__{original.upper()}"]))
    arguments: Any
    if original == "echo":
        arguments = {"text": draw(_text | huge_strings)}
    else:
        arguments = {"a": draw(st.integers(-(2**40), 2**40)), "b": draw(st.integers(-(2**40), 2**40))}
    choice = draw(st.integers(0, 6))
    if choice == 0:
        arguments = draw(json_values | deep_values)
    elif choice == 1:
        arguments[draw(_text)] = draw(nasty_values)
    elif choice == 2:
        arguments.pop(draw(st.sampled_from(sorted(arguments))))
    elif choice == 3:
        arguments[draw(st.sampled_from(sorted(arguments)))] = draw(nasty_values)
    if draw(st.integers(0, 9)) != 0:
        params["arguments"] = arguments
    if draw(st.integers(0, 19)) == 0:
        params["requestState"] = draw(json_values)


def _resource_uri(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(-2, 4))
    if kind <= 0:
        return RESOURCE_PREFIX + draw(st.sampled_from(RESOURCES))
    if kind == 1:
        return RESOURCE_PREFIX + draw(st.text(min_size=1, max_size=30))
    if kind == 2:
        return draw(st.sampled_from(["tollhouse://", RESOURCE_PREFIX, "tollhouse://nope/x", "note://fuzz/a"]))
    if kind == 3:
        return draw(_text)
    return draw(_not(str))


def _read(draw: st.DrawFn, params: dict[str, Any]) -> None:
    params["uri"] = _resource_uri(draw)


def _prompt(draw: st.DrawFn, params: dict[str, Any]) -> None:
    params["name"] = f"{SERVER}__{draw(st.sampled_from(PROMPTS))}"
    if draw(st.integers(0, 5)) == 0:
        params["name"] = draw(_text | _not(str))
    if draw(st.booleans()):
        params["arguments"] = _string_map(draw)


def _complete(draw: st.DrawFn, params: dict[str, Any]) -> None:
    kind = draw(st.integers(0, 4))
    if kind <= 1:
        params["ref"] = {"type": "ref/prompt", "name": f"{SERVER}__{draw(st.sampled_from(PROMPTS))}"}
    elif kind == 2:
        params["ref"] = {"type": "ref/resource", "uri": _resource_uri(draw)}
    elif kind == 3:
        params["ref"] = {"type": draw(_text), "name": draw(json_values), "uri": draw(json_values)}
    else:
        params["ref"] = draw(_not(dict))
    argument_kind = draw(st.integers(0, 4))
    if argument_kind <= 2:
        params["argument"] = {"name": draw(_text), "value": draw(_text)}
    elif argument_kind == 3:
        params["argument"] = draw(
            json_values | st.fixed_dictionaries({"name": json_values, "value": json_values})
        )
    if draw(st.booleans()):
        params["context"] = {"arguments": _string_map(draw)} if draw(st.booleans()) else draw(json_values)


def _other(draw: st.DrawFn, method: str, params: dict[str, Any]) -> None:
    """Params for the methods that never reach the upstream per message."""
    if method == "initialize":
        params.update(
            {
                "protocolVersion": draw(
                    st.sampled_from([*SESSION_VERSIONS, MODERN, "1999-01-01"]) | json_values
                ),
                "capabilities": draw(st.just({}) | json_values),
                "clientInfo": draw(st.just({"name": "fuzz", "version": "0"}) | json_values),
            }
        )
    elif method in ("resources/subscribe", "resources/unsubscribe"):
        params["uri"] = _resource_uri(draw)
    elif method == "logging/setLevel":
        params["level"] = draw(st.sampled_from(["debug", "error", "loud"]) | json_values)
    elif method == "subscriptions/listen":
        uris = st.sampled_from([RESOURCE_PREFIX + RESOURCES[0], "tollhouse://nope/x", "x"]) | json_values
        params["notifications"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "toolsListChanged": st.booleans() | json_values,
                    "promptsListChanged": st.booleans(),
                    "resourceSubscriptions": st.lists(uris, max_size=3) | json_values,
                },
            )
            | json_values
        )
    elif method.startswith("tasks/"):
        params["taskId"] = draw(json_values)
    elif method == "notifications/cancelled":
        params.update({"requestId": draw(json_values), "reason": draw(json_values)})
    elif method == "notifications/progress":
        params.update({"progressToken": draw(json_values), "progress": draw(json_values)})
    elif method.endswith("/list") and draw(st.booleans()):
        params["cursor"] = draw(json_values | st.sampled_from(["dDpmdXp6X19lY2hv", "bzox", "bzotMQ", "cDp4"]))


_BUILDERS = {
    "tools/call": _tool_call,
    "resources/read": _read,
    "prompts/get": _prompt,
    "completion/complete": _complete,
}


def _pick(draw: st.DrawFn, d: _Draft, choices: int) -> int:
    """Which mutation to apply (one of `choices`, most of them none); -1 for a pristine message."""
    return draw(st.integers(0, choices)) if d.mutate else -1


def _string_values(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _prompt_name(name: Any) -> bool:
    return isinstance(name, str) and name in {f"{SERVER}__{p}" for p in PROMPTS}


def _routable(uri: Any) -> bool:
    return isinstance(uri, str) and uri.startswith(RESOURCE_PREFIX) and len(uri) > len(RESOURCE_PREFIX)


def _routed_params_valid(method: str, params: dict[str, Any]) -> bool:
    """The params of a routed call name a real target and conform to the MCP schema (module doc)."""
    if method == "tools/call":
        name = params.get("name")
        original = name.removeprefix(f"{SERVER}__") if isinstance(name, str) else ""
        arguments = params.get("arguments")
        return (
            name == f"{SERVER}__{original}"
            and original in _VALIDATORS
            and isinstance(arguments, dict)
            and _VALIDATORS[original].is_valid(arguments)
            and "requestState" not in params
        )
    if method == "resources/read":
        return _routable(params.get("uri"))
    if method == "prompts/get":
        return _prompt_name(params.get("name")) and (
            "arguments" not in params or _string_values(params["arguments"])
        )
    if method == "completion/complete":
        ref, argument, context = params.get("ref"), params.get("argument"), params.get("context", {})
        ref_ok = isinstance(ref, dict) and (
            (ref.get("type") == "ref/prompt" and _prompt_name(ref.get("name")))
            or (ref.get("type") == "ref/resource" and _routable(ref.get("uri")))
        )
        argument_ok = (
            isinstance(argument, dict)
            and isinstance(argument.get("name"), str)
            and isinstance(argument.get("value"), str)
        )
        context_ok = isinstance(context, dict) and (
            "arguments" not in context or _string_values(context["arguments"])
        )
        return ref_ok and argument_ok and context_ok
    return False


def _meta_valid(era: str, params: dict[str, Any]) -> bool:
    meta = params.get("_meta")
    if era == MODERN:
        return (
            isinstance(meta, dict) and meta.get(_PV_KEY) == MODERN and isinstance(meta.get(_CAPS_KEY), dict)
        )
    # a session-era message carrying the 2026-07-28 version in _meta is taken for a modern one
    return not (isinstance(meta, dict) and _PV_KEY in meta)


def _mutate_params(draw: st.DrawFn, d: _Draft) -> None:
    params = d.params
    if params and _pick(draw, d, 5) == 0:
        key = draw(st.sampled_from(sorted(params)))
        if draw(st.booleans()):
            params.pop(key)
        else:
            params[key] = draw(nasty_values)
    if _pick(draw, d, 7) == 0:
        params[draw(st.sampled_from(["x-extra", "extension"]))] = draw(json_values)


def _meta(draw: st.DrawFn, d: _Draft) -> None:
    """`_meta`: required on 2026-07-28 (protocol version, client capabilities), optional before."""
    meta: dict[str, Any] = {_PV_KEY: MODERN, _CAPS_KEY: {}} if d.era == MODERN else {}
    mutation = _pick(draw, d, 12)
    if mutation == 0:
        meta.pop(_PV_KEY, None)
    elif mutation == 1:
        meta[_PV_KEY] = draw(st.sampled_from([*SESSION_VERSIONS, MODERN, "2026-07-29"]) | json_values)
    elif mutation == 2:
        meta.pop(_CAPS_KEY, None)
    elif mutation == 3:
        meta[_CAPS_KEY] = draw(_not(dict))
    elif mutation == 4:
        d.params["_meta"] = draw(_not(dict))
        return
    if draw(st.integers(0, 3)) == 0:
        meta["progressToken"] = draw(json_values)
    if draw(st.integers(0, 5)) == 0:
        meta["io.modelcontextprotocol/logLevel"] = draw(st.sampled_from(["debug", "emergency"]) | json_values)
    if draw(st.integers(0, 5)) == 0:
        key = draw(
            st.sampled_from(["io.modelcontextprotocol/clientInfo", "vendor/x", "io.modelcontextprotocol/x"])
        )
        meta[key] = draw(json_values)
    if meta:
        d.params["_meta"] = meta


def _header_safe(value: str) -> bool:
    return (
        all(0x20 <= ord(c) <= 0x7E for c in value) and value == value.strip() and not value.startswith("=?")
    )


def _headers(draw: st.DrawFn, d: _Draft) -> list[tuple[str, str]]:
    headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("authorization", "Bearer {key}"),
    ]
    if d.era == MODERN:
        headers.append(("mcp-protocol-version", MODERN))
        headers.append(("mcp-method", d.method))
        name_field = _NAMED.get(d.method)
        if name_field is not None and isinstance(d.params.get(name_field), str):
            value = d.params[name_field]
            if draw(st.booleans()) or not _header_safe(value):
                value = "=?base64?" + base64.b64encode(value.encode()).decode() + "?="
            headers.append(("mcp-name", value))
        elif name_field is not None:
            d.breaking("no Mcp-Name for a non-string name")
    else:
        headers.append(("mcp-session-id", "{session:" + d.era + "}"))
        if draw(st.booleans()):
            headers.append(("mcp-protocol-version", d.era))
    mutation = _pick(draw, d, 14)
    names = [name for name, _ in headers]
    if mutation == 0:
        dropped = draw(st.sampled_from(names))
        headers = [h for h in headers if h[0] != dropped]
        if not (dropped == "mcp-protocol-version" and d.era != MODERN):
            d.breaking(f"no {dropped} header")
    elif mutation == 1:
        target = draw(st.sampled_from(names))
        value = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30)).strip()
        headers = [(n, value if n == target else v) for n, v in headers]
        if not _equivalent(target, value, d):
            d.breaking(f"garbage {target} header")
    elif mutation == 2:
        benign = draw(
            st.sampled_from(
                [
                    ("accept", "*/*"),
                    ("content-type", "application/json; charset=utf-8"),
                    ("origin", "http://127.0.0.1:1"),
                    ("x-fuzz", "1"),
                ]
            )
        )
        headers = [h for h in headers if h[0] != benign[0]] + [benign]
    elif mutation == 3:
        headers.append(
            ("origin", draw(st.sampled_from(["https://evil.example", "null", "http://127.0.0.1.evil"])))
        )
        d.breaking("foreign Origin")
    elif mutation == 4 and d.era == MODERN:
        headers.append(("mcp-session-id", draw(st.sampled_from(["{session:2025-11-25}", "nope"]))))
    elif mutation == 5 and d.era != MODERN:
        headers = [h for h in headers if h[0] != "mcp-protocol-version"]
        headers.append(("mcp-protocol-version", draw(st.sampled_from(["1999-01-01", "latest", MODERN]))))
        d.breaking("unsupported MCP-Protocol-Version in a session")
    return headers


def _equivalent(name: str, value: str, d: _Draft) -> bool:
    """Whether a replaced header value means the same as the valid one (it may, by chance)."""
    if name == "content-type":
        return value.split(";")[0].strip().lower() == "application/json"
    if name == "accept":
        kinds = {part.split(";")[0].strip().lower() for part in value.split(",")}
        return "*/*" in kinds or {"application/json", "text/event-stream"} <= kinds
    if name == "mcp-protocol-version":
        return value == d.era
    if name == "mcp-method":
        return value == d.method
    if name == "mcp-name":
        return value == d.params.get(_NAMED.get(d.method, ""))
    return False


@st.composite
def mcp_cases(draw: st.DrawFn) -> Case:
    """A JSON-RPC message for the MCP endpoint, either era, valid or mutated, as a `Case`."""
    era = draw(st.sampled_from([MODERN, *SESSION_VERSIONS]))
    method = draw(st.sampled_from(sorted(_BUILDERS)) | st.sampled_from(_OTHER_METHODS))
    d = _Draft(era=era, method=method, params={}, mutate=draw(st.integers(0, 2)) > 0)
    if method in _BUILDERS:
        _BUILDERS[method](draw, d.params)
    else:
        _other(draw, method, d.params)
    _mutate_params(draw, d)
    _meta(draw, d)
    if not _meta_valid(era, d.params):
        d.breaking("_meta")
    if not _routed_params_valid(method, d.params):
        d.breaking("params are not a valid routed call")
    headers = _headers(draw, d)
    message: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": draw(st.one_of(st.integers(0, 2**31), _text)),
        "method": method,
    }
    with_params: bool = draw(st.booleans())
    if d.params or with_params:
        message["params"] = d.params
    _mutate_message(draw, message, d)
    body_shape = _pick(draw, d, 19)
    payload: Any = message
    if body_shape == 0:
        payload = [message, *draw(st.lists(json_values, max_size=2))]
        d.breaking("batch array")
    elif body_shape == 1:
        payload = draw(_not(dict))
        d.breaking("not an object")
    body = json.dumps(payload, ensure_ascii=draw(st.booleans())).encode()
    if body_shape == 2:
        cut = draw(st.integers(0, max(0, len(body) - 1)))
        body = body[:cut] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\x00", b"", b"}"]))
        d.breaking("truncated or invalid UTF-8")
    d.notes.insert(0, f"{era} {method}")
    return Case(headers=tuple(headers), body=body, may_reach=d.valid, notes=tuple(d.notes))


def _mutate_message(draw: st.DrawFn, message: dict[str, Any], d: _Draft) -> None:
    mutation = _pick(draw, d, 12)
    if mutation == 0:
        message["id"] = draw(st.one_of(_not((str, int)), st.booleans()))
        d.breaking("id of another JSON type")
    elif mutation == 1:
        message.pop("id")
        d.breaking("a notification")
    elif mutation == 2:
        message["jsonrpc"] = draw(st.sampled_from(["1.0", "2", 2.0]) | json_values)
        if message["jsonrpc"] != "2.0":
            d.breaking("wrong jsonrpc")
    elif mutation == 3:
        message.pop("jsonrpc")
        d.breaking("no jsonrpc")
    elif mutation == 4:
        message["method"] = draw(
            _not(str) | st.sampled_from([d.method.upper(), d.method + " ", "tools/call\u0000"])
        )
        d.breaking("wrong method")
    elif mutation == 5:
        message["params"] = draw(_not(dict))
        d.breaking("params not an object")
    elif mutation == 6:
        # JSON-RPC does not forbid extra members; the gateway goes by `method` (benign)
        message[draw(st.sampled_from(["result", "error"]))] = draw(json_values)


# -- raw bytes ------------------------------------------------------------------------------

_CONTENT_TYPES = [
    "application/json",
    "application/json; charset=latin-1",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "",
    "application/json, text/html",
]


@st.composite
def raw_cases(draw: st.DrawFn) -> Case:
    """Arbitrary bytes under assorted Content-Types and Accepts: the HTTP/JSON-RPC layer alone."""
    body = draw(
        st.binary(max_size=2_000)
        | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 50_000))
        | st.sampled_from(
            [b"[" * 5_000, b'{"a":' * 3_000, b"\xef\xbb\xbf{}", b"null", b'"\\ud800"', b"1e999"]
        )
    )
    headers = [
        ("content-type", draw(st.sampled_from(_CONTENT_TYPES))),
        ("accept", draw(st.sampled_from(["application/json, text/event-stream", "*/*", "text/html", ""]))),
        ("authorization", "Bearer {key}"),
    ]
    if draw(st.booleans()):
        headers.append(("mcp-protocol-version", draw(st.sampled_from([MODERN, *SESSION_VERSIONS, "x"]))))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "DELETE", "PUT", "PATCH"]))
    if draw(st.booleans()):
        # a live session only under POST: a GET would attach its stream, a DELETE end it
        session = "{session:2025-11-25}" if method == "POST" else "x" * 300
        headers.append(("mcp-session-id", session))
    return Case(headers=tuple(headers), body=body, may_reach=False, method=method, notes=("raw bytes",))
