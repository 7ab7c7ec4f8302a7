"""Ed25519 signing keys: made by ``cas keygen``, read from a file, an environment variable or given as an object.

A key's id is the SHA-256 of its 32-byte public key, in hex: what root
documents, signatures and ``cas`` messages name it by.  Private keys are
PKCS#8 PEM files (``openssl pkey -in KEY -text`` reads them), written
0600; public keys are SubjectPublicKeyInfo PEM.  Anything with ``public``
(the 32 raw bytes) and ``sign(data) -> bytes`` signs: a key held in a
KMS or an HSM plugs in as such an object.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ..errors import InvalidInput

ENV = "CAS_SIGNING_KEY"  # one or more private keys in PEM, for CI jobs that keep keys in secrets


class Signer(Protocol):
    """What signs a trust document: a private key here, or an object in front of a KMS or an HSM."""

    @property
    def public(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def keyid(public: bytes) -> str:
    import hashlib  # not at the top: every cas command would pay its import (3 ms)

    return hashlib.sha256(public).hexdigest()


class SigningKey:
    """An Ed25519 private key held in this process."""

    def __init__(self, private: object):
        self._key = private  # cryptography's Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes, where: str = "the key") -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise InvalidInput(
                f"{where} is not an unencrypted PEM private key ({e}); make one with 'cas keygen'"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidInput(f"{where} is not an Ed25519 key; make one with 'cas keygen'")
        return cls(key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SigningKey:
        return cls.from_pem(_read(Path(path), "private key"), f"the key file {path}")

    @property
    def public(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)  # type: ignore[attr-defined]

    @property
    def keyid(self) -> str:
        return keyid(self.public)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)  # type: ignore[attr-defined]

    def private_pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        return self._key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())  # type: ignore[attr-defined]

    def __repr__(self) -> str:  # never the private bytes
        return f"SigningKey({self.keyid[:16]})"


def public_pem(public: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return Ed25519PublicKey.from_public_bytes(public).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def load_public(path: str | os.PathLike[str]) -> bytes:
    """The raw public key of a ``.pub`` file, or of a private key file (its public half)."""
    data = _read(Path(path), "key")
    if b"PRIVATE KEY" in data:
        return SigningKey.from_pem(data, f"the key file {path}").public
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"the key file {path} is not a PEM public key; 'cas keygen' writes one as KEY.pub") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"the key file {path} is not an Ed25519 key; make one with 'cas keygen'")
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def from_environment() -> list[SigningKey]:
    """The private keys in ``$CAS_SIGNING_KEY`` (PEM blocks, one after the other); none when it is unset."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return []
    end = "-----END PRIVATE KEY-----"
    blocks = [b.strip() + "\n" + end for b in text.split(end) if b.strip()]
    return [SigningKey.from_pem(b.encode(), f"${ENV}") for b in blocks]


def generate(path: str | os.PathLike[str]) -> SigningKey:
    """Write a new key to ``path`` (0600, never over an existing file) and its public half to ``path.pub``."""
    dest = Path(path)
    key = SigningKey.generate()
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{dest} exists; a key is never overwritten: choose another path") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_pem())
    Path(f"{dest}.pub").write_bytes(public_pem(key.public))
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > 64 << 10:
            raise InvalidInput(f"{path} is too large to be a {what} file")
        return path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"cannot read the {what} file {path}: {e.strerror}") from None
