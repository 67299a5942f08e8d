"""Guardrails: find PII and secrets in tool arguments and results, and redact, block or record them.

Why: an agent can leak what it saw (a customer's card number, a key from a config file) into a
tool's arguments, and a tool can return secrets to a model that has no business seeing them
(SECURITY_GOALS S16, OWASP LLM02). The policy chooses, per direction and per category or
detector, one of three actions: `redact` (replace the match with `[REDACTED:<detector>]`),
`block` (refuse the call or the result; matches are also redacted in the returned value so it can be
logged) or `record` (leave the text, report a finding).

Detectors favour precision over recall: each is a precompiled regex (behind a cheap substring
pre-filter where one exists) plus a verifier (Luhn, IBAN mod-97, SSN ranges, a decodable JWT
header, entropy), because a false positive breaks an ordinary call while a missed secret is the
status quo. Findings carry the detector, the JSON path and the length of the match — never the
matched text, so they can be audited without becoming a leak themselves.

Every regex is linear on its input (bounded repetitions, boundaries as lookarounds, no nested
unbounded quantifiers over the same characters): this runs on every call, on results of up to
the size cap.

Also here: `strip_ansi` (terminal escape sequences and control characters in results can hide or
rewrite text shown to a human or a model) and `cap_result` (refuse, rather than truncate,
results above a byte limit).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import orjson

__all__ = [
    "BUILTIN_DETECTORS",
    "Action",
    "Detector",
    "DetectorRegistry",
    "Finding",
    "Guard",
    "GuardResult",
    "GuardSpec",
    "GuardrailPolicy",
    "Kind",
    "RegexDetector",
    "ResultTooLarge",
    "apply",
    "cap_result",
    "default_registry",
    "strip_ansi",
]

Action = Literal["redact", "block", "record"]
Kind = Literal["pii", "secret"]
_ACTIONS: Final[frozenset[str]] = frozenset(get_args(Action))
_KIND_SELECTORS: Final[dict[str, Kind]] = {"pii": "pii", "secret": "secret", "secrets": "secret"}
_ALL_SELECTORS: Final = frozenset({"all", "*"})

Span = tuple[int, int]


# ---------------------------------------------------------------------------------------------
# Detectors


class Detector:
    """A detector: `name` (unique, used in specs and markers), `kind` and `find(text)` → spans.

    Subclass it (or use `RegexDetector`) and add it to a `DetectorRegistry` to plug in more.
    `min_length` lets the scanner skip strings too short to hold a match.
    """

    name: str = ""
    kind: Kind = "pii"
    min_length: int = 1

    def find(self, text: str) -> Iterator[Span]:
        """Spans (start, end) of verified matches in `text`, in any order."""
        return iter(())

    def find_in_field(self, key: str, text: str) -> Iterator[Span]:
        """Extra spans when `text` is the value of the object member `key` (default: none)."""
        return iter(())


class RegexDetector(Detector):
    """A regex candidate search, gated by substring hints and confirmed by `verify`.

    `hints`: if given, the text must contain at least one of them (a fast C-level scan) or the
    regex is not run at all. `verify(match)` returns the span to report or None; by default the
    whole match (or group `group`).
    """

    def __init__(
        self,
        name: str,
        kind: Kind,
        pattern: re.Pattern[str],
        *,
        hints: tuple[str, ...] = (),
        verify: Callable[[re.Match[str]], Span | None] | None = None,
        min_length: int = 1,
    ) -> None:
        self.name = name
        self.kind = kind
        self.pattern = pattern
        self.hints = hints
        self._verify = verify
        self.min_length = min_length

    def find(self, text: str) -> Iterator[Span]:
        if self.hints and not any(hint in text for hint in self.hints):
            return
        verify = self._verify
        for match in self.pattern.finditer(text):
            span = match.span() if verify is None else verify(match)
            if span is not None:
                yield span


# --- e-mail

_EMAIL: Final = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}([A-Za-z]{2,24})(?![\w-])",
    re.ASCII,
)
# "icon@2x.png" is a file name, not an address; these endings are not top-level domains
# (".pl", ".py", ".md", ".zip" … are, and stay in).
_FILE_ENDINGS: Final = frozenset(
    (
        "png",
        "jpg",
        "jpeg",
        "gif",
        "svg",
        "webp",
        "ico",
        "bmp",
        "tif",
        "tiff",
        "heic",
        "avif",
        "js",
        "mjs",
        "cjs",
        "ts",
        "tsx",
        "jsx",
        "css",
        "scss",
        "less",
        "html",
        "htm",
        "json",
        "yaml",
        "yml",
        "toml",
        "txt",
        "rst",
        "lock",
        "log",
        "gz",
        "tgz",
        "tar",
        "bz2",
        "xz",
        "whl",
        "exe",
        "dll",
        "dylib",
        "pyc",
        "rb",
        "go",
        "java",
        "kt",
        "swift",
        "php",
        "bat",
        "ini",
        "cfg",
        "conf",
        "csv",
        "tsv",
        "xml",
        "pdf",
        "doc",
        "docx",
        "xls",
        "xlsx",
        "ppt",
        "pptx",
        "mp3",
        "mp4",
        "wav",
    )
)


def _verify_email(match: re.Match[str]) -> Span | None:
    if match.group(1).lower() in _FILE_ENDINGS:
        return None
    end = match.end()
    text = match.string
    # scp-style "git@github.com:owner/repo" is a host, not a person.
    if end + 1 < len(text) and text[end] == ":" and not text[end + 1].isspace():
        return None
    return match.span()


# --- phone numbers

# Each pattern starts with one character or class and checks the boundary before it afterwards
# ("x(?<![\w]x)" rather than "(?<![\w])x"): the regex engine can then skip ahead to candidate
# characters instead of trying every position, about twice as fast on plain text.
_PHONE_INTL: Final = re.compile(
    # +CC then either one run of digits or separated groups (an optional "(0)"-style group)
    r"\+(?<![\w+]\+)[1-9](?:\d{7,14}|\d{0,3}(?:[ .-]?\(\d{1,5}\))?(?:[ .-]\d{1,8}){1,6})(?!\w)",
    re.ASCII,
)
# North American numbers are found from the separator before the exchange code and checked backwards:
# (415) 555-2671, 415-555-2671, 415.555.2671, each with an optional +1 / 1 prefix.
_PHONE_NANP: Final = re.compile(r"[.)-] ?[2-9]\d{2}[.-]\d{4}(?![\w-])(?!\.\d)", re.ASCII)


class PhoneDetector(Detector):
    """International numbers written with + (9 to 15 digits) and North American ones with separators.

    Deliberately not: bare digit runs without + (order numbers, ids, timestamps) and national
    formats other than North America's, which look too much like other numbers.
    """

    name = "phone"
    kind: Kind = "pii"
    min_length = 10

    def find(self, text: str) -> Iterator[Span]:
        international: list[Span] = []
        if "+" in text:
            for match in _PHONE_INTL.finditer(text):
                if 9 <= sum(ch.isdigit() for ch in match.group()) <= 15:
                    international.append(match.span())
        yield from international
        for match in _PHONE_NANP.finditer(text):
            span = self._nanp(text, match)
            # "+1 (415) 555-2671" is found by both patterns; report it once
            if span is not None and not any(a < span[1] and span[0] < b for a, b in international):
                yield span

    @staticmethod
    def _nanp(text: str, match: re.Match[str]) -> Span | None:
        start, end = match.span()
        if text[start] == ")":
            area_start = start - 4
            if area_start < 0 or text[area_start] != "(" or not _is_area(text[area_start + 1 : start]):
                return None
        else:
            area_start = start - 3
            if text[start + 1] == " " or text[end - 5] != text[start]:
                return None
            if area_start < 0 or not _is_area(text[area_start:start]):
                return None
        if area_start >= 2 and text[area_start - 2] == "1" and text[area_start - 1] in " .-":
            prefixed = area_start - 2
            if prefixed >= 1 and text[prefixed - 1] == "+":
                prefixed -= 1
            if _starts_token(text, prefixed):
                return prefixed, end
        return (area_start, end) if _starts_token(text, area_start) else None


def _starts_token(text: str, index: int) -> bool:
    return index == 0 or not (text[index - 1].isalnum() or text[index - 1] in "_+.-")


def _is_area(digits: str) -> bool:
    return len(digits) == 3 and digits.isdigit() and digits.isascii() and digits[0] in "23456789"


# --- payment cards

_CARD: Final = re.compile(r"\d(?<![\w.,+-]\d)(?:[ -]?\d){12,18}(?!\d)(?![.,-]\d)(?!\w)", re.ASCII)
_CARD_GROUPS: Final = frozenset(
    {(4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 3), (4, 4, 4, 4, 2), (6, 13)}
)


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card_network(digits: str) -> bool:
    """Known issuer prefixes with their lengths (13-digit legacy Visa and Maestro left out: too loose)."""
    n = len(digits)
    p2, p3, p4 = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return n in (16, 19)  # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 in (34, 37):
        return n == 15  # American Express
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65:
        return 16 <= n <= 19  # Discover
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19  # JCB
    if p2 == 62:
        return 16 <= n <= 19  # UnionPay
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19  # Diners Club
    return False


def _verify_card(match: re.Match[str]) -> Span | None:
    raw = match.group()
    separators = {ch for ch in raw if not ch.isdigit()}
    if len(separators) > 1:
        return None
    if separators:
        groups = tuple(len(part) for part in raw.split(separators.pop()))
        if groups not in _CARD_GROUPS:
            return None
        digits = raw.replace(" ", "").replace("-", "")
    else:
        digits = raw
    if not _card_network(digits) or not _luhn(digits):
        return None
    return match.span()


# --- IBAN

_IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN: Final = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}", re.ASCII)


def _verify_iban(match: re.Match[str]) -> Span | None:
    raw = match.group()
    length = _IBAN_LENGTHS.get(raw[:2])
    if length is None:
        return None
    # The candidate may run into a following word ("… 0130 00 IBAN"): cut it at the country's length.
    taken = 0
    end = 0
    for index, char in enumerate(raw):
        if char != " ":
            taken += 1
            if taken == length:
                end = index + 1
                break
    if taken < length:
        return None
    text, stop = match.string, match.start() + end
    if stop < len(text) and text[stop].isalnum():
        return None
    compact = raw[:end].replace(" ", "")
    if not compact[4:].isalnum():
        return None
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    if int(number) % 97 != 1:
        return None
    return match.start(), stop


# --- national identifiers

# Found from its first dash ("ddd-dd-dddd" with the area checked behind it), which is rarer than a digit.
_US_SSN: Final = re.compile(r"-\d{2}-(?<=(?<![\w-])\d{3}-\d{2}-)\d{4}(?![\w-])", re.ASCII)


def _verify_ssn(match: re.Match[str]) -> Span | None:
    start = match.start() - 3
    area, group, serial = match.string[start : start + 3], match.group()[1:3], match.group()[4:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return start, match.end()


_UK_NINO: Final = re.compile(
    r"([A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9].)[A-CEGHJ-NPR-TW-Z])( ?)\d{2}\2\d{2}\2\d{2}\2[A-D](?![A-Za-z0-9])",
    re.ASCII,
)
_NINO_NEVER: Final = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def _verify_nino(match: re.Match[str]) -> Span | None:
    return None if match.group(1) in _NINO_NEVER else match.span()


# --- API keys and tokens

_AWS_KEY_ID: Final = re.compile(r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z2-7]{16}(?![A-Za-z0-9])", re.ASCII)
_GITHUB: Final = re.compile(
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{50,251})(?![A-Za-z0-9_])",
    re.ASCII,
)
_SLACK: Final = re.compile(
    r"(?<![A-Za-z0-9-])xox[baprs]-\d{6,}-[A-Za-z0-9-]{8,250}(?![A-Za-z0-9-])", re.ASCII
)
_STRIPE: Final = re.compile(
    r"(?<![A-Za-z0-9_])[sr]k_(?:live|test)_[A-Za-z0-9]{16,247}(?![A-Za-z0-9])", re.ASCII
)
_OPENAI: Final = re.compile(
    r"(?<![A-Za-z0-9_-])sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,300}"
    r"|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}|[A-Za-z0-9]{48})(?![A-Za-z0-9_-])",
    re.ASCII,
)
_ANTHROPIC: Final = re.compile(
    r"(?<![A-Za-z0-9_-])sk-ant-(?:api|admin|oat|ort)\d{2}-[A-Za-z0-9_-]{32,300}(?![A-Za-z0-9_-])", re.ASCII
)
_GOOGLE: Final = re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])", re.ASCII)


def _mixed(text: str) -> bool:
    """Random keys mix cases and digits; a word or an identifier in one case does not."""
    return (
        any(c.isdigit() for c in text) and any(c.isupper() for c in text) and any(c.islower() for c in text)
    )


def _verify_openai(match: re.Match[str]) -> Span | None:
    body = match.group()[3:]
    if len(body) == 48 and not _mixed(body):
        return None
    return match.span()


def _verify_mixed(match: re.Match[str]) -> Span | None:
    return match.span() if _mixed(match.group()) else None


# --- JWT

_JWT: Final = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{6,4096}\.[A-Za-z0-9_-]{2,65536}\.[A-Za-z0-9_-]{0,8192}(?![A-Za-z0-9_-])",
    re.ASCII,
)


def _b64url_json(segment: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return None


def _verify_jwt(match: re.Match[str]) -> Span | None:
    header = _b64url_json(match.group().split(".", 1)[0])
    if isinstance(header, dict) and isinstance(header.get("alg"), str):
        return match.span()
    return None


# --- private keys


_PEM_BEGIN: Final = re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----", re.ASCII)
_PEM_END: Final = re.compile(r"-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----", re.ASCII)
_PEM_BODY: Final = re.compile(r"[A-Za-z0-9+/=\s]*", re.ASCII)


class PrivateKeyDetector(Detector):
    """PEM private key blocks (PKCS#1/#8, EC, OpenSSH, encrypted, PGP), BEGIN through END.

    A block whose END is missing (a truncated paste) is still a key: it is reported up to the end
    of its base64 body.
    """

    name = "private_key"
    kind: Kind = "secret"
    min_length = 30

    def find(self, text: str) -> Iterator[Span]:
        if "-----BEGIN" not in text:
            return
        position = 0
        end_match: re.Match[str] | None = None
        searched_from = -1
        while True:
            begin = _PEM_BEGIN.search(text, position)
            if begin is None:
                return
            # One END search serves every BEGIN before it, so many BEGINs without an END stay linear.
            if end_match is None or end_match.start() < begin.end():
                if searched_from == -2:
                    end_match = None
                else:
                    end_match = _PEM_END.search(text, begin.end())
                    if end_match is None:
                        searched_from = -2
            if end_match is not None:
                yield begin.start(), end_match.end()
                position = end_match.end()
                end_match = None
            else:
                body = _PEM_BODY.match(text, begin.end())
                stop = body.end() if body else begin.end()
                yield begin.start(), stop
                position = max(stop, begin.end())


# --- secrets assigned to a telling name


_TELLING_NAME: Final = (
    r"(?:api[_-]?key|apikey|api[_-]?secret|secret[_-]?key|secret[_-]?access[_-]?key|client[_-]?secret"
    r"|access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?token|password|passwd|secret)"
)
# Every name above ends in one of these words: search for the (rarer) word followed by ":" or "=",
# then confirm the whole name just before it, instead of trying the long alternation everywhere.
_ASSIGNMENT_TAIL: Final = re.compile(
    r"(key|secret|token|passw(?:or)?d)[\"']?[ \t]{0,3}[:=][ \t]{0,3}[\"']?|(bearer)[ \t]{1,3}",
    re.ASCII | re.IGNORECASE,
)
_ASSIGNMENT_TAIL_LOWER: Final = re.compile(_ASSIGNMENT_TAIL.pattern, re.ASCII)
_NAME_BEFORE: Final = re.compile(r"(?<![A-Za-z0-9])" + _TELLING_NAME + r"\Z", re.ASCII | re.IGNORECASE)
_VALUE: Final = re.compile(r"[A-Za-z0-9_\-+/=.~]{16,4096}", re.ASCII)
_SECRET_KEY_NAME: Final = re.compile(r"(?:[A-Za-z0-9]*[_-])?" + _TELLING_NAME, re.ASCII | re.IGNORECASE)
_PLACEHOLDERS: Final = (
    "example",
    "placeholder",
    "your_",
    "your-",
    "xxxx",
    "changeme",
    "redacted",
    "dummy",
    "****",
)


def _looks_random(value: str) -> bool:
    """A credential, not a word, an identifier or a placeholder: letters and digits, high entropy."""
    if len(value) < 16 or not any(c.isdigit() for c in value) or not any(c.isalpha() for c in value):
        return False
    lowered = value.lower()
    if any(word in lowered for word in _PLACEHOLDERS):
        return False
    counts = Counter(value)
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return entropy >= 3.0


class SecretAssignmentDetector(Detector):
    """High-entropy values after a telling name: `api_key=…`, `"password": "…"`, `Bearer …`.

    Only the value is reported. In JSON the name is usually the member's key, so `find_in_field`
    checks a string whose key is such a name.
    """

    name = "secret_assignment"
    kind: Kind = "secret"
    min_length = 16

    def find(self, text: str) -> Iterator[Span]:
        if text.isascii():
            # Lower-case once and search case-sensitively: about twice as fast as IGNORECASE.
            tails = _ASSIGNMENT_TAIL_LOWER.finditer(text.lower())
        else:
            tails = _ASSIGNMENT_TAIL.finditer(text)
        for tail in tails:
            if tail.group(1) is not None:
                word_end = tail.end(1)
                if not _NAME_BEFORE.search(text[max(0, word_end - 24) : word_end]):
                    continue
                limit = 512
            else:
                limit = 4096
            value = _VALUE.match(text, tail.end())
            if value is None:
                continue
            start, end = value.span()
            end = min(end, start + limit)
            if _looks_random(text[start:end].rstrip("=.")):
                yield start, end

    def find_in_field(self, key: str, text: str) -> Iterator[Span]:
        if len(key) <= 64 and _SECRET_KEY_NAME.fullmatch(key) and 16 <= len(text) <= 4096:
            value = text.strip()
            if " " not in value and _looks_random(value):
                yield 0, len(text)


def _builtin_detectors() -> list[Detector]:
    return [
        RegexDetector("email", "pii", _EMAIL, hints=("@",), verify=_verify_email, min_length=6),
        PhoneDetector(),
        RegexDetector("payment_card", "pii", _CARD, verify=_verify_card, min_length=14),
        RegexDetector("iban", "pii", _IBAN, verify=_verify_iban, min_length=15),
        RegexDetector("us_ssn", "pii", _US_SSN, hints=("-",), verify=_verify_ssn, min_length=11),
        RegexDetector("uk_nino", "pii", _UK_NINO, verify=_verify_nino, min_length=9),
        RegexDetector(
            "aws_access_key_id", "secret", _AWS_KEY_ID, hints=("AKIA", "ASIA", "ABIA", "ACCA"), min_length=20
        ),
        RegexDetector(
            "github_token",
            "secret",
            _GITHUB,
            hints=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
            min_length=40,
        ),
        RegexDetector("slack_token", "secret", _SLACK, hints=("xox",), min_length=20),
        RegexDetector(
            "stripe_secret_key",
            "secret",
            _STRIPE,
            hints=("k_live_", "k_test_"),
            verify=_verify_mixed,
            min_length=24,
        ),
        RegexDetector(
            "openai_api_key", "secret", _OPENAI, hints=("sk-",), verify=_verify_openai, min_length=40
        ),
        RegexDetector("anthropic_api_key", "secret", _ANTHROPIC, hints=("sk-ant-",), min_length=40),
        RegexDetector("google_api_key", "secret", _GOOGLE, hints=("AIza",), min_length=39),
        RegexDetector("jwt", "secret", _JWT, hints=("eyJ",), verify=_verify_jwt, min_length=16),
        PrivateKeyDetector(),
        SecretAssignmentDetector(),
    ]


BUILTIN_DETECTORS: Final[tuple[str, ...]] = tuple(d.name for d in _builtin_detectors())


class DetectorRegistry:
    """The detectors a deployment knows, by name; `default_registry()` holds the built-in ones."""

    def __init__(self, detectors: Iterable[Detector] = ()) -> None:
        self._detectors: dict[str, Detector] = {}
        for detector in detectors:
            self.register(detector)

    def register(self, detector: Detector, *, replace: bool = False) -> None:
        """Add a detector; its name must be new (unless `replace`) and not a category or action."""
        name = detector.name
        if not name or name in _KIND_SELECTORS or name in _ALL_SELECTORS or name in _ACTIONS:
            raise ValueError(f"invalid detector name {name!r}")
        if detector.kind not in _KIND_SELECTORS:
            raise ValueError(f"invalid detector kind {detector.kind!r}")
        if name in self._detectors and not replace:
            raise ValueError(f"detector {name!r} already registered")
        self._detectors[name] = detector

    def get(self, name: str) -> Detector:
        return self._detectors[name]

    def __contains__(self, name: object) -> bool:
        return name in self._detectors

    def __iter__(self) -> Iterator[Detector]:
        return iter(list(self._detectors.values()))

    def names(self) -> list[str]:
        return list(self._detectors)


def default_registry() -> DetectorRegistry:
    """A new registry with the built-in detectors (each caller owns and may extend its own)."""
    return DetectorRegistry(_builtin_detectors())


# ---------------------------------------------------------------------------------------------
# Specs and results


@dataclass(frozen=True, slots=True)
class GuardSpec:
    """Selector → action rules for one direction; selectors are `pii`, `secrets`, `all` or a detector.

    The most specific rule wins: a detector's name, then its category, then `all`.
    """

    rules: tuple[tuple[str, Action], ...] = ()

    @classmethod
    def parse(cls, spec: str | Mapping[str, str] | GuardSpec | None) -> GuardSpec:
        """From `"pii:redact,secrets:block,email:record"`, a mapping of the same, or None (no rules)."""
        if spec is None:
            return cls()
        if isinstance(spec, GuardSpec):
            return spec
        if isinstance(spec, str):
            pairs: list[tuple[str, str]] = []
            for item in spec.split(","):
                item = item.strip()
                if not item:
                    continue
                selector, sep, action = item.partition(":")
                if not sep:
                    raise ValueError(f"guardrail rule {item!r} is not selector:action")
                pairs.append((selector.strip(), action.strip()))
        else:
            pairs = [(str(k), str(v)) for k, v in spec.items()]
        rules: dict[str, Action] = {}
        for selector, action in pairs:
            selector = selector.lower()
            action = action.lower()
            if action not in _ACTIONS:
                raise ValueError(f"guardrail action {action!r} is not one of redact, block, record")
            if not selector:
                raise ValueError("guardrail rule without a selector")
            rules[selector] = action  # type: ignore[assignment]
        return cls(tuple(rules.items()))

    def __str__(self) -> str:
        return ",".join(f"{selector}:{action}" for selector, action in self.rules)

    def bind(self, registry: DetectorRegistry) -> Guard:
        """The guard that applies these rules with `registry`'s detectors; unknown names raise."""
        by_selector = dict(self.rules)
        for selector in by_selector:
            if (
                selector not in _KIND_SELECTORS
                and selector not in _ALL_SELECTORS
                and selector not in registry
            ):
                raise ValueError(f"unknown guardrail detector or category {selector!r}")
        kinds = {_KIND_SELECTORS[s]: a for s, a in self.rules if s in _KIND_SELECTORS}
        fallback = next((a for s, a in self.rules if s in _ALL_SELECTORS), None)
        plan: list[tuple[Detector, Action]] = []
        for detector in registry:
            action = by_selector.get(detector.name) or kinds.get(detector.kind) or fallback
            if action is not None:
                plan.append((detector, action))
        return Guard(tuple(plan))


@dataclass(frozen=True, slots=True)
class Finding:
    """One match: which detector, where (a JSON path), what was done, how long it was — never what."""

    detector: str
    kind: Kind
    path: str
    action: Action
    length: int


@dataclass(frozen=True, slots=True)
class GuardResult:
    """`value` with redact/block matches replaced; `blocked` if any match's action is block."""

    value: Any
    blocked: bool
    findings: tuple[Finding, ...]
    findings_dropped: int = 0

    @property
    def changed(self) -> bool:
        return any(f.action != "record" for f in self.findings) or self.findings_dropped > 0


@dataclass(frozen=True, slots=True)
class GuardrailPolicy:
    """What a policy chose for one tool: rules per direction, ANSI stripping and a result cap."""

    arguments: GuardSpec = field(default_factory=GuardSpec)
    results: GuardSpec = field(default_factory=GuardSpec)
    strip_ansi: bool = False
    max_result_bytes: int | None = None

    @classmethod
    def parse(
        cls,
        arguments: str | Mapping[str, str] | GuardSpec | None = None,
        results: str | Mapping[str, str] | GuardSpec | None = None,
        *,
        strip_ansi: bool = False,
        max_result_bytes: int | None = None,
    ) -> GuardrailPolicy:
        return cls(GuardSpec.parse(arguments), GuardSpec.parse(results), strip_ansi, max_result_bytes)


# ---------------------------------------------------------------------------------------------
# Applying a guard to JSON

_MAX_DEPTH: Final = 256
_MAX_KEY_IN_PATH: Final = 64


def _path(parts: list[str | int]) -> str:
    out: list[str] = [str(parts[0])]
    for part in parts[1:]:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif part.isidentifier() and len(part) <= _MAX_KEY_IN_PATH:
            out.append(f".{part}")
        else:
            shown = part if len(part) <= _MAX_KEY_IN_PATH else part[: _MAX_KEY_IN_PATH - 1] + "…"
            out.append("[" + orjson.dumps(shown).decode() + "]")
    return "".join(out)


def _binary_member(holder: Mapping[str, Any], key: str) -> bool:
    """Base64 payloads (image/audio `data`, resource `blob`) are not text and are not scanned."""
    return key == "blob" or (key == "data" and holder.get("type") in ("image", "audio"))


class _Walk:
    __slots__ = ("blocked", "dropped", "findings", "guard", "parts")

    def __init__(self, guard: Guard, root: str) -> None:
        self.guard = guard
        self.parts: list[str | int] = [root]
        self.findings: list[Finding] = []
        self.blocked = False
        self.dropped = 0

    def note(self, detector: Detector, action: Action, length: int) -> None:
        if action == "block":
            self.blocked = True
        if len(self.findings) < self.guard.max_findings:
            self.findings.append(Finding(detector.name, detector.kind, _path(self.parts), action, length))
        else:
            self.dropped += 1

    def text(self, text: str, key: str | None) -> str:
        guard = self.guard
        spans: list[tuple[int, int, str]] = []
        long_enough = len(text) >= guard.min_length
        for detector, action in guard.plan:
            found: Iterable[Span] = (
                detector.find(text) if long_enough and len(text) >= detector.min_length else ()
            )
            if key is not None:
                found = (*found, *detector.find_in_field(key, text))
            for start, end in found:
                self.note(detector, action, end - start)
                if action != "record":
                    spans.append((start, end, detector.name))
        if not spans:
            return text
        spans.sort(key=lambda s: (s[0], -s[1]))
        pieces: list[str] = []
        cursor = 0
        for start, end, name in spans:
            if end <= cursor:
                continue  # inside a region already replaced
            if start >= cursor:
                pieces.append(text[cursor:start])
                pieces.append(f"[REDACTED:{name}]")
            # else: overlapping detectors; the previous marker now covers up to `end`
            cursor = end
        pieces.append(text[cursor:])
        return "".join(pieces)

    def value(self, value: Any, depth: int, key: str | None = None) -> Any:
        if isinstance(value, str):
            return self.text(value, key) if value else value
        if depth > _MAX_DEPTH:
            self.blocked = True
            self.findings.append(Finding("max_depth", "secret", _path(self.parts), "block", 0))
            return None
        if isinstance(value, dict):
            out: dict[str, Any] | None = None
            for index, (k, v) in enumerate(value.items()):
                new_key = self.text(k, None) if isinstance(k, str) and k else k
                self.parts.append(new_key)
                new_v = v if isinstance(v, str) and _binary_member(value, k) else self.value(v, depth + 1, k)
                self.parts.pop()
                if out is None and (new_v is not v or new_key is not k):
                    out = dict(list(value.items())[:index])
                if out is not None:
                    out[new_key] = new_v
            return value if out is None else out
        if isinstance(value, list):
            out_list: list[Any] | None = None
            for index, item in enumerate(value):
                self.parts.append(index)
                new_item = self.value(item, depth + 1)
                self.parts.pop()
                if out_list is None and new_item is not item:
                    out_list = value[:index]
                if out_list is not None:
                    out_list.append(new_item)
            return value if out_list is None else out_list
        return value


@dataclass(frozen=True, slots=True)
class Guard:
    """A spec bound to detectors: the (detector, action) pairs to run. Immutable; share it freely."""

    plan: tuple[tuple[Detector, Action], ...]
    max_findings: int = 1000

    @property
    def min_length(self) -> int:
        return min((d.min_length for d, _ in self.plan), default=0)

    @property
    def active(self) -> bool:
        return bool(self.plan)

    def apply(self, value: Any, root: str = "$") -> GuardResult:
        """Scan every string (and object key) in `value`; the input is never modified."""
        if not self.plan:
            return GuardResult(value, False, ())
        walk = _Walk(self, root)
        new = walk.value(value, 0)
        return GuardResult(new, walk.blocked, tuple(walk.findings), walk.dropped)

    def apply_arguments(self, arguments: Any) -> GuardResult:
        return self.apply(arguments, "arguments")

    def apply_result(self, result: Any) -> GuardResult:
        """A `tools/call` result: `content[].text`, `structuredContent`, resources' text, `_meta` …"""
        return self.apply(result, "result")


def apply(
    value: Any, spec: GuardSpec | str | Mapping[str, str], registry: DetectorRegistry | None = None
) -> GuardResult:
    """One-shot `GuardSpec.parse(spec).bind(registry).apply(value)`; bind once and reuse on hot paths."""
    return GuardSpec.parse(spec).bind(registry or default_registry()).apply(value)


# ---------------------------------------------------------------------------------------------
# ANSI and control characters

_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# One leading class of control characters (the engine skips ahead to them), then what follows
# depends on which one it was: a whole sequence goes, not only its introducer.
_ESCAPES: Final = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"
    r"(?:(?<=\x1b)(?:\[[0-?]*[ -/]*[@-~]"  # CSI (colours, cursor movement, erase)
    r"|\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"  # OSC (titles, hyperlinks, clipboard)
    r"|[P^_X][^\x1b\x9c]*(?:\x1b\\|\x9c)"  # DCS, PM, APC, SOS strings
    r"|[ -/]*[0-~])"  # any other escape sequence
    r"|(?<=\x9b)[0-?]*[ -/]*[@-~]"  # 8-bit CSI
    r"|(?<=\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"  # 8-bit OSC
    r"|(?<=[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c))?"  # 8-bit DCS, SOS, PM, APC
)


