"""Ed25519 keys, signatures and key ids: round trips, every failure, and clear key errors."""

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from ticket import crypto
from ticket.errors import IntegrityError, TicketError

GOLDEN = Path(__file__).parent / "golden"

# Throwaway keys of the wrong kinds, made once with `cryptography` and pasted here so the
# tests need no hazmat import.
EC_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAERtBkyp0C1HrFdbeiGT+q8JtUAE+a
GO4fh/+8u5Zlv5LS4mN08FKDNWWGP4bGaswWCfaJK85nMIt6K0TV+TP61Q==
-----END PUBLIC KEY-----
"""
EC_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqJdhhyrOk+cIqHys
YdkIPCo8JSZGwGabxl2g+amAz0qhRANCAARG0GTKnQLUesV1t6IZP6rwm1QAT5oY
7h+H/7y7lmW/ktLiY3TwUoM1ZYY/hsZqzBYJ9okrzmcwi3orRNX5M/rV
-----END PRIVATE KEY-----
"""
ENCRYPTED_ED25519_PEM = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
MIGjMF8GCSqGSIb3DQEFDTBSMDEGCSqGSIb3DQEFDDAkBBANt7ytYXMh8TboeOud
KgVdAgIIADAMBggqhkiG9w0CCQUAMB0GCWCGSAFlAwQBKgQQxvD7x2AQsCdnuwFA
J3lH/ARAEvpcAntBgYkqfdTQWtSTQQ2RYF/ftMgHnU2PsTMe27gdSqT/+l6ldh7E
ZjOFd+Ph1bhFrAU56dx+Li2Cr1N3eA==
-----END ENCRYPTED PRIVATE KEY-----
"""


@pytest.fixture(scope="module")
def key_pair() -> tuple[bytes, bytes]:
    return crypto.generate_signing_key()


def test_generated_keys_are_pem_pkcs8_and_spki(key_pair: tuple[bytes, bytes]) -> None:
    private_pem, public_pem = key_pair

    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert crypto.public_key_of(private_pem) == public_pem


def test_generated_keys_differ() -> None:
    assert crypto.generate_signing_key()[0] != crypto.generate_signing_key()[0]


def test_sign_then_verify(key_pair: tuple[bytes, bytes]) -> None:
    private_pem, public_pem = key_pair

    signature = crypto.sign(private_pem, b"message")

    assert len(signature) == crypto.SIGNATURE_BYTES
    crypto.verify(public_pem, b"message", signature)  # returns, no exception


def test_signatures_are_deterministic(key_pair: tuple[bytes, bytes]) -> None:
    private_pem, _ = key_pair
    assert crypto.sign(private_pem, b"m") == crypto.sign(private_pem, b"m")


def test_verify_refuses_another_message(key_pair: tuple[bytes, bytes]) -> None:
    private_pem, public_pem = key_pair
    signature = crypto.sign(private_pem, b"message")

    with pytest.raises(IntegrityError):
        crypto.verify(public_pem, b"messagE", signature)


def test_verify_refuses_another_key(key_pair: tuple[bytes, bytes]) -> None:
    private_pem, _ = key_pair
    _, other_public = crypto.generate_signing_key()
    signature = crypto.sign(private_pem, b"message")

    with pytest.raises(IntegrityError):
        crypto.verify(other_public, b"message", signature)


@pytest.mark.parametrize("position", [0, 31, 32, 63])
def test_verify_refuses_a_flipped_signature_bit(
    key_pair: tuple[bytes, bytes], position: int
) -> None:
    private_pem, public_pem = key_pair
    signature = bytearray(crypto.sign(private_pem, b"message"))
    signature[position] ^= 0x01

    with pytest.raises(IntegrityError):
        crypto.verify(public_pem, b"message", bytes(signature))


@pytest.mark.parametrize("signature", [b"", b"\x00" * 63, b"\x00" * 65])
def test_verify_refuses_signatures_of_the_wrong_length(
    key_pair: tuple[bytes, bytes], signature: bytes
) -> None:
    with pytest.raises(IntegrityError):
        crypto.verify(key_pair[1], b"message", signature)


def test_key_id_is_a_prefix_of_the_sha256_of_the_raw_key() -> None:
    public_pem = (GOLDEN / "test-signer.pub").read_bytes()
    # Oracle: an Ed25519 SubjectPublicKeyInfo is a fixed 12-byte DER prefix + the raw key.
    der = base64.b64decode(b"".join(public_pem.splitlines()[1:-1]))
    assert len(der) == 44

    assert crypto.key_id(public_pem) == hashlib.sha256(der[12:]).hexdigest()[:16]
    assert crypto.key_id(public_pem) == "d30fe813d618ee97"  # pinned: users see it


@pytest.mark.parametrize(
    ("loader", "pem", "expected"),
    [
        (
            crypto.load_public_key,
            EC_PUBLIC_PEM,
            "expected an Ed25519 public key, got a key of type EC",
        ),
        (
            crypto.load_private_key,
            EC_PRIVATE_PEM,
            "expected an Ed25519 private key, got a key of type EC",
        ),
        (crypto.load_public_key, EC_PRIVATE_PEM, "pass the public key (.pub file)"),
        (crypto.load_private_key, EC_PUBLIC_PEM, "signing needs the private key (.key file)"),
        (crypto.load_private_key, ENCRYPTED_ED25519_PEM, "password-protected"),
        (crypto.load_public_key, b"not a key", "not a PEM-encoded public key"),
        (crypto.load_private_key, b"", "not a PEM-encoded private key"),
    ],
)
def test_loaders_explain_what_is_wrong_with_a_key(
    loader: Callable[[bytes], object], pem: bytes, expected: str
) -> None:
    with pytest.raises(crypto.KeyFormatError) as caught:
        loader(pem)

    assert expected in str(caught.value)
    assert isinstance(caught.value, TicketError)


def test_a_malformed_trusted_key_is_a_key_error_not_an_integrity_error(
    key_pair: tuple[bytes, bytes],
) -> None:
    signature = crypto.sign(key_pair[0], b"message")

    with pytest.raises(crypto.KeyFormatError):
        crypto.verify(EC_PUBLIC_PEM, b"message", signature)


def test_wrong_kind_of_key_is_refused_by_every_entry_point(key_pair: tuple[bytes, bytes]) -> None:
    private_pem, public_pem = key_pair

    with pytest.raises(crypto.KeyFormatError):
        crypto.sign(public_pem, b"m")
    with pytest.raises(crypto.KeyFormatError):
        crypto.key_id(private_pem)
    with pytest.raises(crypto.KeyFormatError):
        crypto.public_key_of(public_pem)


# ---------------------------------------------------------------- node identity (ECDSA P-384)


def test_a_node_auth_key_signs_and_its_public_line_names_the_same_identity() -> None:
    private, line = crypto.generate_node_auth_key("edge-daemon@clinic")
    identity = crypto.identity_of_public_line(line.encode())

    signature = crypto.identity_sign(private, b"advert")

    assert identity == crypto.identity_public_key(private)
    assert len(identity) == crypto.IDENTITY_KEY_BYTES
    assert len(signature) == crypto.IDENTITY_SIGNATURE_BYTES
    assert signature == crypto.identity_sign(private, b"advert")  # RFC 6979: deterministic
    crypto.identity_verify(identity, b"advert", signature)


@pytest.mark.parametrize("part", ["message", "signature", "key"])
def test_an_identity_signature_fails_for_any_flipped_bit(part: str) -> None:
    private = crypto.generate_identity_key()
    identity, message = crypto.identity_public_key(private), b"advert"
    signature = crypto.identity_sign(private, message)
    flip = {"message": message, "signature": signature, "key": identity}[part]
    for bit in (0, 8 * len(flip) // 2 + 5, 8 * len(flip) - 1):
        flipped = bytearray(flip)
        flipped[bit // 8] ^= 1 << (bit % 8)
        args = {"message": message, "signature": signature, "key": identity, part: bytes(flipped)}
        with pytest.raises(IntegrityError):
            crypto.identity_verify(args["key"], args["message"], args["signature"])


def test_an_identity_signature_of_another_key_or_size_fails() -> None:
    signature = crypto.identity_sign(crypto.generate_identity_key(), b"advert")
    other = crypto.identity_public_key(crypto.generate_identity_key())
    for key, sig in ((other, signature), (other[:-1], signature), (other, signature[:-1])):
        with pytest.raises(IntegrityError):
            crypto.identity_verify(key, b"advert", sig)


def test_only_p384_keys_are_identities() -> None:
    ed25519_line = (
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    )
    with pytest.raises(crypto.KeyFormatError, match="not an ECDSA P-384 key"):
        crypto.identity_of_public_line(ed25519_line)
    with pytest.raises(crypto.KeyFormatError, match="expected an ECDSA P-384 private key"):
        crypto.identity_public_key(crypto.generate_signing_key()[0])
    with pytest.raises(crypto.KeyFormatError, match="not an OpenSSH or PEM private key"):
        crypto.identity_sign(b"garbage", b"advert")
