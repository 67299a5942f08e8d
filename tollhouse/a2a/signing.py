"""JWS signatures on A2A agent cards (A2A 1.0 §8.4): verify against a JWKS; sign for tests and examples."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from typing import Any

import rfc8785
from a2a.client.card_resolver import parse_agent_card
from google.protobuf.json_format import MessageToDict
from joserfc.errors import JoseError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry

__all__ = ["ALLOWED_ALGORITHMS", "SignatureError", "sign_card", "verify_card_signatures"]

JSONObject = dict[str, Any]

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_SHORT_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,32}")


class SignatureError(ValueError):
    """The card's signatures do not verify (message says why, never key material)."""


def verify_card_signatures(document: JSONObject, keys: JSONObject) -> str:
    """Verify an A2A agent card's JWS signatures against the JWKS `keys` ({"keys": [...]}).

    Each entry of `signatures` is `{protected, signature, header?}`: a JWS with a detached payload, the
    RFC 8785 canonical JSON of the card without `signatures`. Returns the `kid` of the first signature that
    verifies. Raises SignatureError when there are no signatures, no key matches the protected header's kid
    (or, without a kid, none verifies), the algorithm is not an allowed asymmetric one, or no signature
    verifies.
    """
    if not isinstance(document, dict):
        raise SignatureError("the card is not a JSON object")
    signatures = document.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise SignatureError("the card has no signatures")
    jwks = _import_keys(keys)
    payloads = _payloads(document)

    reasons: list[str] = []
    for entry in signatures:
        try:
            return _verify_one(entry, jwks, payloads)
        except SignatureError as exc:
            reasons.append(str(exc))
    unique = list(dict.fromkeys(reasons))
    if len(unique) == 1:
        raise SignatureError(unique[0])
    raise SignatureError("no signature verifies: " + "; ".join(unique))


def sign_card(document: JSONObject, private_jwk: JSONObject, *, alg: str, kid: str) -> JSONObject:
    """The card with one signature appended (for tests and example agents).

    The protected header is {"alg", "kid", "typ": "JOSE"}; the detached payload is the RFC 8785 canonical JSON
    of the card without `signatures`.
    """
    if alg not in ALLOWED_ALGORITHMS:
        raise ValueError(f"alg must be one of {sorted(ALLOWED_ALGORITHMS)}")
    existing = document.get("signatures", [])
    if not isinstance(existing, list):
        raise ValueError("the card's 'signatures' must be a list")
    try:
        key = JWKRegistry.import_key(private_jwk)
        model = _algorithm(alg)
        model.check_key(key)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"the key cannot sign with {alg}: {type(exc).__name__}") from None
    if not key.is_private:
        raise ValueError("private_jwk must hold a private key")

    header = json.dumps({"alg": alg, "kid": kid, "typ": "JOSE"}, separators=(",", ":"))
    protected = _b64url_encode(header.encode("utf-8"))
    signing_input = f"{protected}.{_b64url_encode(_canonical(document))}".encode("ascii")
    signature = _b64url_encode(model.sign(signing_input, key))

    signed = copy.deepcopy(document)
    signed["signatures"] = [*copy.deepcopy(existing), {"protected": protected, "signature": signature}]
    return signed


