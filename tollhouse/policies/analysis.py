"""Reading a parsed policy (cedarpy's PST) for what the engine needs to know before evaluating it.

- Which resource and principal its scope names, so it is indexed under them and evaluated only
  for requests whose resource (principal) is that entity or is in it (`resource == Tool::"x"`,
  `resource in Server::"s"`, `resource is Tool`, `principal in Team::"t"`, or unscoped).
- Which context fields it reads: the decision cache is only used when no applicable policy reads a
  per-call field (arguments, time, source address), and the context handed to Cedar carries only
  the fields some applicable policy reads.
- Which arguments it reads and how it uses them, so that it can be validated against a schema whose
  `Arguments` record declares exactly those (Cedar 4 has no open records; see schema.py).
- A list-phase variant in which `context.arguments` is replaced by an attribute of an entity that
  is never supplied. Cedar's partial evaluation treats an absent entity as unknown, so only the
  argument-reading parts stay residual; making the context record itself hold an unknown would
  leave *every* context read residual, which would list tools that `scopes` or `source_ip`
  rules definitely deny.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cedarpy import pst

from tollhouse.policies.schema import ArgumentShape

__all__ = [
    "ANY_KEY",
    "UNKNOWN_ARGUMENTS",
    "IndexKey",
    "PolicyShape",
    "argument_shapes",
    "list_phase_variant",
    "shape_of",
]

# An index key: ("*",) for an unscoped resource, ("is", type) for `resource is T`, or
# ("uid", type, id) for `resource == E` / `resource in E` / `resource is T in E`.
IndexKey = tuple[str, ...]
ANY_KEY: IndexKey = ("*",)

# The never-supplied entity whose `arguments` attribute stands for the call's arguments in the list phase.
UNKNOWN_ARGUMENTS = pst.EntityUid(type=pst.EntityType(basename="__Tollhouse_Call"), id="arguments")

_ARITHMETIC = frozenset({"less", "less_eq", "greater", "greater_eq", "add", "sub", "mul"})
_STRING_FUNCTIONS = frozenset({"ip", "decimal", "datetime", "duration"})
_CANDIDATES = ("String", "Long", "Bool")
_MAX_SEARCH = 4  # unhinted arguments tried with each candidate type; more are taken as String


@dataclass(frozen=True, slots=True)
class PolicyShape:
    """What the engine needs to know about one policy without evaluating it."""

    effect: str
    actions: frozenset[str] | None  # None: any action
    principal_key: IndexKey
    resource_key: IndexKey
    context_reads: frozenset[str]  # context fields read; "*" when the whole context is used
    literals: frozenset[tuple[str, str]]  # (type, id) of every entity the policy names
    argument_hints: Mapping[tuple[str, ...], str]  # argument path -> inferred Cedar type
    argument_records: frozenset[tuple[str, ...]]  # argument paths used as records
    argument_unknown: tuple[tuple[str, ...], ...]  # leaves used in a way that gives no type

    @property
    def reads_arguments(self) -> bool:
        return "arguments" in self.context_reads or "*" in self.context_reads


def _arg_path(expr: Any) -> tuple[str, ...] | None:
    """(a, b) for `context.arguments.a.b`, () for `context.arguments`, None for anything else."""
    names: list[str] = []
    while isinstance(expr, pst.GetAttr):
        if isinstance(expr.base, pst.Var) and expr.base.name == "context":
            return tuple(reversed(names)) if expr.attr == "arguments" else None
        names.append(expr.attr)
        expr = expr.base
    return None


def _is_context(expr: Any) -> bool:
    return isinstance(expr, pst.Var) and expr.name == "context"


def _literal_type(expr: Any) -> str | None:
    """The Cedar type of a literal (or a set of literals), if it is one."""
    if isinstance(expr, pst.StringLit):
        return "String"
    if isinstance(expr, pst.LongLit) or (
        isinstance(expr, pst.UnaryOp) and expr.op == "neg" and isinstance(expr.arg, pst.LongLit)
    ):
        return "Long"
    if isinstance(expr, pst.BoolLit):
        return "Bool"
    if isinstance(expr, pst.Set) and expr.elements:
        element = _literal_type(expr.elements[0])
        return f"Set<{element}>" if element else None
    return None


def _element_type(set_type: str | None) -> str | None:
    if set_type and set_type.startswith("Set<"):
        return set_type[4:-1]
    return None


class _Collector:
    """Walks a policy's conditions, noting context reads and argument uses with a type hint each."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.hints: dict[tuple[str, ...], set[str]] = {}
        self.records: set[tuple[str, ...]] = set()
        self.unknown: set[tuple[str, ...]] = set()

    def note(self, path: tuple[str, ...], hint: str | None) -> None:
        self.reads.add("arguments")
        for i in range(1, len(path)):
            self.records.add(path[:i])
        if not path:
            return
        if hint is None:
            self.unknown.add(path)
        else:
            self.hints.setdefault(path, set()).add(hint)

    def exists(self, path: tuple[str, ...]) -> None:
        """`has` only asserts the attribute may exist: any type will do."""
        self.reads.add("arguments")
        for i in range(1, len(path)):
            self.records.add(path[:i])
        self.hints.setdefault(path, set())

    def visit(self, expr: Any, hint: str | None) -> None:
        if isinstance(expr, pst.GetAttr):
            path = _arg_path(expr)
            if path is not None:
                self.note(path, hint)
            elif _is_context(expr.base):
                self.reads.add(expr.attr)
            else:
                self.visit(expr.base, None)
        elif isinstance(expr, pst.HasAttr):
            path = _arg_path(expr.base)
            if path is not None:
                self.exists(path + expr.attrs)
            elif _is_context(expr.base):
                self.reads.add(expr.attrs[0])
                if expr.attrs[0] == "arguments" and len(expr.attrs) > 1:
                    self.exists(expr.attrs[1:])
            else:
                self.visit(expr.base, None)
        elif isinstance(expr, pst.Var):
            if expr.name == "context":
                self.reads.add("*")
        elif isinstance(expr, pst.Like):
            self.visit(expr.base, "String")
        elif isinstance(expr, pst.UnaryOp):
            self.visit(expr.arg, _unary_hint(expr.op))
        elif isinstance(expr, pst.BinaryOp):
            left, right = _binary_hints(expr)
            self.visit(expr.left, left)
            self.visit(expr.right, right)
        elif isinstance(expr, pst.IfThenElse):
            self.visit(expr.cond, "Bool")
            self.visit(expr.then_expr, hint)
            self.visit(expr.else_expr, hint)
        elif isinstance(expr, pst.Set):
            for element in expr.elements:
                self.visit(element, _element_type(hint))
        elif isinstance(expr, pst.Record):
            for value in expr.fields.values():
                self.visit(value, None)
        elif isinstance(expr, pst.Is):
            self.visit(expr.base, None)
            if expr.in_expr is not None:
                self.visit(expr.in_expr, None)


