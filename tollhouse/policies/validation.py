"""Validate `tools/call` arguments against a tool's pinned inputSchema, with bounded cost.

The schema comes from an upstream, so compiling and applying it is an attack surface of its own
(SEP-2106 "composition-keyword resource bounds"; SECURITY_GOALS S13): a schema may point `$ref`
at the network, nest without end, fan out through `allOf`/`anyOf`/`oneOf`, or `$ref` itself in a
loop. Every schema is therefore checked once, when its validator is compiled, and refused
(`ToolNotCallable`) if it is too big, too deep, too branchy, refers outside itself, or loops without
consuming the instance; such a tool cannot be called, which is clearer and cheaper than a slow
validation on every call. Validators are compiled once per pinned definition and cached by the
pin hash (`ValidatorCache`), because compiling costs far more than validating.

Dialects: the declared `$schema` is honoured (draft-04, -06, -07, 2019-09, 2020-12; MCP tools
often declare draft-07), a schema without `$schema` is 2020-12 (the MCP default), and any other
`$schema` makes the tool not callable: validating with the wrong semantics would silently accept
or refuse the wrong arguments.

Messages (`InvalidToolArguments.message`) name the failing location and the rule but never echo a
string the caller sent — it might be a secret, and the message is logged — only its length.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Final

import orjson
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import (
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
    FormatChecker,
)
from jsonschema.exceptions import SchemaError, ValidationError, relevance
from jsonschema.protocols import Validator
from referencing._core import Resolver

__all__ = [
    "ArgumentValidator",
    "InvalidToolArguments",
    "ToolNotCallable",
    "ValidationLimits",
    "ValidatorCache",
]


class InvalidToolArguments(ValueError):
    """The arguments do not satisfy the tool's schema; the gateway answers JSON-RPC -32602.

    `message` is safe to return to the caller and to log: it never holds a string argument.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ToolNotCallable(ValueError):
    """The tool's inputSchema is refused (bounds, remote `$ref`, unknown dialect, invalid schema).

    Not the caller's fault: the definition must change upstream (and be re-approved).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Bounds on schemas (checked at compile time) and on arguments (checked per call)."""

    max_schema_bytes: int = 256 * 1024
    # JSON nesting of the schema document (objects and arrays), about half as many property levels.
    max_schema_depth: int = 32
    # allOf/anyOf/oneOf entries plus not/if/then/else, counted over the whole document.
    max_composition: int = 256
    # Schema nodes visited with every `$ref` expanded once per use: what one argument value can cost.
    max_expanded_nodes: int = 20_000
    max_instance_depth: int = 64
    max_errors_reported: int = 3


_DIALECTS: Final[dict[str, type[Validator]]] = {
    "json-schema.org/draft/2020-12/schema": Draft202012Validator,
    "json-schema.org/draft/2019-09/schema": Draft201909Validator,
    "json-schema.org/draft-07/schema": Draft7Validator,
    "json-schema.org/draft-06/schema": Draft6Validator,
    "json-schema.org/draft-04/schema": Draft4Validator,
}

# Keywords whose subschemas apply to the same instance (a `$ref` cycle through only these never
# ends) and those that move to a child of the instance (recursion bounded by the instance depth).
_IN_PLACE_ONE: Final = ("not", "if", "then", "else")
_IN_PLACE_MANY: Final = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAP: Final = ("dependentSchemas", "dependencies")
_CHILD_ONE: Final = (
    "additionalProperties",
    "additionalItems",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "items",
)
_CHILD_MANY: Final = ("prefixItems", "items")
_CHILD_MAP: Final = ("properties", "patternProperties")
_REFS: Final = ("$ref", "$dynamicRef", "$recursiveRef")
_COMPOSITION_LISTS: Final = frozenset({"allOf", "anyOf", "oneOf"})
_COMPOSITION_SINGLE: Final = frozenset({"not", "if", "then", "else"})

_MAX_SHOWN: Final = 60
_MAX_MESSAGE: Final = 1000


def _refuse_retrieval(uri: str) -> referencing.Resource[Any]:
    """The registry's retrieve hook: `$ref` resolves only inside the schema, never remotely."""
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs alias


