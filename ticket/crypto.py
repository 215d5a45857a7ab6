"""Every cryptographic primitive ticketfleet uses, behind small bytes-in/bytes-out functions.

This is the only module that imports `cryptography.hazmat`. Keys travel as PEM bytes, messages
and signatures as bytes; callers never hold key objects, so they cannot mix up key kinds or
forget a check. Every verification failure raises the same opaque `IntegrityError`.
"""

import hashlib

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ticket.errors import IntegrityError, TicketError

KEY_ID_HEX_CHARS = 16
SIGNATURE_BYTES = 64


class KeyFormatError(TicketError):
    """A key file is not the kind of key the operation needs (e.g. not an Ed25519 PEM key)."""


# ---------------------------------------------------------------- Ed25519 signatures


def generate_signing_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair: (private PEM, PKCS#8 unencrypted; public PEM, SPKI)."""
    private = Ed25519PrivateKey.generate()
    return _private_pem(private), _public_pem(private.public_key())


def generate_node_auth_key(comment: str) -> tuple[bytes, str]:
    """A Flower SuperNode authentication key: ECDSA P-384, as (OpenSSH private key bytes,
    OpenSSH public key line), the format `flower-supernode --auth-supernode-private-key` reads."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,  # OpenSSH's own armour ("BEGIN OPENSSH PRIVATE KEY")
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),  # the node starts unattended: no one to type a passphrase
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode("ascii")
    return private, f"{line} {comment}" if comment else line


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """Parse an Ed25519 private key; every other input raises `KeyFormatError`."""
    if b"PUBLIC KEY-----" in pem:
        raise KeyFormatError("this is a public key; signing needs the private key (.key file)")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as error:  # raised for encrypted keys when no password is given
        raise KeyFormatError("password-protected private keys are not supported") from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise KeyFormatError("not a PEM-encoded private key") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"expected an Ed25519 private key, got {_kind(key)}")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Parse an Ed25519 public key; every other input raises `KeyFormatError`."""
    if b"PRIVATE KEY-----" in pem:
        # Most likely the .key file was passed where the .pub was meant; never echo it.
        raise KeyFormatError("this is a private key; pass the public key (.pub file) instead")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise KeyFormatError("not a PEM-encoded public key") from error
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"expected an Ed25519 public key, got {_kind(key)}")
    return key


def public_key_of(private_pem: bytes) -> bytes:
    """The public PEM that belongs to `private_pem`."""
    return _public_pem(load_private_key(private_pem).public_key())


def key_id(public_pem: bytes) -> str:
    """A short, stable name for a public key: hex SHA-256 of its raw 32 bytes, first 16 chars."""
    raw = load_public_key(public_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_CHARS]


def sign(private_pem: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of `message`; deterministic for a given key and message."""
    return load_private_key(private_pem).sign(message)


def verify(public_pem: bytes, message: bytes, signature: bytes) -> None:
    """Return if `signature` is `public_pem`'s signature of `message`, else raise IntegrityError.

    A malformed *key* raises `KeyFormatError` instead: that is the caller's configuration,
    not the data under test.
    """
    key = load_public_key(public_pem)
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise IntegrityError("signature does not verify") from None


# ---------------------------------------------------------------- helpers


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _kind(key: object) -> str:
    # "RSAPrivateKey" -> "a key of type RSA": enough to tell the user what they passed.
    name = type(key).__name__.removeprefix("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return f"a key of type {name or type(key).__name__}"
