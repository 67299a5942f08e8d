"""Turning `PolicyRecord`s into checked, analysed Cedar policies — or into a list of clear problems.

Every check a policy can fail is done here, at load, so that a policy set the engine holds is one
Cedar will evaluate as written: the text parses as exactly one static policy; its `@id` (if any)
is its record's id; its guardrail annotations are well formed; and it validates against the
schema (schema.py), with `context.arguments` declared as the arguments it reads (analysis.py).
Each problem names the policy, so `tollhouse policy validate` can show them all at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cedarpy
from cedarpy import pst

from tollhouse.policies.analysis import PolicyShape, argument_shapes, list_phase_variant, shape_of
from tollhouse.policies.model import GuardrailSpec, PolicyProblem, PolicyRecord
from tollhouse.policies.schema import arguments_type, schema_text
from tollhouse.registry.models import POLICY_ID_RE

__all__ = [
    "GUARDRAIL_ACTIONS",
    "CompiledPolicy",
    "PolicyError",
    "compile_policies",
    "parse_guardrails",
    "policy_set",
]

GUARDRAIL_ACTIONS = ("block", "redact", "record")  # strictest first
GUARDRAIL_ANNOTATIONS = {"guardrail_arguments": "arguments", "guardrail_results": "results"}
_DETECTOR_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_POLICY_MENTION = re.compile(r"for policy `[^`]*`, ")


class PolicyError(ValueError):
    """One or more policies were rejected; `problems` names each policy and what is wrong with it."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{count} policy problem{'s' if count != 1 else ''}:\n{lines}")


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A checked policy: its record, its PST (id = the record's id), the list-phase variant, its shape."""

    record: PolicyRecord
    template: pst.Template
    list_template: pst.Template  # the template itself unless it reads context.arguments
    shape: PolicyShape
    guardrails: tuple[GuardrailSpec, ...]

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def effect(self) -> str:
        return self.template.effect

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.template.annotations


def parse_guardrails(annotations: Mapping[str, str]) -> tuple[GuardrailSpec, ...]:
    """The guardrails a policy's annotations ask for: `@guardrail_arguments("pii:redact, secrets:block")`.

    Raises:
        ValueError: an unknown `guardrail_*` annotation, a malformed entry or an unknown action.
    """
    specs: list[GuardrailSpec] = []
    for key, value in annotations.items():
        if not key.startswith("guardrail"):
            continue
        stage = GUARDRAIL_ANNOTATIONS.get(key)
        if stage is None:
            known = ", ".join(f"@{k}" for k in GUARDRAIL_ANNOTATIONS)
            raise ValueError(f"unknown guardrail annotation @{key} (known: {known})")
        for item in (part.strip() for part in value.split(",")):
            detector, sep, action = item.partition(":")
            detector, action = detector.strip(), action.strip()
            if not sep or not _DETECTOR_RE.match(detector) or action not in GUARDRAIL_ACTIONS:
                actions = ", ".join(GUARDRAIL_ACTIONS)
                raise ValueError(f"@{key}: {item!r} is not 'detector:action' with action one of {actions}")
            specs.append(GuardrailSpec(stage=stage, detector=detector, action=action))  # type: ignore[arg-type]
    return tuple(specs)


def policy_set(templates: Iterable[pst.Template]) -> cedarpy.PolicySet:
    """A cedarpy policy-set handle whose Cedar policy ids are the templates' ids (our policy ids)."""
    static = {t.id: t for t in templates}
    return cedarpy.PolicySet.from_pst(pst.PolicySet(templates={}, static_policies=static, template_links=()))


def _parse(record: PolicyRecord) -> pst.Template:
    """The record's one static policy, renamed to the record's id. Raises ValueError with the reason."""
    try:
        parsed = cedarpy.policies_to_pst(record.cedar)
    except ValueError as error:
        raise ValueError(f"does not parse as Cedar: {error}") from None
    if parsed.templates or parsed.template_links:
        raise ValueError("templates (policies with ?principal or ?resource slots) are not supported")
    if len(parsed.static_policies) != 1:
        raise ValueError(f"holds {len(parsed.static_policies)} policies; write exactly one per id")
    (template,) = parsed.static_policies.values()
    annotated = template.annotations.get("id")
    if annotated is not None and annotated != record.id:
        raise ValueError(f"its @id annotation {annotated!r} differs from the policy id")
    annotations = pst.FrozenMap({**template.annotations, "id": record.id})
    return dataclasses.replace(template, id=record.id, annotations=annotations)


def _render(templates: Iterable[pst.Template]) -> str:
    return str(policy_set(templates))


def _validation_problems(templates: Sequence[pst.Template], schema: cedarpy.Schema) -> dict[str, list[str]]:
    """Cedar's validation errors per policy id (empty when every template validates)."""
    result = cedarpy.validate_policies(_render(templates), schema)
    problems: dict[str, list[str]] = {}
    if result.validation_passed:
        return problems
    ids = result.id_annotations_by_policy_id
    for error in result.errors:
        policy_id = ids.get(error.policy_id, error.policy_id)
        problems.setdefault(policy_id, []).append(_POLICY_MENTION.sub("", error.error))
    return problems


class _Schemas:
    """Parsed schema handles by `Arguments` type, for one compile run."""

    def __init__(self) -> None:
        self._by_arguments: dict[str, cedarpy.Schema] = {}

    def get(self, arguments: str, shape: Mapping[str, object]) -> cedarpy.Schema:
        schema = self._by_arguments.get(arguments)
        if schema is None:
            schema = cedarpy.Schema.from_str(schema_text(shape))  # type: ignore[arg-type]
            self._by_arguments[arguments] = schema
        return schema


def _validate(parsed: Mapping[str, tuple[pst.Template, PolicyShape]]) -> list[PolicyProblem]:
    """Validate every parsed policy against the schema; argument-free ones in one batch."""
    schemas = _Schemas()
    problems: list[PolicyProblem] = []
    plain = [t for t, shape in parsed.values() if not shape.reads_arguments]
    if plain:
        found = _validation_problems(plain, schemas.get("{}", {}))
        problems += [PolicyProblem(pid, msg) for pid, msgs in found.items() for msg in msgs]
    for template, shape in parsed.values():
        if not shape.reads_arguments:
            continue
        first: dict[str, list[str]] | None = None
        for candidate in argument_shapes(shape):
            found = _validation_problems([template], schemas.get(arguments_type(candidate), candidate))
            if not found:
                break
            first = first if first is not None else found
        else:
            assert first is not None
            problems += [PolicyProblem(pid, msg) for pid, msgs in first.items() for msg in msgs]
    return problems


def compile_policies(records: Sequence[PolicyRecord]) -> tuple[list[CompiledPolicy], list[PolicyProblem]]:
    """Check and analyse `records`; returns the compiled policies and every problem found.

    The policies are only usable when there are no problems (PolicyEngine raises PolicyError).
    """
    problems: list[PolicyProblem] = []
    seen: set[str] = set()
    parsed: dict[str, tuple[pst.Template, PolicyShape]] = {}
    guardrails: dict[str, tuple[GuardrailSpec, ...]] = {}
    for record in records:
        if not POLICY_ID_RE.match(record.id):
            problems.append(
                PolicyProblem(record.id, "is not a valid id: use [A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
            )
            continue
        if record.id in seen:
            problems.append(PolicyProblem(record.id, "is defined more than once"))
            continue
        seen.add(record.id)
        try:
            template = _parse(record)
            guardrails[record.id] = parse_guardrails(template.annotations)
            parsed[record.id] = (template, shape_of(template))
        except ValueError as error:
            problems.append(PolicyProblem(record.id, str(error)))
    problems += _validate(parsed)
    if problems:
        order = {record.id: i for i, record in enumerate(records)}
        problems.sort(key=lambda problem: order.get(problem.policy_id, -1))
        return [], problems
    compiled = []
    for record in records:
        template, shape = parsed[record.id]
        variant = list_phase_variant(template) if shape.reads_arguments else template
        compiled.append(CompiledPolicy(record, template, variant, shape, guardrails[record.id]))
    return compiled, problems
