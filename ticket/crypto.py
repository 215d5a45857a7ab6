"""Every cryptographic primitive ticketfleet uses, behind small bytes-in/bytes-out functions.

This is the only module that imports `cryptography.hazmat`. Keys travel as PEM bytes, messages
and signatures as bytes; callers never hold key objects, so they cannot mix up key kinds or
forget a check. Every verification failure raises the same opaque `IntegrityError`.
"""

import base64
import datetime
import hashlib
import ipaddress
import os
import struct
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


_NODE_AUTH_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what Flower's node auth accepts


def node_auth_fingerprint(public_line: bytes) -> str:
    """OpenSSH's "SHA256:..." fingerprint of a SuperNode public key line
    (`ecdsa-sha2-nistp384 AAAA... comment`); KeyFormatError unless it is an OpenSSH ECDSA key on
    a NIST curve, the kind `flwr supernode register` accepts."""
    try:
        key = serialization.load_ssh_public_key(public_line.strip())
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("not an OpenSSH public key line") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _NODE_AUTH_CURVES:
        raise KeyFormatError("not an ECDSA key on a NIST curve (edge-daemon keygen makes one)")
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    raw = base64.b64decode(blob.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


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


# ---------------------------------------------------------------- node identity (ECDSA P-384)
#
# A node signs its secure-aggregation key adverts with its Flower node-authentication key
# (`edge-daemon keygen` makes an ECDSA P-384 key in OpenSSH format). Public keys travel as
# 49-byte compressed points, signatures as 96 raw bytes (r | s): fixed sizes, so the protocol's
# strict decoders need no length fields. Signing is deterministic (RFC 6979): no per-signature
# randomness to get wrong on a small device.

IDENTITY_KEY_BYTES = 49
IDENTITY_SIGNATURE_BYTES = 96
_IDENTITY_SCALAR_BYTES = 48
_IDENTITY_CURVE = ec.SECP384R1()
MAX_IDENTITY_KEY_FILE_BYTES = 16 * 1024  # an OpenSSH P-384 private key is about 500 bytes


def generate_identity_key() -> bytes:
    """A fresh P-384 private key, PEM (PKCS#8): for a node that has no node-auth key (a
    development fleet) or for tests; `generate_node_auth_key` makes the enrolled kind."""
    key = ec.generate_private_key(_IDENTITY_CURVE)
    return _private_pkcs8(key)


def identity_public_key(private_key: bytes) -> bytes:
    """The 49-byte compressed public point of a P-384 private key (OpenSSH or PEM bytes)."""
    return _identity_point(_load_identity_private(private_key).public_key())


def identity_of_public_line(public_line: bytes) -> bytes:
    """The 49-byte compressed point of an OpenSSH `ecdsa-sha2-nistp384` public key line (the
    KEY.pub that `fleet-server enroll` reads); KeyFormatError for any other key."""
    try:
        key = serialization.load_ssh_public_key(public_line.strip())
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("not an OpenSSH public key line") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != _IDENTITY_CURVE.name:
        raise KeyFormatError("not an ECDSA P-384 key (ecdsa-sha2-nistp384; edge-daemon keygen)")
    return _identity_point(key)


def identity_sign(private_key: bytes, message: bytes) -> bytes:
    """ECDSA P-384 / SHA-384 signature of `message`, 96 bytes (r | s), deterministic."""
    key = _load_identity_private(private_key)
    der = key.sign(message, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(_IDENTITY_SCALAR_BYTES, "big") + s.to_bytes(_IDENTITY_SCALAR_BYTES, "big")


def identity_verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Return if `signature` (96 bytes) is `public_key`'s (49-byte point) signature of
    `message`; anything else, a malformed point included (it came off the wire), raises the
    opaque IntegrityError."""
    if len(public_key) != IDENTITY_KEY_BYTES or len(signature) != IDENTITY_SIGNATURE_BYTES:
        raise IntegrityError("signature does not verify")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(_IDENTITY_CURVE, public_key)
    except ValueError:
        raise IntegrityError("signature does not verify") from None
    r = int.from_bytes(signature[:_IDENTITY_SCALAR_BYTES], "big")
    s = int.from_bytes(signature[_IDENTITY_SCALAR_BYTES:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise IntegrityError("signature does not verify") from None


def _load_identity_private(data: bytes) -> ec.EllipticCurvePrivateKey:
    if len(data) > MAX_IDENTITY_KEY_FILE_BYTES:
        raise KeyFormatError("too large for a node's private key")
    key: object
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # an encrypted key and no password
        raise KeyFormatError("password-protected private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("not an OpenSSH or PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _IDENTITY_CURVE.name:
        raise KeyFormatError(f"expected an ECDSA P-384 private key, got {_kind(key)}")
    return key


def _identity_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


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


# ---------------------------------------------------------------- secure aggregation primitives
#
# Raw 32-byte keys and seeds in, bytes out (ticket/secagg builds the protocol on these). Failed
# authentication, and a peer key that yields no usable shared secret, raise IntegrityError.

X25519_KEY_BYTES = 32
SEED_BYTES = 32
AEAD_NONCE_BYTES = 12
AEAD_TAG_BYTES = 16
AEAD_OVERHEAD_BYTES = AEAD_NONCE_BYTES + AEAD_TAG_BYTES  # sealed = nonce | ciphertext | tag
_KDF_DOMAIN = b"ticketfleet/secagg/v1\x00"
_KDF_CONTEXT = struct.Struct("<QIQQ")  # run id, round, lower node id, higher node id
_U64_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1
_CHACHA_ZERO_NONCE = bytes(16)  # 32-bit block counter 0 + 96-bit nonce 0 (OpenSSL layout)


def x25519_public_key(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of a raw 32-byte private key (any 32 bytes will do:
    X25519 clamps them, so 32 bytes from a CSPRNG are a private key)."""
    _check_len("X25519 private key", private, X25519_KEY_BYTES)
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_x25519_key_pair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair from the OS CSPRNG: (raw private 32 bytes, raw public 32 bytes)."""
    private = os.urandom(X25519_KEY_BYTES)
    return private, x25519_public_key(private)


def x25519_shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret; never use it as a key directly, pass it through HKDF.

    A peer key of small order (the shared secret would be all zeros) raises IntegrityError.
    """
    return _x25519_shared_secrets(private, [peer_public])[0]


def _x25519_shared_secrets(private: bytes, peer_publics: Sequence[bytes]) -> list[bytes]:
    """x25519_shared_secret with each peer key in turn, the private key loaded once."""
    _check_len("X25519 private key", private, X25519_KEY_BYTES)
    for peer_public in peer_publics:
        _check_len("X25519 public key", peer_public, X25519_KEY_BYTES)
    key = X25519PrivateKey.from_private_bytes(private)
    try:
        return [key.exchange(X25519PublicKey.from_public_bytes(peer)) for peer in peer_publics]
    except ValueError:
        raise IntegrityError("key agreement failed") from None


def hkdf_sha256(secret: bytes, *, info: bytes, length: int = SEED_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) with no salt: `length` bytes bound to the `info` context."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def pair_context(*, run_id: int, round: int, node_a: int, node_b: int, purpose: str) -> bytes:
    """The HKDF `info` for a key two nodes share: domain | u64 run | u32 round | u64 lower id
    | u64 higher id | purpose (ASCII). The ids are sorted, so both ends derive the same bytes;
    the fixed-width prefix keeps the variable-length purpose label unambiguous."""
    for name, value, top in (("run id", run_id, _U64_MAX), ("round", round, _U32_MAX)):
        if not 0 <= value <= top:
            raise ValueError(f"{name} {value} is outside 0..{top}")
    for node in (node_a, node_b):
        if not 0 <= node <= _U64_MAX:
            raise ValueError(f"node id {node} is outside 0..{_U64_MAX}")
    if not purpose or not purpose.isascii():
        raise ValueError("purpose must be a non-empty ASCII label")
    low, high = sorted((node_a, node_b))
    return _KDF_DOMAIN + _KDF_CONTEXT.pack(run_id, round, low, high) + purpose.encode("ascii")


def derive_pair_key(
    private: bytes,
    peer_public: bytes,
    *,
    run_id: int,
    round: int,
    node_a: int,
    node_b: int,
    purpose: str,
) -> bytes:
    """A 32-byte key only nodes a and b can compute: HKDF(X25519(private, peer_public), info =
    pair_context(...)). Either end gets the same key; another run, round, pair or purpose gets
    an unrelated one."""
    keys = derive_pair_keys(
        private, {node_b: peer_public}, run_id=run_id, round=round, me=node_a, purpose=purpose
    )
    return keys[node_b]


def derive_pair_keys(
    private: bytes, peers: Mapping[int, bytes], *, run_id: int, round: int, me: int, purpose: str
) -> dict[int, bytes]:
    """{peer: derive_pair_key(private, public, node_a=me, node_b=peer, ...)} for every (peer,
    public) in `peers`, the private key loaded once (the server rebuilds a dropped node's
    pairwise seeds with all its live neighbours at once)."""
    ids = list(peers)
    infos = [
        pair_context(run_id=run_id, round=round, node_a=me, node_b=peer, purpose=purpose)
        for peer in ids
    ]
    shared = _x25519_shared_secrets(private, [peers[peer] for peer in ids])
    return {
        peer: hkdf_sha256(secret, info=info)
        for peer, secret, info in zip(ids, shared, infos, strict=True)
    }


def chacha20_keystream(seed: bytes, length: int) -> bytes:
    """`length` bytes of the ChaCha20 keystream under a full 256-bit `seed`.

    The nonce is fixed at zero: that is safe only because every seed given here is used for
    one expansion (a fresh per-round self-mask seed, or an HKDF output bound to one run,
    round, pair and purpose). Output is capped by the 32-bit block counter (256 GiB).
    """
    _check_len("ChaCha20 seed", seed, SEED_BYTES)
    if length < 0:
        raise ValueError(f"keystream length must be >= 0, got {length}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _CHACHA_ZERO_NONCE), mode=None).encryptor()
    return encryptor.update(bytes(length))


def chacha20_keystream_into(seed: bytes, out: memoryview) -> None:
    """chacha20_keystream(seed, len(out)) written into `out` (a writable byte buffer), with no
    allocation of its own beyond the zero input: for expanding many masks into one buffer."""
    _check_len("ChaCha20 seed", seed, SEED_BYTES)
    encryptor = Cipher(algorithms.ChaCha20(seed, _CHACHA_ZERO_NONCE), mode=None).encryptor()
    encryptor.update_into(bytes(out.nbytes), out)


def aead_encrypt(
    key: bytes, plaintext: bytes, associated_data: bytes, *, nonce: bytes | None = None
) -> bytes:
    """ChaCha20-Poly1305: nonce (12) | ciphertext | tag (16), authenticating `associated_data`.

    The nonce is random (from the OS, or the caller's CSPRNG): a key that is ever used twice,
    e.g. a step retried after a crash, must never repeat a nonce.
    """
    _check_len("AEAD key", key, SEED_BYTES)
    nonce = os.urandom(AEAD_NONCE_BYTES) if nonce is None else nonce
    _check_len("AEAD nonce", nonce, AEAD_NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """The plaintext of `aead_encrypt`'s output; anything else raises the opaque IntegrityError
    (a flipped byte, a truncated message, another key, other associated data)."""
    _check_len("AEAD key", key, SEED_BYTES)
    if len(sealed) < AEAD_OVERHEAD_BYTES:
        raise IntegrityError("authentication failed")
    nonce, body = sealed[:AEAD_NONCE_BYTES], sealed[AEAD_NONCE_BYTES:]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, associated_data)
    except InvalidTag:
        raise IntegrityError("authentication failed") from None


def hash_commitment(value: bytes, context: bytes) -> bytes:
    """SHA-256(len(context) | context | value): a binding commitment to a high-entropy value
    (a 32-byte random seed), so a reconstructed seed can be checked against what was sent."""
    prefix = struct.pack("<I", len(context))
    return hashlib.sha256(prefix + context + value).digest()


def _check_len(what: str, data: bytes, expected: int) -> None:
    if not isinstance(data, bytes) or len(data) != expected:
        size = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
        raise KeyFormatError(f"{what} must be {expected} bytes, got {size}")


# -- TLS for a development fleet -----------------------------------------------------------------
# Operators with their own PKI point the SuperLink at their own files; these make a private CA
# and a server certificate so a fresh fleet (and every test) runs with TLS on.


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def generate_tls_ca(common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA for the fleet: (private key PEM, certificate PEM), ECDSA P-256."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _private_pkcs8(key), certificate.public_bytes(serialization.Encoding.PEM)


def generate_tls_server_cert(
    ca_key_pem: bytes, ca_cert_pem: bytes, hosts: list[str], *, days: int = 825
) -> tuple[bytes, bytes]:
    """A server certificate signed by the CA, valid for `hosts` (IP addresses and DNS names,
    each a subject alternative name): (private key PEM, certificate PEM)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TicketError("the CA key is not an ECDSA key")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _private_pkcs8(key), certificate.public_bytes(serialization.Encoding.PEM)


def _private_pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
