"""The cluster certificate one node serves its HTTPS API with, and the fingerprints it pins
when it calls the other members, while a rotation rolls a new certificate out.

Files under `<data-dir>/tls/`:
* `cert.pem` (0644), `key.pem` (0600): the certificate served and its key;
* `next-cert.pem`, `next-key.pem`: the new pair, from the accept step until the switch;
* `pins`: the fingerprints pinned besides the served one, one per line; absent when none.

A rotation (`symphonyd cluster rotate-certificate`, see `rotation.py`) moves every member
through three steps, each safe to repeat and to survive a restart: `accept(pair)` (pin the
new fingerprint too, keep the pair aside), `switch(fingerprint)` (serve the new pair; the
old fingerprint stays pinned, as members that have not switched still serve it),
`retire(fingerprint)` (pin the new one only). At every moment each member serves a
certificate every other member pins, so node-to-node calls never fail for it.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from symphonyd.durable import write_file_durably
from symphonyd.errors import Conflict, Invalid
from symphonyd.security import fingerprint_pem

MAX_PEM = 16 * 1024


def fingerprint_of(cert: object) -> str:
    """The fingerprint of a request's PEM certificate."""
    if not isinstance(cert, str) or len(cert) > MAX_PEM:
        raise Invalid("'certificate' must be PEM text")
    try:
        return fingerprint_pem(cert.encode())
    except ValueError as exc:
        raise Invalid(f"not a PEM certificate: {exc}") from None


@dataclass(frozen=True)
class CertificatePair:
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def parse(cls, cert: object, key: object) -> CertificatePair:
        """A pair from a request's text fields: both PEM, and the key the certificate's."""
        if not isinstance(cert, str) or not isinstance(key, str):
            raise Invalid("'certificate' and 'key' must be PEM text")
        if len(cert) > MAX_PEM or len(key) > MAX_PEM:
            raise Invalid(f"a certificate or key is at most {MAX_PEM} bytes of PEM")
        try:
            public = x509.load_pem_x509_certificate(cert.encode()).public_key()
            private = serialization.load_pem_private_key(key.encode(), password=None)
        except ValueError as exc:
            raise Invalid(f"not a PEM certificate and unencrypted key: {exc}") from None
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if public.public_bytes(*raw) != private.public_key().public_bytes(*raw):
            raise Invalid("the key is not the certificate's")
        return cls(cert.encode(), key.encode())

    @property
    def fingerprint(self) -> str:
        return fingerprint_pem(self.cert_pem)


class CertificateFiles:
    """The `tls/` directory of one node's data dir."""

    def __init__(self, data_dir: str) -> None:
        self.dir = os.path.join(data_dir, "tls")

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def served(self) -> str:
        """The fingerprint of the certificate served."""
        with open(self.path("cert.pem"), "rb") as f:
            return fingerprint_pem(f.read())

    def pins(self) -> list[str]:
        """Every fingerprint pinned: the served one first."""
        try:
            with open(self.path("pins")) as f:
                extra = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            extra = []
        served = self.served()
        return [served, *(p for p in extra if p != served)]

    def load_into(self, context: ssl.SSLContext) -> None:
        """Make `context` serve the current pair (handshakes after this use it)."""
        context.load_cert_chain(self.path("cert.pem"), self.path("key.pem"))

    # -- the roll ------------------------------------------------------------------------

    def accept(self, pair: CertificatePair) -> None:
        new = pair.fingerprint
        if new == self.served():
            return
        # the certificate first: a lone next-key.pem means a switch half-done (recover)
        write_file_durably(self.path("next-cert.pem"), pair.cert_pem, mode=0o644)
        write_file_durably(self.path("next-key.pem"), pair.key_pem)
        self._write_pins([p for p in self.pins()[1:] if p != new] + [new])

    def switch(self, new: str) -> None:
        old = self.served()
        if new == old:
            return
        try:
            with open(self.path("next-cert.pem"), "rb") as f:
                staged = fingerprint_pem(f.read())
        except FileNotFoundError:
            staged = None
        if staged != new or not os.path.exists(self.path("next-key.pem")):
            raise Conflict("this node does not hold the new certificate: accept it first")
        self._write_pins([old])  # first: a crash after it still pins both
        os.replace(self.path("next-cert.pem"), self.path("cert.pem"))
        self.recover()

    def recover(self) -> None:
        """Finish a switch a crash cut between its two renames (the certificate is moved
        first: a lone `next-key.pem` is the served certificate's key)."""
        if os.path.exists(self.path("next-key.pem")) and not os.path.exists(
            self.path("next-cert.pem")
        ):
            os.replace(self.path("next-key.pem"), self.path("key.pem"))

    def retire(self, new: str) -> None:
        if new != self.served():
            raise Conflict("this node does not serve the new certificate yet: switch first")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path("pins"))

    def _write_pins(self, extra: list[str]) -> None:
        write_file_durably(self.path("pins"), "".join(f"{p}\n" for p in extra).encode(), 0o644)
