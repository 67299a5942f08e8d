"""Description scanning: advisory findings about a tool definition or a server's instructions.

Pure module: no I/O, no decision. Findings are stored with the pin and shown where a person
approves (`tools diff`, `tools show`, the admin API); they never approve, reject or block
anything, first-use pinning included (SECURITY_GOALS S15). What it looks for is what tool
poisoning has used (Invariant Labs, Trail of Bits): text the user cannot see (Unicode tag
characters, zero-width and bidi controls, terminal escapes), text that addresses the model
rather than describing the tool, names of other servers' tools (shadowing), sensitive file
paths, and URLs. Every string of the definition is scanned, parameter descriptions included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from tollhouse.registry.models import SEPARATOR, JSONObject

__all__ = ["FINDING_KINDS", "MAX_FINDINGS", "scan_definition", "scan_text", "visible"]

FINDING_KINDS = (
    "invisible_unicode",
    "ansi_escape",
    "control_character",
    "instruction",
    "cross_server_reference",
    "sensitive_path",
    "url",
)
MAX_FINDINGS = 50  # per definition: enough to judge it, bounded in the database
_EXCERPT = 40  # characters either side of a match
_MAX_EXCERPT = 240

_TAG_BLOCK = (0xE0000, 0xE007F)
_ZERO_WIDTH = frozenset({0x200B, 0x200C, 0x200D, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0xFEFF, 0x180E})
_BIDI = frozenset({0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)})
_ANSI = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])|\x9b[0-?]*[ -/]*[@-~]"
)

# Text addressed to the model rather than describing the tool.
_INSTRUCTIONS = re.compile(
    r"|".join(
        (
            r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|other|"
            r"all|system)\b[^.\n]{0,20}\b(?:instructions?|prompts?|rules?|directions?)",
            r"\b(?:do\s+not|don'?t|never)\s+(?:tell|inform|mention|reveal|show|notify|alert)\b[^.\n]{0,20}"
            r"\b(?:the\s+)?user",
            r"\bwithout\s+(?:telling|informing|notifying|alerting|asking)\s+(?:the\s+)?user",
            r"</?\s*(?:important|system|instructions?|secret|hidden|admin)\s*>",
            r"\bsystem\s+prompt\b",
            r"\byou\s+(?:must|should|have\s+to|need\s+to)\s+(?:always|first|never|also|immediately)\b",
            r"\bbefore\s+(?:using|calling|running)\s+(?:this|any)\s+tool\b",
            r"\b(?:this|it)\s+is\s+(?:very\s+|extremely\s+)?(?:important|critical)\b",
            r"\b(?:assistant|AI|model|LLM)\s*,?\s+(?:must|should|will)\b",
            r"\bnew\s+instructions?\s*:",
            r"\bact\s+as\b|\bpretend\s+(?:to\s+be|you\s+are)\b",
            r"\bsecretly\b|\bcovertly\b",
        )
    ),
    re.IGNORECASE,
)
_SENSITIVE = re.compile(
    r"~/\.ssh\b|\.ssh/|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|/etc/(?:passwd|shadow|sudoers)\b"
    r"|(?:^|[\s/'\"`(])\.env\b|\.aws/(?:credentials|config)\b|\baws_(?:secret_access_key|access_key_id)\b"
    r"|\.netrc\b|\.npmrc\b|\.pypirc\b|\.git-credentials\b|\.kube/config\b|\.docker/config\.json\b"
    r"|\.gnupg\b|\bmcp\.json\b|claude_desktop_config\.json|\bprivate[\s_-]key\b|\.pem\b|\bkeychain\b",
    re.IGNORECASE,
)
_URL = re.compile(r"\b(?:https?|ftp|file|wss?)://[^\s\"'<>`]+|\bdata:[\w/+.-]+;base64,", re.IGNORECASE)
_BARE_NAME = re.compile(r"[A-Za-z0-9]*(?:[_-]|[0-9]|[a-z][A-Z])[A-Za-z0-9_-]*")


def visible(text: str) -> str:
    """`text` with every invisible or control character shown as `<U+XXXX>` (excerpts never hide text)."""
    return "".join(ch if _shown(ch) else f"<U+{ord(ch):04X}>" for ch in text)


def _shown(ch: str) -> bool:
    code = ord(ch)
    if ch in "\n\t":
        return True
    return ch.isprintable() and code not in _ZERO_WIDTH and code not in _BIDI and not _is_tag(code)


def _is_tag(code: int) -> bool:
    return _TAG_BLOCK[0] <= code <= _TAG_BLOCK[1]


def _excerpt(text: str, start: int, end: int) -> str:
    left, right = max(0, start - _EXCERPT), min(len(text), end + _EXCERPT)
    shown = visible(text[left:right])
    if len(shown) > _MAX_EXCERPT:  # a run of invisible characters, each shown as <U+XXXXX>
        shown = shown[:_MAX_EXCERPT]
        right = len(text) + 1
    return ("…" if left else "") + shown + ("…" if right < len(text) or right > len(text) else "")


def _finding(kind: str, detail: str, excerpt: str, where: str) -> JSONObject:
    return {"kind": kind, "detail": detail, "excerpt": excerpt, "where": where}


def scan_text(
    text: str, where: str = "", *, other_tools: Iterable[str] = (), own_tools: Iterable[str] = ()
) -> list[JSONObject]:
    """Findings in one string; `other_tools` are other servers' exposed names (`server__tool`)."""
    found: list[JSONObject] = []
    found.extend(_invisible(text, where))
    in_escape: set[int] = set()
    for match in _ANSI.finditer(text):
        in_escape.update(range(*match.span()))
        found.append(
            _finding("ansi_escape", "terminal escape sequence", _excerpt(text, *match.span()), where)
        )
    for index, ch in enumerate(text):
        code = ord(ch)
        if index in in_escape or ch in "\n\t\r":
            continue
        if code < 0x20 or 0x7F <= code < 0xA0:
            found.append(
                _finding(
                    "control_character",
                    f"control character U+{code:04X}",
                    _excerpt(text, index, index + 1),
                    where,
                )
            )
    for match in _INSTRUCTIONS.finditer(text):
        found.append(
            _finding(
                "instruction",
                f"addresses the model: {match.group(0)!r}",
                _excerpt(text, *match.span()),
                where,
            )
        )
    found.extend(_references(text, where, other_tools, own_tools))
    for match in _SENSITIVE.finditer(text):
        found.append(
            _finding(
                "sensitive_path",
                f"sensitive path: {match.group(0).strip()!r}",
                _excerpt(text, *match.span()),
                where,
            )
        )
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(".,;:)!?")
        found.append(_finding("url", f"URL: {visible(url)}", _excerpt(text, *match.span()), where))
    return found


