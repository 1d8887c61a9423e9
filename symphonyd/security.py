"""Secrets, the cluster certificate, API tokens and join tokens.

* cluster secret: 32 random bytes (url-safe text); the Raft port's encryption key and the
  key of sealed values. Lives in `<data-dir>/secret` (0600), never in the replicated store.
* node credentials: `node.<name>.<secret>`, made by each node when it joins (or at init)
  and kept in `<data-dir>/credential` (0600); the store keeps SHA-256(secret) in the
  node's row, so removing the row (leave, `node remove`) revokes it.
* cluster certificate: one self-signed ECDSA certificate shared by every member's HTTPS
  API; clients pin its SHA-256 fingerprint (carried by join tokens).
* API tokens: `<id>.<secret>`; the store keeps only SHA-256(secret).
* sealed values: a lifecycle's secrets (passwords) are kept in the replicated store only
  as `sealed:v1:<Fernet token>` under a key derived from the cluster secret.
* join tokens: `sy1.<base64url(json)>` carrying the cluster id, the members' API
  addresses, the token id and secret, and the certificate fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from symphonyd.errors import Invalid

JOIN_TOKEN_PREFIX = "sy1."


def new_id() -> str:
    return uuid.uuid4().hex


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def now_rfc3339(now: dt.datetime | None = None) -> str:
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: object) -> dt.datetime | None:
    """A time as `now_rfc3339` writes it (None for a missing or unreadable one)."""
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


# -- API tokens ---------------------------------------------------------------------------


def new_api_token() -> tuple[str, str, str]:
    """(token id, token text to hand out once, sha256 of its secret to store)."""
    token_id = new_id()
    secret = secrets.token_urlsafe(32)
    return token_id, f"{token_id}.{secret}", sha256_hex(secret)


def split_api_token(token: str) -> tuple[str, str] | None:
    token_id, sep, secret = token.partition(".")
    if not sep or not token_id or not secret:
        return None
    return token_id, secret


def secret_matches(secret: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(sha256_hex(secret), stored_sha256)


# What an API token may do, each including the ones before it: `reader` reads everything
# (GET) and changes nothing, `operator` also changes resources (images, volumes,
# instances, services, lifecycles, deployments, KV), `admin` also tokens, membership and
# cluster settings. The local control socket is admin.
SCOPES = ("reader", "operator", "admin")


def allows(scope: str, needed: str) -> bool:
    """Whether `scope` covers `needed` (an unknown scope covers nothing)."""
    return scope in SCOPES and SCOPES.index(scope) >= SCOPES.index(needed)


NODE_CREDENTIAL_PREFIX = "node."


def new_node_credential(name: str) -> tuple[str, str]:
    """(credential text the node keeps, sha256 of its secret for the node's row)."""
    secret = secrets.token_urlsafe(32)
    return f"{NODE_CREDENTIAL_PREFIX}{name}.{secret}", sha256_hex(secret)


def split_node_credential(text: str) -> tuple[str, str] | None:
    """(node name, secret) of a node credential; None for anything else."""
    if not text.startswith(NODE_CREDENTIAL_PREFIX):
        return None
    name, sep, secret = text[len(NODE_CREDENTIAL_PREFIX) :].rpartition(".")
    if not sep or not name or not secret:
        return None
    return name, secret


def credential_sha256(text: str) -> str:
    """What a node's row keeps of its credential (see `split_node_credential`)."""
    parts = split_node_credential(text)
    if parts is None:
        raise Invalid("not a node credential")
    return sha256_hex(parts[1])


@functools.lru_cache(maxsize=4)
def shared_node_credential(cluster_secret: str) -> str:
    """The credential every member derived from the cluster secret before nodes had their
    own. Accepted only while a member without its own credential remains:
    a node that left still knows the secret, so it must not stay a way in."""
    digest = hmac.new(cluster_secret.encode(), b"symphonyd node api", hashlib.sha256)
    return "node." + digest.hexdigest()


SEALED_PREFIX = "sealed:v1:"


def _sealing_key(cluster_secret: str) -> Fernet:
    digest = hmac.new(cluster_secret.encode(), b"symphonyd sealed values", hashlib.sha256)
    return Fernet(base64.urlsafe_b64encode(digest.digest()))


def seal(cluster_secret: str, text: str) -> str:
    """Encrypt and authenticate `text` with the cluster secret."""
    return SEALED_PREFIX + _sealing_key(cluster_secret).encrypt(text.encode()).decode()


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


def unseal(cluster_secret: str, sealed: str) -> str:
    """The text `seal` was given; Invalid if it was not sealed by this cluster's secret."""
    if not is_sealed(sealed):
        raise Invalid("not a sealed value")
    try:
        plain = _sealing_key(cluster_secret).decrypt(sealed[len(SEALED_PREFIX) :].encode())
    except InvalidToken:
        raise Invalid("a sealed value does not open with this cluster's secret") from None
    return plain.decode()


# -- cluster certificate ------------------------------------------------------------------


def make_certificate(cluster_id: str) -> tuple[bytes, bytes]:
    """A self-signed certificate and key (PEM) for the cluster's HTTPS API."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "symphonyd"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"symphonyd cluster {cluster_id[:12]}"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("symphonyd")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def fingerprint_pem(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def fingerprint_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


# -- join tokens -----------------------------------------------------------------------


@dataclass(frozen=True)
class JoinToken:
    cluster_id: str
    addresses: list[str]  # "host:port" of members' HTTPS APIs
    token_id: str
    secret: str
    fingerprint: str

    def encode(self) -> str:
        payload = {
            "c": self.cluster_id,
            "a": self.addresses,
            "i": self.token_id,
            "s": self.secret,
            "f": self.fingerprint,
        }
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return JOIN_TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_join_token(text: Any) -> JoinToken:
    if not isinstance(text, str) or not text.strip().startswith(JOIN_TOKEN_PREFIX):
        raise Invalid("not a symphonyd join token (it starts with 'sy1.')")
    body = text.strip()[len(JOIN_TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(raw)
        token = JoinToken(
            cluster_id=str(data["c"]),
            addresses=[str(a) for a in data["a"]],
            token_id=str(data["i"]),
            secret=str(data["s"]),
            fingerprint=str(data["f"]),
        )
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise Invalid("join token is damaged (copy it again, whole)") from exc
    if not isinstance(data.get("a"), list) or not token.addresses:
        raise Invalid("join token carries no member address")
    return token