def _strip_text(text: str) -> str:
    if _CONTROL.search(text) is None:
        return text
    return _ESCAPES.sub("", text)


def strip_ansi(value: Any) -> Any:
    """`value` with ANSI/VT escape sequences and control characters (except \\t, \\n) removed from
    every string, keys included; \\r goes too (it lets a line overwrite what was shown before it).
    Unchanged parts are returned as they are (no copy when nothing changes)."""
    if isinstance(value, str):
        return _strip_text(value)
    if isinstance(value, dict):
        out = {_strip_text(k) if isinstance(k, str) else k: strip_ansi(v) for k, v in value.items()}
        unchanged = len(out) == len(value) and all(
            a is b and out[a] is value[b] for a, b in zip(out, value, strict=True)
        )
        return value if unchanged else out
    if isinstance(value, list):
        items = [strip_ansi(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


# ---------------------------------------------------------------------------------------------
# Result size


class ResultTooLarge(ValueError):
    """The result is above the cap; refuse it (the gateway answers an error, outcome gateway_error)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        self.message = f"Tool result is too large ({size} bytes, the limit is {limit})"
        super().__init__(self.message)


def cap_result(result: Any, max_bytes: int) -> int:
    """The result's size as compact JSON (or of `bytes` as given); raise `ResultTooLarge` above `max_bytes`.

    Refused rather than truncated: a cut result is a different, possibly invalid or misleading,
    result (a half JSON document, a list missing its last entries, a sentence without its "not").
    """
    size = len(result) if isinstance(result, bytes | bytearray) else len(orjson.dumps(result))
    if size > max_bytes:
        raise ResultTooLarge(size, max_bytes)
    return size