def _unary_hint(op: str) -> str | None:
    if op == "not":
        return "Bool"
    if op == "neg":
        return "Long"
    if op == "is_empty":
        return "Set<String>"
    if op in _STRING_FUNCTIONS:
        return "String"
    return None


def _binary_hints(expr: pst.BinaryOp) -> tuple[str | None, str | None]:
    """The type each operand of a binary operation must have, as far as the operation tells."""
    op, left, right = expr.op, expr.left, expr.right
    if op in ("and", "or"):
        return "Bool", "Bool"
    if op in _ARITHMETIC:
        return "Long", "Long"
    if op in ("eq", "not_eq"):
        return _literal_type(right), _literal_type(left)
    if op == "contains":
        element = _literal_type(right) or "String"
        return f"Set<{element}>", _element_type(_literal_type(left)) or _scopes_element(left)
    if op in ("contains_all", "contains_any"):
        return _literal_type(right) or "Set<String>", _literal_type(left) or "Set<String>"
    if op in ("get_tag", "has_tag"):
        return None, "String"
    return None, None


def _scopes_element(expr: Any) -> str | None:
    if isinstance(expr, pst.GetAttr) and _is_context(expr.base) and expr.attr == "scopes":
        return "String"
    return None


def _scope_key(constraint: Any) -> IndexKey:
    if isinstance(constraint, pst.ScopeAny):
        return ANY_KEY
    if isinstance(constraint, pst.ScopeIs):
        return ("is", str(constraint.entity_type))
    if isinstance(constraint, pst.ScopeEq | pst.ScopeIn | pst.ScopeIsIn):
        entity = constraint.entity
        if isinstance(entity, pst.EntityUid):
            return ("uid", str(entity.type), entity.id)
    raise ValueError("templates (policies with ?principal or ?resource slots) are not supported")