def _is_datetime(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    # RFC 3339 needs a 'T' (or 't') and an offset; fromisoformat accepts both and more.
    if len(instance) < 20 or instance[10] not in "Tt" or not (instance[-1] in "Zz" or instance[-6] in "+-"):
        return False
    try:
        datetime.fromisoformat(instance[:-1] + "+00:00" if instance[-1] in "Zz" else instance)
    except ValueError:
        return False
    return True


def _format_checker() -> FormatChecker:
    # Only checks that depend on the standard library alone: behaviour must not change with the
    # optional packages installed, and nothing may touch the network.
    checker = FormatChecker(formats=["email", "idn-email", "ipv4", "ipv6", "date", "uuid"])
    checker.checks("date-time")(_is_datetime)
    return checker


def _json_depth(value: object, limit: int) -> int:
    """Nesting depth of containers in `value`, stopping as soon as it exceeds `limit`."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterator[object] = iter(item.values())
        elif isinstance(item, list):
            children = iter(item)
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _composition_count(schema: object) -> int:
    count = 0
    stack: list[object] = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key in _COMPOSITION_LISTS and isinstance(child, list):
                    count += len(child)
                elif key in _COMPOSITION_SINGLE:
                    count += 1
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _dialect(schema: Mapping[str, Any]) -> type[Validator]:
    declared = schema.get("$schema")
    if declared is None:
        return Draft202012Validator
    if not isinstance(declared, str):
        raise ToolNotCallable("inputSchema: $schema must be a string")
    key = declared.split("://", 1)[-1].rstrip("#")
    try:
        return _DIALECTS[key]
    except KeyError:
        raise ToolNotCallable(f"inputSchema: unsupported $schema {_shown(declared)}") from None


class _RefWalk:
    """Resolve every `$ref` statically and bound what expanding them costs.

    Each schema node is visited with references expanded where they are used (not memoised, so a
    chain of definitions that doubles at every step is caught by the node budget). A reference back
    to a schema already on the current path stops the walk there: if an instance-consuming keyword
    (`properties`, `items`, …) lies in between, the recursion is bounded by the instance's depth;
    if not, validation would never end and the schema is refused.
    """

    def __init__(self, specification: referencing.Specification[Any], budget: int) -> None:
        self.specification = specification
        self.budget = budget

    def visit(
        self,
        schema: object,
        resolver: Resolver[Any],
        on_path: frozenset[int],
        in_place: frozenset[int],
    ) -> None:
        if not isinstance(schema, dict):
            return
        self.budget -= 1
        if self.budget < 0:
            raise ToolNotCallable("inputSchema: too complex once its $refs are expanded")
        resolver = resolver.in_subresource(self.specification.create_resource(schema))
        for keyword in _REFS:
            ref = schema.get(keyword)
            if not isinstance(ref, str):
                continue
            try:
                resolved = resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                raise ToolNotCallable(
                    f"inputSchema: $ref {_shown(ref)} does not resolve inside the schema "
                    "(remote references are not fetched)"
                ) from None
            target = id(resolved.contents)
            if target in in_place:
                raise ToolNotCallable(
                    f"inputSchema: $ref {_shown(ref)} loops without consuming the arguments"
                )
            if target in on_path:
                continue
            self.visit(resolved.contents, resolved.resolver, on_path | {target}, in_place | {target})
        for keyword in _IN_PLACE_ONE:
            if keyword in schema:
                self.visit(schema[keyword], resolver, on_path, in_place)
        for keyword in _IN_PLACE_MANY:
            for sub in _as_list(schema.get(keyword)):
                self.visit(sub, resolver, on_path, in_place)
        for keyword in _IN_PLACE_MAP:
            for sub in _as_dict(schema.get(keyword)).values():
                self.visit(sub, resolver, on_path, in_place)
        empty: frozenset[int] = frozenset()
        for keyword in _CHILD_ONE:
            sub = schema.get(keyword)
            if isinstance(sub, dict):
                self.visit(sub, resolver, on_path, empty)
        for keyword in _CHILD_MANY:
            for sub in _as_list(schema.get(keyword)):
                self.visit(sub, resolver, on_path, empty)
        for keyword in _CHILD_MAP:
            for sub in _as_dict(schema.get(keyword)).values():
                self.visit(sub, resolver, on_path, empty)


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _shown(text: str) -> str:
    """A schema-supplied string, quoted and cut short (schemas are upstream-controlled)."""
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return repr(text)


def _describe(instance: object) -> str:
    """The caller's value as it may appear in a message: strings only by length."""
    if isinstance(instance, str):
        return f"a string ({_count(len(instance), 'character')})"
    if isinstance(instance, bool) or instance is None:
        return orjson.dumps(instance).decode()
    if isinstance(instance, int | float):
        text = (
            repr(instance) if not isinstance(instance, int) or abs(instance) < 10**30 else "a large integer"
        )
        return text if len(text) <= _MAX_SHOWN else "a number"
    if isinstance(instance, dict):
        return "an object"
    if isinstance(instance, list):
        return f"an array ({_count(len(instance), 'item')})"
    return "a value"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _path(parts: Iterator[str | int] | Any) -> str:
    out = ["arguments"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif part.isidentifier():
            out.append(f".{part if len(part) <= _MAX_SHOWN else part[: _MAX_SHOWN - 1] + '…'}")
        else:
            out.append(f"[{_shown(part)}]")
    return "".join(out)


def _render(error: ValidationError) -> str:
    instance = error.instance
    message = error.message
    described = _describe(instance)
    if isinstance(instance, str | int | float | bool | dict | list) or instance is None:
        try:
            shown = repr(instance)
        except ValueError:  # an integer beyond Python's str() digit limit
            shown = ""
        if shown and shown in message:
            message = message.replace(shown, described)
    if len(message) > 200:
        message = message[:199] + "…"
    return f"{_path(iter(error.absolute_path))}: {message}"


class ArgumentValidator:
    """The compiled validator of one tool definition; build once, call `validate` per call.

    Raises `ToolNotCallable` from the constructor when the schema is refused.
    """

    __slots__ = ("_limits", "_validator")

    def __init__(
        self, input_schema: Mapping[str, Any] | bool | None, limits: ValidationLimits | None = None
    ) -> None:
        self._limits = limits or ValidationLimits()
        self._validator: Validator | None = None
        if input_schema is None or input_schema is True or input_schema == {}:
            return
        if not isinstance(input_schema, Mapping):
            raise ToolNotCallable("inputSchema must be an object")
        self._validator = self._compile(dict(input_schema))

    def _compile(self, schema: dict[str, Any]) -> Validator:
        limits = self._limits
        if _json_depth(schema, limits.max_schema_depth) > limits.max_schema_depth:
            raise ToolNotCallable(f"inputSchema is nested deeper than {limits.max_schema_depth} levels")
        try:
            size = len(orjson.dumps(schema))
        except orjson.JSONEncodeError:
            raise ToolNotCallable("inputSchema is not JSON") from None
        if size > limits.max_schema_bytes:
            raise ToolNotCallable(f"inputSchema is larger than {limits.max_schema_bytes} bytes ({size})")
        branches = _composition_count(schema)
        if branches > limits.max_composition:
            raise ToolNotCallable(
                f"inputSchema has {branches} composition branches (allOf/anyOf/oneOf/not/if/then/else), "
                f"more than {limits.max_composition}"
            )
        cls = _dialect(schema)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise ToolNotCallable(
                f"inputSchema is not a valid schema at {_shown(where)}: {exc.validator} rule"
            ) from None
        specification = referencing.jsonschema.specification_with(
            str(cls.META_SCHEMA.get("$id") or cls.META_SCHEMA.get("id"))
        )
        registry: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
        root = specification.create_resource(schema)
        resolver = registry.resolver_with_root(root)
        walk = _RefWalk(specification, limits.max_expanded_nodes)
        try:
            walk.visit(schema, resolver, frozenset({id(schema)}), frozenset({id(schema)}))
        except RecursionError:
            raise ToolNotCallable("inputSchema is too complex once its $refs are expanded") from None
        return cls(schema, registry=registry, format_checker=_format_checker())

    def validate(self, arguments: object) -> dict[str, Any]:
        """Return the arguments (an absent `arguments` is `{}`) or raise `InvalidToolArguments`."""
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidToolArguments(f"arguments must be an object, got {_describe(arguments)}")
        limits = self._limits
        if _json_depth(arguments, limits.max_instance_depth) > limits.max_instance_depth:
            raise InvalidToolArguments(f"arguments are nested deeper than {limits.max_instance_depth} levels")
        if self._validator is None:
            return arguments
        try:
            errors = list(islice(self._validator.iter_errors(arguments), limits.max_errors_reported + 1))
        except (referencing.exceptions.Unresolvable, RecursionError) as exc:
            raise ToolNotCallable(f"inputSchema cannot be applied: {type(exc).__name__}") from None
        except Exception as exc:
            # jsonschema wraps reference failures in a private class; nothing else is expected.
            if isinstance(exc.__cause__, referencing.exceptions.Unresolvable):
                raise ToolNotCallable("inputSchema cannot be applied: unresolvable $ref") from None
            raise
        if not errors:
            return arguments
        shown = sorted(errors[: limits.max_errors_reported], key=relevance)
        parts = [_render(error) for error in shown]
        if len(errors) > limits.max_errors_reported:
            parts.append("…")
        message = "Invalid arguments: " + "; ".join(parts)
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 1] + "…"
        raise InvalidToolArguments(message)


class ValidatorCache:
    """A bounded LRU of compiled validators, keyed by the tool's pin hash.

    The pin hash covers the whole definition (inputSchema included), so a key never goes stale;
    refused schemas are cached too, so a bad tool costs one compile, not one per call.
    """

    def __init__(self, maxsize: int = 1024, limits: ValidationLimits | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._limits = limits or ValidationLimits()
        self._entries: OrderedDict[str, ArgumentValidator | ToolNotCallable] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, pin_hash: str, input_schema: Mapping[str, Any] | bool | None) -> ArgumentValidator:
        """The validator for this pinned definition, compiled on first use; may raise `ToolNotCallable`."""
        with self._lock:
            entry = self._entries.get(pin_hash)
            if entry is not None:
                self._entries.move_to_end(pin_hash)
        if entry is None:
            try:
                entry = ArgumentValidator(input_schema, self._limits)
            except ToolNotCallable as exc:
                entry = exc
            with self._lock:
                self._entries[pin_hash] = entry
                self._entries.move_to_end(pin_hash)
                while len(self._entries) > self._maxsize:
                    self._entries.popitem(last=False)
        if isinstance(entry, ToolNotCallable):
            raise ToolNotCallable(entry.message)
        return entry

    def validate(
        self, pin_hash: str, input_schema: Mapping[str, Any] | bool | None, arguments: object
    ) -> dict[str, Any]:
        """`get(...).validate(arguments)` in one call."""
        return self.get(pin_hash, input_schema).validate(arguments)
