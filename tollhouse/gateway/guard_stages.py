"""Pipeline stages that check what goes in and out of a tool: arguments and guardrails.

`ValidateStage` checks the arguments against the tool's *pinned* input schema (the snapshot
exposes only approved definitions), so what an approver saw is what is enforced, and an
invalid call never reaches the upstream. `GuardStage` applies the guardrails that the
policies which permitted the call chose (Cedar annotations), to the arguments on the way in
and to the result on the way out; every finding is recorded, never the matched text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tollhouse.gateway.errors import (
    GuardrailBlocked,
    InvalidArguments,
    ToolNotCallable,
    UpstreamProtocolError,
)
from tollhouse.gateway.pipeline import CallContext, Next
from tollhouse.policies.guardrails import (
    DetectorRegistry,
    Finding,
    Guard,
    GuardrailPolicy,
    ResultTooLarge,
    cap_result,
    default_registry,
    strip_ansi,
)
from tollhouse.policies.validation import ArgumentValidator, InvalidToolArguments, ValidationLimits
from tollhouse.policies.validation import ToolNotCallable as SchemaRefused
from tollhouse.registry.models import JSONObject

__all__ = ["GuardFindings", "GuardStage", "ValidateStage"]


class ValidateStage:
    """Arguments against the pinned input schema; invalid -> -32602, no upstream call."""

    def __init__(self, limits: ValidationLimits | None = None, *, capacity: int = 4096) -> None:
        self._limits = limits
        self._capacity = capacity
        # Compiled validators by the identity of the definition they were compiled from; the
        # entry keeps that object alive, so its id cannot be reused by another definition.
        self._compiled: OrderedDict[int, tuple[object, ArgumentValidator | SchemaRefused]] = OrderedDict()

    def _validator(self, definition: JSONObject) -> ArgumentValidator:
        entry = self._compiled.get(id(definition))
        if entry is None or entry[0] is not definition:
            try:
                compiled: ArgumentValidator | SchemaRefused = ArgumentValidator(
                    definition.get("inputSchema"), self._limits
                )
            except SchemaRefused as exc:
                compiled = exc
            entry = (definition, compiled)
            self._compiled[id(definition)] = entry
            if len(self._compiled) > self._capacity:
                self._compiled.popitem(last=False)
        if isinstance(entry[1], SchemaRefused):
            raise entry[1]
        return entry[1]

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        try:
            arguments = self._validator(tool.upstream_definition).validate(ctx.arguments)
        except InvalidToolArguments as exc:
            raise InvalidArguments(exc.message) from None
        except SchemaRefused as exc:
            raise ToolNotCallable(ctx.name, exc.message) from None
        return await call_next(ctx.replace(arguments=arguments))


@dataclass(frozen=True)
class GuardFindings:
    """What the guardrails of one call found (detectors and paths, never the text)."""

    tool: str
    principal: str
    direction: str
    findings: tuple[Finding, ...]
    blocked: bool


class GuardStage:
    """Guardrails on arguments and results, as the permitting policies chose them."""

    def __init__(
        self,
        registry: DetectorRegistry | None = None,
        *,
        on_findings: Callable[[GuardFindings], None] | None = None,
        strip_ansi_results: bool = True,
    ) -> None:
        self._registry = registry or default_registry()
        self._on_findings = on_findings
        self._strip_ansi = strip_ansi_results
        # Bound guards by spec text: a spec is parsed and bound once, then shared by every call.
        self._guards: dict[str, Guard] = {}

    def _guard(self, spec: Any) -> Guard:
        text = str(spec)
        guard = self._guards.get(text)
        if guard is None:
            guard = spec.bind(self._registry)
            if len(self._guards) < 4096:
                self._guards[text] = guard
        return guard

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        policy: GuardrailPolicy | None = ctx.guardrails
        arguments = ctx.arguments
        if policy is not None and policy.arguments.rules:
            checked = self._guard(policy.arguments).apply_arguments(arguments)
            self._note(ctx, "arguments", checked.findings, checked.blocked)
            if checked.blocked:
                raise GuardrailBlocked(ctx.name, "arguments", _detectors(checked.findings))
            if checked.changed:
                arguments = checked.value
        if ctx.audit is not None:
            ctx.audit.args = arguments  # what the upstream sees: redacted where a guardrail redacted
        result = await call_next(ctx.replace(arguments=arguments) if arguments is not ctx.arguments else ctx)
        if policy is not None and policy.max_result_bytes is not None:
            try:
                cap_result(orjson.dumps(result), policy.max_result_bytes)
            except ResultTooLarge:
                raise UpstreamProtocolError(ctx.name.partition("__")[0]) from None
        if self._strip_ansi or (policy is not None and policy.strip_ansi):
            # Terminal escapes in a result can rewrite what a person sees in a console or log.
            result = strip_ansi(result)
        if policy is not None and policy.results.rules:
            checked = self._guard(policy.results).apply_result(result)
            self._note(ctx, "result", checked.findings, checked.blocked)
            if checked.blocked:
                raise GuardrailBlocked(ctx.name, "result", _detectors(checked.findings))
            if checked.changed:
                result = checked.value
        return result

    def _note(self, ctx: CallContext, direction: str, findings: tuple[Finding, ...], blocked: bool) -> None:
        if findings and self._on_findings is not None:
            self._on_findings(GuardFindings(ctx.name, ctx.principal.key, direction, findings, blocked))


def _detectors(findings: tuple[Finding, ...]) -> list[str]:
    return sorted({f.detector for f in findings if f.action == "block"})