def _actions(constraint: Any) -> frozenset[str] | None:
    if isinstance(constraint, pst.ActionEq):
        return frozenset({constraint.entity.id})
    if isinstance(constraint, pst.ActionIn):
        return frozenset(uid.id for uid in constraint.entities)
    return None


def shape_of(template: pst.Template) -> PolicyShape:
    """Index key, actions, context reads, entity literals and argument uses of one policy.

    Raises:
        ValueError: the policy is a template (has slots).
    """
    collector = _Collector()
    for clause in template.clauses:
        collector.visit(clause.expr, "Bool")
    hints: dict[tuple[str, ...], str] = {}
    unknown: list[tuple[str, ...]] = []
    for path in sorted(set(collector.hints) | collector.unknown):
        if path in collector.records:
            continue
        given = collector.hints.get(path, set())
        if given:
            hints[path] = sorted(given)[0]
        elif path in collector.unknown:
            unknown.append(path)
        else:
            hints[path] = "String"  # only tested with `has`: any type validates
    return PolicyShape(
        effect=template.effect,
        actions=_actions(template.action),
        principal_key=_scope_key(template.principal),
        resource_key=_scope_key(template.resource),
        context_reads=frozenset(collector.reads),
        literals=frozenset((str(uid.type), uid.id) for uid in pst.entity_uids(template)),
        argument_hints=hints,
        argument_records=frozenset(collector.records),
        argument_unknown=tuple(unknown),
    )


def _nest(leaves: Mapping[tuple[str, ...], str], records: frozenset[tuple[str, ...]]) -> ArgumentShape:
    root: dict[str, Any] = {}
    for path in sorted(records, key=len):
        node = root
        for name in path:
            existing = node.get(name)
            if not isinstance(existing, dict):
                existing = node[name] = {}
            node = existing
    for path, cedar_type in leaves.items():
        node = root
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = cedar_type
    return root


def argument_shapes(shape: PolicyShape) -> Iterator[ArgumentShape]:
    """The `Arguments` record types to validate a policy against, most likely first.

    Arguments whose use gives their type are declared with it; the few whose use does not
    (`context.arguments.a == context.arguments.b`) are tried as String, Long and Bool in turn.
    """
    search = shape.argument_unknown[:_MAX_SEARCH]
    rest = {path: "String" for path in shape.argument_unknown[_MAX_SEARCH:]}
    for combination in itertools.product(_CANDIDATES, repeat=len(search)):
        leaves = {**shape.argument_hints, **rest, **dict(zip(search, combination, strict=True))}
        yield _nest(leaves, shape.argument_records)


def _rewrite(node: Any) -> Any:
    """`node` with every `context.arguments` replaced by `UNKNOWN_ARGUMENTS.arguments`."""
    if isinstance(node, pst.GetAttr) and _is_context(node.base) and node.attr == "arguments":
        return pst.GetAttr(base=pst.EntityLit(value=UNKNOWN_ARGUMENTS), attr="arguments")
    if isinstance(node, pst.HasAttr) and _is_context(node.base) and node.attrs[0] == "arguments":
        return pst.HasAttr(base=pst.EntityLit(value=UNKNOWN_ARGUMENTS), attrs=node.attrs)
    if isinstance(node, tuple):
        return tuple(_rewrite(item) for item in node)
    if isinstance(node, Mapping):
        return pst.FrozenMap({key: _rewrite(value) for key, value in node.items()})
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes = {f.name: _rewrite(getattr(node, f.name)) for f in dataclasses.fields(node)}
        return dataclasses.replace(node, **changes)
    return node


def list_phase_variant(template: pst.Template) -> pst.Template:
    """The policy as the list phase evaluates it: with the call's arguments unknown."""
    clauses = tuple(_rewrite(clause) for clause in template.clauses)
    return dataclasses.replace(template, clauses=clauses)
