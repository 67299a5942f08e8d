"""Guardrails: every detector redacts, blocks and records as configured; ordinary texts stay clean."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tollhouse.policies.guardrails import (
    BUILTIN_DETECTORS,
    Detector,
    DetectorRegistry,
    GuardrailPolicy,
    GuardSpec,
    ResultTooLarge,
    apply,
    cap_result,
    default_registry,
    strip_ansi,
)

# Positive examples per detector: (text, the secret part that must disappear). Test values only
# (documented test cards, the AWS docs example key, made-up tokens).
POSITIVES: dict[str, list[tuple[str, str]]] = {
    "email": [
        ("write to alice.smith@example.org today", "alice.smith@example.org"),
        ("CC: ops+alerts@mail.acme-corp.co.uk.", "ops+alerts@mail.acme-corp.co.uk"),
    ],
    "phone": [
        ("call +1 415 555 2671 now", "+1 415 555 2671"),
        ("office: +44 20 7946 0958", "+44 20 7946 0958"),
        ("mobile +4915112345678.", "+4915112345678"),
        ("US line (415) 555-2671", "(415) 555-2671"),
        ("toll free 1-800-555-0199", "1-800-555-0199"),
        ("fax 212.555.0142", "212.555.0142"),
        ("Paris +33 1 23 45 67 89", "+33 1 23 45 67 89"),
    ],
    "payment_card": [
        ("visa 4111 1111 1111 1111 exp 12/30", "4111 1111 1111 1111"),
        ("amex 378282246310005", "378282246310005"),
        ("mc 5555-5555-5555-4444", "5555-5555-5555-4444"),
        ("card=6011111111111117;", "6011111111111117"),
    ],
    "iban": [
        ("pay to DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
        ("IBAN: GB82WEST12345698765432", "GB82WEST12345698765432"),
        ("FR1420041010050500013M02606 (Paris)", "FR1420041010050500013M02606"),
    ],
    "us_ssn": [("SSN 123-45-6789 on file", "123-45-6789")],
    "uk_nino": [("NI number AB 12 34 56 C", "AB 12 34 56 C"), ("nino=JG103759A", "JG103759A")],
    "aws_access_key_id": [("aws_access_key_id AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE")],
    "github_token": [
        ("token ghp_" + "a1B2c3D4e5" * 3 + "F6g7h8", "ghp_" + "a1B2c3D4e5" * 3 + "F6g7h8"),
        ("github_pat_11ABCDEFG0" + "x9Y8z7W6v5" * 6, "github_pat_11ABCDEFG0" + "x9Y8z7W6v5" * 6),
    ],
    "slack_token": [
        ("SLACK xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-123456789012-1234567890123"),
    ],
    "stripe_secret_key": [("stripe sk_live_51Hx9Qa2Lm3Nb4Vc5Xz6Pq7R", "sk_live_51Hx9Qa2Lm3Nb4Vc5Xz6Pq7R")],
    "openai_api_key": [
        ("OPENAI sk-proj-" + "Ab3dEf6hIj" * 6, "sk-proj-" + "Ab3dEf6hIj" * 6),
        ("key sk-" + "aB3cD4eF5g" * 2 + "T3BlbkFJ" + "hI6jK7lM8n" * 2, "T3BlbkFJ"),
    ],
    "anthropic_api_key": [("sk-ant-api03-" + "Zx8_Qp2-Lm9R" * 4, "sk-ant-api03-" + "Zx8_Qp2-Lm9R" * 4)],
    "google_api_key": [
        ("maps AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY")
    ],
    "jwt": [
        (
            "Authorization eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
        )
    ],
    "private_key": [
        (
            "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4z\nQk9x==\n"
            "-----END RSA PRIVATE KEY-----\nok",
            "MIIEowIBAAKCAQEAx4z",
        ),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAB", "b3BlbnNzaC1rZXktdjEAAAAA"),
    ],
    "secret_assignment": [
        ('config: api_key = "Zx8Qp2Lm9Rt4Vw7Yb3Nc"', "Zx8Qp2Lm9Rt4Vw7Yb3Nc"),
        ("DB_PASSWORD=pR7vK2mQ9xL4wN8z", "pR7vK2mQ9xL4wN8z"),
        ("Authorization: Bearer Zx8Qp2Lm9Rt4Vw7Yb3Nc1", "Zx8Qp2Lm9Rt4Vw7Yb3Nc1"),
    ],
}

# Texts a tool routinely sends or returns: none of them may produce a finding.
ORDINARY = [
    "The Acme 3000 blender has 12 speeds, a 1.5 L jar and a 5-year warranty. Price: $129.99 (was $149.99).",
    "Order #100234 shipped on 2024-03-15 via UPS, tracking 1Z999AA10123456784.",
    "Invoice INV-2024-000123, due 2024-04-30, total EUR 1,234.56 incl. 19% VAT.",
    "Release v2.14.3 (build 20240315.1) fixes #4521 and #4533; see CHANGELOG.md.",
    "Upgrade numpy>=1.26.4,<2.0 and requests==2.31.0 before running pip install -e .[dev]",
    "id: 3f2504e0-4f89-11d3-9a0c-0305e82c3301, created_at: 2024-03-15T10:22:31Z",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 Author: dev <noreply>",
    "git checkout 1a2b3c4d && git log --oneline -n 20",
    "Clone with git@github.com:example/repo.git or https://github.com/example/repo",
    "for (let i = 0; i < 1000000; i++) { total += i * 2; }",
    "def area(r): return 3.14159265358979 * r ** 2  # 2 * pi * r for the circumference",
    "x = 1234567890123456789012345 // 7; print(x % 97)",
    "The meeting is at 10:30-11:45 in room 4.021, building B.",
    "Population of Tokyo: 37,400,068 (2018). Area: 2,194 km².",
    "ISBN 978-0-306-40615-7, 3rd edition, pages 120-145.",
    "Coordinates 48.858370, 2.294481 (Eiffel Tower); elevation 35 m.",
    "GET /api/v1/users?page=2&per_page=50 HTTP/1.1 200 OK 1532 bytes in 23 ms",
    "Server 192.168.1.100:8080 and fe80::1ff:fe23:4567:890a responded in 0.042 s.",
    "docker run -p 5432:5432 -e POSTGRES_DB=app postgres:16.2-alpine",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",
    "Use the @app.route('/login') decorator and @pytest.fixture(scope='session').",
    "Retina assets: logo@2x.png, logo@3x.png, icon@2x.webp",
    "npm install @types/node@20.11.5 lodash@4.17.21",
    "Part numbers: SKU-4006381333931, EAN 4006381333931, UPC 036000291452.",
    "Temperature ranged from -12.5 °C to +31.2 °C; humidity 45-60 %.",
    "The score was 3-2 after extra time; attendance 74,310.",
    "Call extension 4512 or dial 0 for the operator.",
    "Timestamp 1710498151234 ms since epoch, or 1710498151 s.",
    "Matrix [[1, 2, 3], [4, 5, 6]] has determinant 0 and rank 2.",
    "The password field must be at least 12 characters long; use a passphrase.",
    "Set api_key in your environment: export API_KEY=your_api_key_here",
    "token = os.environ['GITHUB_TOKEN']; headers = {'Authorization': f'Bearer {token}'}",
    "secret_key = settings.SECRET_KEY  # loaded from the vault at start-up",
    "The access token expires after 3600 seconds; refresh it with the refresh token.",
    "Bearer authentication is described in RFC 6750 section 2.1.",
    "Phone numbers must be in E.164 format, e.g. +<country><number>, max 15 digits.",
    "Version 10.0.19045.3930 of Windows, kernel 6.8.0-31-generic.",
    "Lot 2024-0315-0042 expires 2026-03-15; batch size 5000 units.",
    "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "Use header X-Request-Id: 7f9c2ba4e88f827d616045507605853e for tracing.",
    "Europe/Berlin is UTC+01:00 in winter and UTC+02:00 in summer.",
    "In 2023 revenue grew 12.4% to 4,512,300,000 USD; EPS 3.21.",
    "SELECT id, email FROM users WHERE created_at > '2024-01-01' LIMIT 100;",
    "The function eyJson() parses input; see docs/eyJ-format.md for details.",
    "Apply -----BEGIN CERTIFICATE----- blocks only; public keys are fine.",
    "Account numbers look like ACC-0042-7781 in the ledger export.",
    "Math: 4111 + 1111 = 5222 and 2^10 = 1024; 1e-9 is tiny.",
    "Colors #FF5733 and rgb(255, 87, 51); font-size: 14px; z-index: 1000.",
    "AB12 CDE is a UK postcode-like code, AB1 2CD is another.",
    "Product AIzaBox 3000 launched; the AKIA series is discontinued.",
    "The sk-learn (scikit-learn) package version is 1.4.2.",
    "Route 66 runs 2,448 miles from Chicago to Santa Monica.",
]


@pytest.fixture
def registry() -> DetectorRegistry:
    return default_registry()


def test_positive_examples_cover_every_builtin() -> None:
    assert set(POSITIVES) == set(BUILTIN_DETECTORS)


@pytest.mark.parametrize(
    ("detector", "text", "secret"), [(d, t, s) for d, items in POSITIVES.items() for t, s in items]
)
@pytest.mark.parametrize("action", ["redact", "block", "record"])
def test_each_detector_acts_as_configured(
    registry: DetectorRegistry, detector: str, text: str, secret: str, action: str
) -> None:
    result = GuardSpec.parse(f"{detector}:{action}").bind(registry).apply({"text": text}, root="arguments")
    assert [f.detector for f in result.findings] == [detector], result.findings
    finding = result.findings[0]
    assert finding.path == "arguments.text"
    assert finding.action == action
    assert finding.length >= len(secret) or secret not in text
    assert secret not in repr(result.findings)
    assert result.blocked is (action == "block")
    if action == "record":
        assert result.value == {"text": text}
    else:
        assert secret not in result.value["text"]
        assert f"[REDACTED:{detector}]" in result.value["text"]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_has_no_findings(registry: DetectorRegistry, text: str) -> None:
    result = GuardSpec.parse("all:block").bind(registry).apply(text)
    assert result.findings == ()
    assert result.value is text
    assert not result.blocked


def test_corpus_is_large_enough() -> None:
    assert len(ORDINARY) >= 40


def test_spec_string_mapping_and_precedence(registry: DetectorRegistry) -> None:
    spec = GuardSpec.parse(" pii:redact , secrets:block,email:record ")
    assert str(spec) == "pii:redact,secrets:block,email:record"
    assert GuardSpec.parse({"pii": "redact", "secrets": "block", "email": "record"}) == spec
    guard = spec.bind(registry)
    actions = {d.name: a for d, a in guard.plan}
    assert actions["email"] == "record"
    assert actions["phone"] == "redact"
    assert actions["jwt"] == "block"
    assert GuardSpec.parse("all:record,secret:redact").bind(registry).plan[0][1] == "record"
    assert GuardSpec.parse("").bind(registry).plan == ()
    assert GuardSpec.parse(None).bind(registry).apply("a@b.com").findings == ()


@pytest.mark.parametrize("bad", ["pii", "pii:delete", ":block", "nonsense:block"])
def test_spec_errors(registry: DetectorRegistry, bad: str) -> None:
    with pytest.raises(ValueError):
        GuardSpec.parse(bad).bind(registry)


def test_policy_parse() -> None:
    policy = GuardrailPolicy.parse("pii:redact", "secrets:block", strip_ansi=True, max_result_bytes=1024)
    assert str(policy.arguments) == "pii:redact"
    assert str(policy.results) == "secrets:block"
    assert policy.strip_ansi and policy.max_result_bytes == 1024


def test_json_walk_paths_and_copy_on_write(registry: DetectorRegistry) -> None:
    result_in: dict[str, Any] = {
        "content": [
            {"type": "text", "text": "contact bob@example.com"},
            {"type": "image", "data": "QUtJQUlPU0ZPRE5ON0VYQU1QTEU=", "mimeType": "image/png"},
            {"type": "text", "text": "nothing here"},
        ],
        "structuredContent": {"rows": [{"note": "key AKIAIOSFODNN7EXAMPLE", "n": 3}], "weird key": "x@y.io"},
        "isError": False,
    }
    before = orjson.dumps(result_in)
    guard = GuardSpec.parse("pii:redact,secrets:block").bind(registry)
    out = guard.apply_result(result_in)
    assert orjson.dumps(result_in) == before  # input untouched
    assert out.blocked
    assert [(f.detector, f.path, f.action) for f in out.findings] == [
        ("email", "result.content[0].text", "redact"),
        ("aws_access_key_id", "result.structuredContent.rows[0].note", "block"),
        ("email", 'result.structuredContent["weird key"]', "redact"),
    ]
    assert out.value["content"][0]["text"] == "contact [REDACTED:email]"
    assert out.value["content"][1] is result_in["content"][1]  # unchanged parts are shared
    assert out.value["content"][2] is result_in["content"][2]
    assert out.value["structuredContent"]["rows"][0]["note"] == "key [REDACTED:aws_access_key_id]"
    assert out.value["isError"] is False


def test_secret_in_key_and_field_name(registry: DetectorRegistry) -> None:
    guard = GuardSpec.parse("all:redact").bind(registry)
    out = guard.apply_arguments({"alice@example.com": 1, "password": "pR7vK2mQ9xL4wN8z", "user": "alice"})
    assert out.value == {"[REDACTED:email]": 1, "password": "[REDACTED:secret_assignment]", "user": "alice"}
    assert "alice@example.com" not in repr(out.findings)
    assert guard.apply_arguments({"password": "correct horse battery staple"}).findings == ()
    assert guard.apply_arguments({"password_hint": "pR7vK2mQ9xL4wN8z"}).findings == ()


def test_overlapping_matches_make_one_marker(registry: DetectorRegistry) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX3ZhbHVlXzEyMw"
    out = apply(f"token: {jwt}", "all:redact", registry)
    assert jwt not in out.value
    assert out.value.count("[REDACTED:") == 1


def test_near_misses_are_not_findings(registry: DetectorRegistry) -> None:
    guard = GuardSpec.parse("all:block").bind(registry)
    for text in [
        "4111 1111 1111 1112",  # Luhn fails
        "1234 5678 9012 3456",  # no network prefix
        "DE89 3704 0044 0532 0130 01",  # mod-97 fails
        "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",  # impossible SSNs
        "BG 12 34 56 C",  # excluded NINO prefix
        "eyJub3QiOiJhIGp3dCJ9.eyJ4IjoxfQ.sig",  # header without alg
        "sk-" + "a" * 48,  # no mixed case or digits
        "+12 34",  # too few digits
        "call 555-2671",  # local number without area code
        "(123) 456-7890",  # area code cannot start with 1
    ]:
        assert guard.apply(text).findings == (), text


class ShoutDetector(Detector):
    name = "shout"
    kind = "pii"

    def find(self, text: str) -> Iterator[tuple[int, int]]:
        for match in re.finditer(r"\bSECRETWORD\b", text):
            yield match.span()


def test_pluggable_detector() -> None:
    registry = default_registry()
    registry.register(ShoutDetector())
    with pytest.raises(ValueError):
        registry.register(ShoutDetector())
    out = GuardSpec.parse("shout:redact").bind(registry).apply(["say SECRETWORD now"])
    assert out.value == ["say [REDACTED:shout] now"]
    assert [f.path for f in out.findings] == ["$[0]"]
    assert "shout" not in default_registry()  # registries are independent


def test_findings_are_capped(registry: DetectorRegistry) -> None:
    text = " ".join(f"user{i}@example.com" for i in range(1500))
    out = apply(text, "email:redact", registry)
    assert len(out.findings) == 1000
    assert out.findings_dropped == 500
    assert "@" not in out.value


def test_strip_ansi() -> None:
    dirty = {
        "content": [
            {
                "type": "text",
                "text": "\x1b[31mred\x1b[0m \x1b]0;title\x07ok\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ "
                "bell\x07 nul\x00 cr\r\nline\ttab \x9b2Jc1 \x1bPdcs\x1b\\end",
            }
        ],
        "n": 1,
    }
    clean = strip_ansi(dirty)
    assert clean["content"][0]["text"] == "red oklink bell nul cr\nline\ttab c1 end"
    same = {"a": ["plain\ttext\n", 1, None]}
    assert strip_ansi(same) is same
    assert strip_ansi("\x1b[2J\x1b[Hhidden") == "hidden"
    assert strip_ansi("unterminated \x1b]0;title") == "unterminated 0;title"


def test_cap_result() -> None:
    result = {"content": [{"type": "text", "text": "x" * 100}]}
    size = cap_result(result, 1000)
    assert size == len(orjson.dumps(result))
    with pytest.raises(ResultTooLarge) as exc:
        cap_result(result, 50)
    assert exc.value.size == size and exc.value.limit == 50
    assert "too large" in exc.value.message
    assert cap_result(b"12345", 5) == 5


def test_large_inputs_stay_linear(registry: DetectorRegistry) -> None:
    guard = GuardSpec.parse("all:redact").bind(registry)
    for text in [
        "-----BEGIN PRIVATE KEY-----" * 2000,
        "1" * 200_000,
        "a@" * 50_000,
        "+1 " * 50_000,
        "eyJ" * 50_000,
        "api_key=" * 20_000,
        "\x1b]" * 50_000,
    ]:
        guard.apply(text)
        strip_ansi(text)


def test_deep_values_are_blocked(registry: DetectorRegistry) -> None:
    value: Any = "x"
    for _ in range(300):
        value = [value]
    out = GuardSpec.parse("pii:record").bind(registry).apply(value)
    assert out.blocked
    assert out.findings[-1].detector == "max_depth"
