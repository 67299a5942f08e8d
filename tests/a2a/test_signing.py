"""Agent card JWS signatures (tollhouse.a2a.signing)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from typing import Any

import pytest
import rfc8785
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from google.protobuf.json_format import MessageToDict
from joserfc import jws
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from tollhouse.a2a.signing import SignatureError, sign_card, verify_card_signatures


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def proto_card() -> AgentCard:
    return AgentCard(
        name="Researcher",
        description="Finds things out — ünïcode included.",
        version="2.1.0",
        supported_interfaces=[
            AgentInterface(
                url="https://agent.example/a2a", protocol_binding="JSONRPC", protocol_version="1.0"
            ),
            AgentInterface(
                url="https://agent.example/a2a/v03", protocol_binding="JSONRPC", protocol_version="0.3"
            ),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="search", name="Search", description="Search", tags=["web"])],
    )


def v1_card() -> dict[str, Any]:
    return agent_card_to_dict(proto_card())


def v03_card() -> dict[str, Any]:
    return {
        "name": "Legacy",
        "description": "A 0.3 agent",
        "version": "1",
        "protocolVersion": "0.3.0",
        "url": "https://legacy.example/a2a",
        "preferredTransport": "JSONRPC",
        "capabilities": {"streaming": False},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "s", "name": "S", "description": "s", "tags": []}],
    }


def public_jwks(*keys: tuple[Key, str]) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False, kid=kid) for key, kid in keys]}


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True)


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, private=True)


@pytest.fixture(scope="module")
def ed_key() -> OKPKey:
    return OKPKey.generate_key("Ed25519", private=True)


@pytest.mark.parametrize(
    ("key_name", "alg"),
    [("ec_key", "ES256"), ("rsa_key", "RS256"), ("rsa_key", "PS384"), ("ed_key", "EdDSA")],
)
@pytest.mark.parametrize("make_card", [v1_card, v03_card], ids=["1.0", "0.3"])
def test_sign_and_verify(request: pytest.FixtureRequest, key_name: str, alg: str, make_card: Any) -> None:
    key: Key = request.getfixturevalue(key_name)
    card = make_card()

    signed = sign_card(card, key.as_dict(private=True), alg=alg, kid="card-key")

    assert {k: v for k, v in signed.items() if k != "signatures"} == card
    assert "signatures" not in card
    (entry,) = signed["signatures"]
    header = json.loads(base64.urlsafe_b64decode(entry["protected"] + "=="))
    assert header == {"alg": alg, "kid": "card-key", "typ": "JOSE"}
    assert verify_card_signatures(signed, public_jwks((key, "card-key"))) == "card-key"


def test_signature_is_a_standard_detached_jws(ec_key: ECKey) -> None:
    card = v1_card()
    signed = sign_card(card, ec_key.as_dict(private=True), alg="ES256", kid="k1")
    entry = signed["signatures"][0]

    # An independent JOSE implementation verifies it over the RFC 8785 form of the card.
    compact = f"{entry['protected']}..{entry['signature']}"
    public = ECKey.import_key(ec_key.as_dict(private=False))
    jws.deserialize_compact(compact, public, algorithms=["ES256"], payload=rfc8785.dumps(card))


def test_verify_picks_the_key_by_kid(ec_key: ECKey, rsa_key: RSAKey) -> None:
    signed = sign_card(v1_card(), rsa_key.as_dict(private=True), alg="RS256", kid="rsa")
    assert verify_card_signatures(signed, public_jwks((ec_key, "ec"), (rsa_key, "rsa"))) == "rsa"


def test_second_signature_can_verify(ec_key: ECKey, rsa_key: RSAKey) -> None:
    signed = sign_card(v1_card(), rsa_key.as_dict(private=True), alg="RS256", kid="old")
    signed = sign_card(signed, ec_key.as_dict(private=True), alg="ES256", kid="new")
    assert len(signed["signatures"]) == 2
    assert verify_card_signatures(signed, public_jwks((ec_key, "new"))) == "new"


def test_without_kid_every_key_is_tried(ec_key: ECKey, rsa_key: RSAKey) -> None:
    card = v1_card()
    compact = jws.serialize_compact({"alg": "ES256"}, rfc8785.dumps(card), ec_key, algorithms=["ES256"])
    protected, _, signature = compact.split(".")
    signed = {**card, "signatures": [{"protected": protected, "signature": signature}]}

    assert verify_card_signatures(signed, public_jwks((rsa_key, "rsa"), (ec_key, "ec"))) == "ec"
    with pytest.raises(SignatureError):
        verify_card_signatures(signed, public_jwks((rsa_key, "rsa"), (ECKey.generate_key("P-256"), "other")))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda card: card.update(description="Something else"),
        lambda card: card["skills"].append({"id": "admin", "name": "Admin", "description": "x", "tags": []}),
        lambda card: card.update(url="https://evil.example/a2a"),
        lambda card: card.update(extra="field"),
    ],
    ids=["description", "skills", "compat-url", "added-field"],
)
def test_tampered_card_fails(ec_key: ECKey, tamper: Any) -> None:
    signed = sign_card(v1_card(), ec_key.as_dict(private=True), alg="ES256", kid="k1")
    tamper(signed)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_card_signatures(signed, public_jwks((ec_key, "k1")))


def test_wrong_key_fails(ec_key: ECKey) -> None:
    signed = sign_card(v1_card(), ec_key.as_dict(private=True), alg="ES256", kid="k1")
    other = ECKey.generate_key("P-256", private=True)

    with pytest.raises(SignatureError, match="does not verify"):
        verify_card_signatures(signed, public_jwks((other, "k1")))
    with pytest.raises(SignatureError, match="no key in the JWKS matches"):
        verify_card_signatures(signed, public_jwks((ec_key, "k2")))


def test_key_of_the_wrong_type_fails(ec_key: ECKey, rsa_key: RSAKey) -> None:
    signed = sign_card(v1_card(), ec_key.as_dict(private=True), alg="ES256", kid="k1")
    with pytest.raises(SignatureError, match="can verify ES256"):
        verify_card_signatures(signed, public_jwks((rsa_key, "k1")))


def test_alg_none_is_refused(ec_key: ECKey) -> None:
    card = v1_card()
    protected = b64url(json.dumps({"alg": "none", "kid": "k1"}).encode())
    forged = {**card, "signatures": [{"protected": protected, "signature": ""}]}
    with pytest.raises(SignatureError, match="'none' is not allowed"):
        verify_card_signatures(forged, public_jwks((ec_key, "k1")))


def test_hmac_with_the_public_key_is_refused(rsa_key: RSAKey) -> None:
    card = v1_card()
    public = rsa_key.as_dict(private=False, kid="k1")
    protected = b64url(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    signing_input = f"{protected}.{b64url(rfc8785.dumps(card))}".encode()
    for secret in (json.dumps(public).encode(), rsa_key.as_pem(private=False)):
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        forged = {**card, "signatures": [{"protected": protected, "signature": b64url(mac)}]}
        with pytest.raises(SignatureError, match="'HS256' is not allowed"):
            verify_card_signatures(
                forged, {"keys": [public, {"kty": "oct", "k": b64url(secret), "kid": "k1"}]}
            )


def test_critical_extensions_are_refused(ec_key: ECKey) -> None:
    card = v1_card()
    header = {"alg": "ES256", "kid": "k1", "b64": False, "crit": ["b64"]}
    compact = jws.serialize_compact(header, rfc8785.dumps(card), ec_key, algorithms=["ES256"])
    protected, _, signature = compact.split(".")
    signed = {**card, "signatures": [{"protected": protected, "signature": signature}]}
    with pytest.raises(SignatureError, match="unsupported JWS extension"):
        verify_card_signatures(signed, public_jwks((ec_key, "k1")))


@pytest.mark.parametrize("signatures", [None, [], "x"], ids=["missing", "empty", "garbage"])
def test_no_signatures(ec_key: ECKey, signatures: Any) -> None:
    card = v1_card()
    if signatures is not None:
        card["signatures"] = signatures
    with pytest.raises(SignatureError, match="no signatures"):
        verify_card_signatures(card, public_jwks((ec_key, "k1")))


@pytest.mark.parametrize(
    "entry",
    [
        "not-an-object",
        {"protected": "eyJhbGciOiJFUzI1NiJ9"},
        {"protected": "!!!", "signature": "AAAA"},
        {"protected": b64url(b"[1]"), "signature": "AAAA"},
        {"protected": b64url(b'{"alg": "ES256", "kid": 5}'), "signature": "AAAA"},
    ],
)
def test_malformed_signature_entries(ec_key: ECKey, entry: Any) -> None:
    card = {**v1_card(), "signatures": [entry]}
    with pytest.raises(SignatureError):
        verify_card_signatures(card, public_jwks((ec_key, "k1")))


def test_failure_reasons_are_reported_without_key_material(ec_key: ECKey) -> None:
    signed = sign_card(v1_card(), ec_key.as_dict(private=True), alg="ES256", kid="k1")
    signed["signatures"].insert(0, {"protected": b64url(b'{"alg":"none"}'), "signature": ""})
    signed["description"] = "tampered"
    jwks = public_jwks((ec_key, "k1"))

    with pytest.raises(SignatureError) as caught:
        verify_card_signatures(signed, jwks)
    message = str(caught.value)
    assert "not allowed" in message and "does not verify" in message
    assert jwks["keys"][0]["x"] not in message


@pytest.mark.parametrize(
    "keys", [{}, {"keys": "x"}, {"keys": []}, {"keys": [{"kty": "oct", "k": "AAAA"}, 5]}]
)
def test_unusable_jwks(ec_key: ECKey, keys: Any) -> None:
    signed = sign_card(v1_card(), ec_key.as_dict(private=True), alg="ES256", kid="k1")
    with pytest.raises(SignatureError):
        verify_card_signatures(signed, keys)


def test_sign_card_refuses_bad_input(ec_key: ECKey) -> None:
    with pytest.raises(ValueError, match="alg must be one of"):
        sign_card(v1_card(), ec_key.as_dict(private=True), alg="HS256", kid="k1")
    with pytest.raises(ValueError, match="private key"):
        sign_card(v1_card(), ec_key.as_dict(private=False), alg="ES256", kid="k1")
    with pytest.raises(ValueError, match="cannot sign with RS256"):
        sign_card(v1_card(), ec_key.as_dict(private=True), alg="RS256", kid="k1")


def test_verifies_a_card_signed_and_served_by_the_sdk(ec_key: ECKey) -> None:
    pytest.importorskip("jwt")
    from a2a.utils.signing import create_agent_card_signer
    from jwt.api_jwk import PyJWK

    signer = create_agent_card_signer(
        PyJWK(ec_key.as_dict(private=True), algorithm="ES256"),
        {"alg": "ES256", "kid": "sdk-key", "jku": None, "typ": "JOSE"},
    )
    served = agent_card_to_dict(signer(proto_card()))

    # The served JSON carries 0.3 fields (url, preferredTransport, ...) the SDK's signature does not cover.
    assert "url" in served
    assert verify_card_signatures(served, public_jwks((ec_key, "sdk-key"))) == "sdk-key"
    served["skills"][0]["description"] = "tampered"
    with pytest.raises(SignatureError):
        verify_card_signatures(served, public_jwks((ec_key, "sdk-key")))


def test_sdk_verifies_a_card_signed_here(ec_key: ECKey) -> None:
    pytest.importorskip("jwt")
    from a2a.client.card_resolver import parse_agent_card
    from a2a.utils.signing import create_signature_verifier
    from jwt.api_jwk import PyJWK

    card = MessageToDict(proto_card())
    signed = sign_card(card, ec_key.as_dict(private=True), alg="ES256", kid="k1")
    public = PyJWK(ec_key.as_dict(private=False), algorithm="ES256")
    verifier = create_signature_verifier(lambda kid, jku: public, ["ES256"])

    verifier(parse_agent_card(copy.deepcopy(signed)))