def _verify_one(entry: Any, jwks: list[Key], payloads: list[bytes]) -> str:
    if not isinstance(entry, dict):
        raise SignatureError("a signature entry is not an object")
    protected, signature = entry.get("protected"), entry.get("signature")
    if not isinstance(protected, str) or not isinstance(signature, str):
        raise SignatureError("a signature entry lacks 'protected' or 'signature'")
    try:
        header = json.loads(_b64url_decode(protected))
        signature_bytes = _b64url_decode(signature)
    except (ValueError, UnicodeDecodeError):
        raise SignatureError("a signature entry is not valid base64url JSON") from None
    if not isinstance(header, dict):
        raise SignatureError("a protected header is not a JSON object")

    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        shown = f" {alg!r}" if isinstance(alg, str) and _SHORT_NAME.fullmatch(alg) else ""
        raise SignatureError(f"signature algorithm{shown} is not allowed")
    # No JWS extension is understood here, so any critical one must fail (RFC 7515 §4.1.11); that includes
    # RFC 7797 unencoded payloads, which would change what is signed.
    if "crit" in header or "b64" in header:
        raise SignatureError("a protected header names an unsupported JWS extension")

    kid = header.get("kid")
    unprotected = entry.get("header")
    if kid is None and isinstance(unprotected, dict):
        # The kid only picks a key; the signature still has to verify with it.
        kid = unprotected.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise SignatureError("a signature's 'kid' is not a string")
    candidates = [key for key in jwks if kid is None or key.kid == kid]
    if not candidates:
        raise SignatureError("no key in the JWKS matches the signature's kid")

    model = _algorithm(alg)
    signing_inputs = [f"{protected}.{_b64url_encode(payload)}".encode("ascii") for payload in payloads]
    usable = False
    for key in candidates:
        try:
            model.check_key(key)
        except JoseError:
            continue
        usable = True
        for signing_input in signing_inputs:
            try:
                if model.verify(signing_input, signature_bytes, key):
                    return kid if kid is not None else key.kid or ""
            except (JoseError, ValueError, TypeError):
                continue
    if not usable:
        raise SignatureError(f"no key in the JWKS can verify {alg}")
    raise SignatureError("signature does not verify")


def _import_keys(keys: JSONObject) -> list[Key]:
    if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
        raise SignatureError("the keys are not a JWKS ({'keys': [...]})")
    imported: list[Key] = []
    for item in keys["keys"]:
        # Symmetric keys are skipped outright: a card signature must be verifiable by anyone.
        if not isinstance(item, dict) or item.get("kty") == "oct":
            continue
        try:
            imported.append(JWKRegistry.import_key(item))
        except (JoseError, ValueError, TypeError):
            continue
    if not imported:
        raise SignatureError("the JWKS holds no usable public keys")
    return imported


def _payloads(document: JSONObject) -> list[bytes]:
    """The byte strings a signature on this card may cover, the A2A rule first."""
    try:
        payloads = [_canonical(document)]
    except (rfc8785.CanonicalizationError, RecursionError):
        raise SignatureError("the card cannot be canonicalized") from None
    sdk_payload = _sdk_payload(document)
    if sdk_payload is not None and sdk_payload not in payloads:
        payloads.append(sdk_payload)
    return payloads


def _canonical(document: JSONObject) -> bytes:
    return rfc8785.dumps({key: value for key, value in document.items() if key != "signatures"})


def _sdk_payload(document: JSONObject) -> bytes | None:
    """What a2a-sdk signs: its parsed 1.0 card re-serialized, empty values dropped.

    The SDK serves a card with 0.3 compatibility fields (`url`, `preferredTransport`, ...) that its signer
    never covered, so an SDK-signed card only verifies against this form. It covers every 1.0 card field.
    """
    try:
        card_dict = MessageToDict(parse_agent_card(copy.deepcopy(document)))
        card_dict.pop("signatures", None)
        return rfc8785.dumps(_drop_empty(card_dict))
    except Exception:  # an unparsable card simply has no SDK form
        return None


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {key: item for key, raw in value.items() if (item := _drop_empty(raw)) is not None}
        return cleaned or None
    if isinstance(value, list):
        items = [item for raw in value if (item := _drop_empty(raw)) is not None]
        return items or None
    if isinstance(value, str) and not value:
        return None
    return value


def _algorithm(alg: str) -> JWSAlgModel:
    # Straight from the registry: going through JWSRegistry.get_alg would emit joserfc's EdDSA deprecation
    # warning on every verification.
    return JWSRegistry.algorithms[alg]


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: str) -> bytes:
    if not _B64URL.fullmatch(value):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