def _invisible(text: str, where: str) -> Iterator[JSONObject]:
    tags = [(i, ch) for i, ch in enumerate(text) if _is_tag(ord(ch))]
    if tags:
        # Tag characters mirror ASCII (U+E0020..E007E): the hidden message is readable once shifted.
        hidden = "".join(chr(ord(ch) - 0xE0000) for _, ch in tags if 0xE0020 <= ord(ch) <= 0xE007E)
        yield _finding(
            "invisible_unicode",
            f"{len(tags)} Unicode tag characters (invisible); they spell: {hidden!r}",
            _excerpt(text, tags[0][0], tags[-1][0] + 1),
            where,
        )
        # What the tags hide is scanned like visible text.
        for inner in scan_text(hidden, where):
            yield {**inner, "detail": "hidden by tag characters: " + str(inner["detail"])}
    for label, codes in (("zero-width", _ZERO_WIDTH), ("bidirectional control", _BIDI)):
        hits = [i for i, ch in enumerate(text) if ord(ch) in codes]
        if hits:
            kinds = sorted({f"U+{ord(text[i]):04X}" for i in hits})
            yield _finding(
                "invisible_unicode",
                f"{len(hits)} {label} characters ({', '.join(kinds)})",
                _excerpt(text, hits[0], hits[0] + 1),
                where,
            )


def _references(
    text: str, where: str, other_tools: Iterable[str], own_tools: Iterable[str]
) -> Iterator[JSONObject]:
    own = set(own_tools)
    seen: set[str] = set()
    for exposed in other_tools:
        server, _, bare = exposed.partition(SEPARATOR)
        candidates = [exposed]
        # A bare name is worth flagging only when it looks like an identifier, not a word.
        if bare and bare not in own and len(bare) >= 4 and _BARE_NAME.fullmatch(bare):
            candidates.append(bare)
        for name in candidates:
            match = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
            if match is not None and exposed not in seen:
                seen.add(exposed)
                yield _finding(
                    "cross_server_reference",
                    f"names {exposed!r}, a tool of server {server!r}",
                    _excerpt(text, *match.span()),
                    where,
                )


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            yield inner + " (key)", str(key)
            yield from _strings(item, inner)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def scan_definition(
    definition: JSONObject, *, other_tools: Iterable[str] = (), own_tools: Iterable[str] = ()
) -> list[JSONObject]:
    """Findings in every string (and key) of a tool definition or `{"instructions": …}`, at most MAX_FINDINGS.

    Keys are checked only for what cannot be seen; URLs and words in keys are schema, not prose.
    """
    others, own = tuple(other_tools), tuple(own_tools)
    found: list[JSONObject] = []
    for where, text in _strings(definition, ""):
        if where.endswith(" (key)") or where == "name":
            hits = [f for f in scan_text(text, where) if f["kind"] in _HIDDEN_KINDS]
        else:
            hits = scan_text(text, where, other_tools=others, own_tools=own)
        found.extend(hits)
        if len(found) >= MAX_FINDINGS:
            return found[:MAX_FINDINGS]
    return found


_HIDDEN_KINDS = frozenset({"invisible_unicode", "ansi_escape", "control_character"})
