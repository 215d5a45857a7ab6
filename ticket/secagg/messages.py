"""The protocol's messages and their wire format (version 2): strict, pickle-free binary.

Every message starts with a 36-byte header, integers unsigned little-endian:

    magic b"TFSA" | u8 version | u8 kind | u16 reserved = 0 | u64 run id | u32 round
    | u64 sender | u64 recipient

then a body per kind (lists are a u32 count then fixed-size entries, ids strictly increasing).
Node ids are 1..2^64-1 and the server is SERVER = 0. Decoding checks every field the receiver
knows (kind, run, round, sender, recipient), rejects trailing bytes, and raises MessageError
naming the first mismatch, so another run's, round's or node's message, or a message replayed as
another kind, never gets further. The shares inside a SealedShares ciphertext are bound to
(run, round, sender, recipient) by the AEAD's associated data: that header with kind
SEALED_SHARES.

Version 2 signs key adverts: a KeyAdvert's body is its public keys, the node's identity key
(49-byte compressed P-384 point) and its signature (96 bytes) over identity.advert_statement;
a KeyBundle relays each neighbour's keys with that identity key, that signature and a u8 flag
(0 or 1) then, if 1, the fleet's 64-byte certificate of the identity key. A ShareBundle
starts with its sender's view of the round (round_view: a hash of the parameters and cohort it
took from its key bundle), so the server leaves out a node whose bundle was altered on the way
instead of summing a vector quantised or masked under other parameters.
"""

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise
from typing import ClassVar, Self

from ticket import crypto
from ticket.secagg import shamir
from ticket.secagg.bitpack import packed_size
from ticket.secagg.errors import MessageError, ParamsError
from ticket.secagg.params import PARAMS_BYTES, SecAggParams

MAGIC = b"TFSA"
VERSION = 2
SERVER = 0
HEADER = struct.Struct("<4sBBHQIQQ")
KEY_BYTES = crypto.X25519_KEY_BYTES
COMMITMENT_BYTES = 32
IDENTITY_BYTES = crypto.IDENTITY_KEY_BYTES
SIGNATURE_BYTES = crypto.IDENTITY_SIGNATURE_BYTES
CERTIFICATE_BYTES = crypto.SIGNATURE_BYTES  # Ed25519, by the fleet key
VIEW_BYTES = 32
_VIEW_DOMAIN = b"ticketfleet/secagg/round-view/v2\x00"
SEALED_SHARES_BYTES = crypto.AEAD_OVERHEAD_BYTES + 2 * shamir.SHARE_BYTES
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


class MessageKind(IntEnum):
    KEY_ADVERT = 1  # node -> server: the node's public keys for a round
    KEY_BUNDLE = 2  # server -> node: parameters, cohort and the neighbours' public keys
    SHARE_BUNDLE = 3  # node -> server: the node's shares, sealed to each neighbour
    MASK_REQUEST = 4  # server -> node: the members whose shares went out; mask now
    MASKED_INPUT = 5  # node -> server: the masked, bit-packed vector
    UNMASK_REQUEST = 6  # server -> node: whose seed / mask key to reveal, and sealed shares
    UNMASK_RESPONSE = 7  # node -> server: the revealed shares
    SEALED_SHARES = 8  # never a message: the AEAD associated data of sealed shares


class ShareKind(IntEnum):
    SEED = 1  # a share of b_u: revealed when u's masked vector is in the sum
    MASK_KEY = 2  # a share of the mask private key: revealed when u dropped before masking


@dataclass(frozen=True)
class PublicKeys:
    cipher_key: bytes  # X25519, seals shares
    mask_key: bytes  # X25519, derives pairwise mask seeds
    seed_commitment: bytes  # hash commitment to the self-mask seed b_u

    def __post_init__(self) -> None:
        for name, value, size in (
            ("cipher key", self.cipher_key, KEY_BYTES),
            ("mask key", self.mask_key, KEY_BYTES),
            ("seed commitment", self.seed_commitment, COMMITMENT_BYTES),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise MessageError(f"{name} must be {size} bytes")

    def to_bytes(self) -> bytes:
        return self.cipher_key + self.mask_key + self.seed_commitment


@dataclass(frozen=True)
class SignedKeys:
    """A node's public keys as its advert signed them, and the fleet's certificate (if any)
    of the identity key that signed; identity.check_peer says whether to believe them."""

    keys: PublicKeys
    identity: bytes  # the signer's 49-byte compressed P-384 public key
    signature: bytes  # over identity.advert_statement(run, round, node, self)
    certificate: bytes | None = None  # relayed by the server from the fleet's roster

    def __post_init__(self) -> None:
        for name, value, size in (
            ("identity key", self.identity, IDENTITY_BYTES),
            ("advert signature", self.signature, SIGNATURE_BYTES),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise MessageError(f"{name} must be {size} bytes")
        certificate = self.certificate
        if certificate is not None and (
            not isinstance(certificate, bytes) or len(certificate) != CERTIFICATE_BYTES
        ):
            raise MessageError(f"identity certificate must be {CERTIFICATE_BYTES} bytes")

    def signed_bytes(self) -> bytes:
        """What an advert carries: keys | identity | signature (no certificate)."""
        return self.keys.to_bytes() + self.identity + self.signature

    def relayed_bytes(self) -> bytes:
        """What a key bundle carries per neighbour: the advert's part, then the certificate."""
        if self.certificate is None:
            return self.signed_bytes() + b"\x00"
        return self.signed_bytes() + b"\x01" + self.certificate


@dataclass(frozen=True)
class Message:
    """Fields every message carries; subclasses add a body."""

    KIND: ClassVar[MessageKind]
    run_id: int
    round: int
    sender: int
    recipient: int

    def to_bytes(self) -> bytes:
        return (
            header(self.KIND, self.run_id, self.round, self.sender, self.recipient) + self._body()
        )

    def _body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def from_bytes(
        cls, data: bytes, *, run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        """Parse a message of this kind that must come from `sender` to `recipient` in the
        given run and round; anything else raises MessageError."""
        reader = _Reader(data)
        _check_header(
            reader, cls.KIND, run_id=run_id, round=round, sender=sender, recipient=recipient
        )
        message = cls._parse(reader, run_id, round, sender, recipient)
        reader.finish()
        return message

    @classmethod
    def _parse(
        cls, reader: "_Reader", run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        raise NotImplementedError


@dataclass(frozen=True)
class KeyAdvert(Message):
    KIND = MessageKind.KEY_ADVERT
    signed: SignedKeys  # certificate None: the server adds it from its roster

    def __post_init__(self) -> None:
        if self.signed.certificate is not None:
            raise MessageError("a key advert carries no certificate; the server's roster does")

    @property
    def keys(self) -> PublicKeys:
        return self.signed.keys

    def _body(self) -> bytes:
        return self.signed.signed_bytes()

    @classmethod
    def _parse(
        cls, reader: "_Reader", run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        return cls(run_id, round, sender, recipient, reader.signed_keys())


@dataclass(frozen=True)
class KeyBundle(Message):
    KIND = MessageKind.KEY_BUNDLE
    params: SecAggParams
    cohort: tuple[int, ...]  # every member of the round, sorted
    peers: tuple[tuple[int, SignedKeys], ...]  # the recipient's neighbours, by id

    def _body(self) -> bytes:
        keys = b"".join(struct.pack("<Q", node) + keys.relayed_bytes() for node, keys in self.peers)
        return (
            self.params.to_bytes() + _ids(self.cohort) + struct.pack("<I", len(self.peers)) + keys
        )

    @classmethod
    def _parse(
        cls, reader: "_Reader", run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        try:
            params = SecAggParams.from_bytes(reader.take(PARAMS_BYTES))
        except ParamsError as error:
            raise MessageError(f"key bundle parameters: {error}") from None
        cohort = reader.ids("cohort")
        peers = tuple((node, reader.relayed_keys()) for node in reader.ids_with_entries("peer"))
        if recipient not in cohort:
            raise MessageError("key bundle's cohort does not include its recipient")
        if not {node for node, _ in peers} <= set(cohort) - {recipient}:
            raise MessageError("key bundle lists keys of nodes outside the cohort, or its own")
        return cls(run_id, round, sender, recipient, params, cohort, peers)


@dataclass(frozen=True)
class ShareBundle(Message):
    KIND = MessageKind.SHARE_BUNDLE
    view: bytes  # round_view of the parameters and cohort its sender took from its key bundle
    sealed: tuple[tuple[int, bytes], ...]  # (neighbour, SealedShares for it), by neighbour

    def __post_init__(self) -> None:
        if not isinstance(self.view, bytes) or len(self.view) != VIEW_BYTES:
            raise MessageError(f"share bundle's round view must be {VIEW_BYTES} bytes")

    def _body(self) -> bytes:
        return self.view + _sealed(self.sealed)

    @classmethod
    def _parse(
        cls, reader: "_Reader", run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        view = reader.take(VIEW_BYTES)
        sealed = reader.sealed("share recipient")
        if any(node == sender for node, _ in sealed):
            raise MessageError("share bundle seals shares to its own sender")
        return cls(run_id, round, sender, recipient, view, sealed)


@dataclass(frozen=True)
class MaskRequest(Message):
    KIND = MessageKind.MASK_REQUEST
    length: int  # values in the vector to mask
    members: tuple[int, ...]  # the nodes whose shares went out: mask with these neighbours only

    def _body(self) -> bytes:
        return struct.pack("<I", self.length) + _ids(self.members)

    @classmethod
    def _parse(
        cls, reader: "_Reader", run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        length = reader.u32()
        members = reader.ids("member")
        if recipient not in members:
            raise MessageError("mask request's members do not include its recipient")
        return cls(run_id, round, sender, recipient, length, members)


@dataclass(frozen=True)
class MaskedInput(Message):
    KIND = MessageKind.MASKED_INPUT
    bits: int
    length: int
    payload: bytes  # bitpack.pack_bits of the masked vector

    def _body(self) -> bytes:
        return struct.pack("<BI", self.bits, self.length) + self.payload

    @classmethod
    def _parse(
        cls, reader: "_Reader", run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        bits, length = reader.u8(), reader.u32()
        if not 1 <= bits <= 32:
            raise MessageError(f"masked input claims {bits} bits per value")
        payload = reader.take(packed_size(length, bits))
        return cls(run_id, round, sender, recipient, bits, length, payload)


@dataclass(frozen=True)
class UnmaskRequest(Message):
    KIND = MessageKind.UNMASK_REQUEST
    reveal_seed_of: tuple[int, ...]  # neighbours (and self) whose masked vectors are in the sum
    reveal_key_of: tuple[int, ...]  # neighbours that dropped before their vector arrived
    sealed: tuple[tuple[int, bytes], ...]  # (sender, SealedShares it sealed to the recipient)

    def _body(self) -> bytes:
        return _ids(self.reveal_seed_of) + _ids(self.reveal_key_of) + _sealed(self.sealed)

    @classmethod
    def _parse(
        cls, reader: "_Reader", run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        seeds, keys = reader.ids("seed owner"), reader.ids("key owner")
        sealed = reader.sealed("share sender")
        return cls(run_id, round, sender, recipient, seeds, keys, sealed)


@dataclass(frozen=True)
class UnmaskResponse(Message):
    KIND = MessageKind.UNMASK_RESPONSE
    shares: tuple[tuple[int, ShareKind, bytes], ...]  # (owner, kind, share), by owner

    def _body(self) -> bytes:
        entries = b"".join(
            struct.pack("<QB", owner, kind) + share for owner, kind, share in self.shares
        )
        return struct.pack("<I", len(self.shares)) + entries

    @classmethod
    def _parse(
        cls, reader: "_Reader", run_id: int, round: int, sender: int, recipient: int
    ) -> Self:
        shares = []
        for owner in reader.ids_with_entries("share owner"):
            code = reader.u8()
            if code not in ShareKind.__members__.values():
                raise MessageError(f"unknown share kind code {code}")
            shares.append((owner, ShareKind(code), reader.take(shamir.SHARE_BYTES)))
        return cls(run_id, round, sender, recipient, tuple(shares))


def round_view(params: SecAggParams, cohort: Iterable[int]) -> bytes:
    """SHA-256 of a round's parameters and cohort, as a node took them from its key bundle."""
    return hashlib.sha256(_VIEW_DOMAIN + params.to_bytes() + _ids(cohort)).digest()


def header(kind: MessageKind, run_id: int, round: int, sender: int, recipient: int) -> bytes:
    """The 36-byte header; with kind SEALED_SHARES it is the AEAD associated data."""
    _check_range("run id", run_id, _U64_MAX)
    _check_range("round", round, _U32_MAX)
    _check_range("sender", sender, _U64_MAX)
    _check_range("recipient", recipient, _U64_MAX)
    return HEADER.pack(MAGIC, VERSION, kind, 0, run_id, round, sender, recipient)


# ---------------------------------------------------------------- encoding helpers


def _ids(nodes: Iterable[int]) -> bytes:
    ids = tuple(nodes)
    _check_increasing(ids, "node")
    return struct.pack(f"<I{len(ids)}Q", len(ids), *ids)


def _sealed(entries: Iterable[tuple[int, bytes]]) -> bytes:
    pairs = tuple(entries)
    _check_increasing(tuple(node for node, _ in pairs), "node")
    if any(len(blob) != SEALED_SHARES_BYTES for _, blob in pairs):
        raise MessageError(f"sealed shares are {SEALED_SHARES_BYTES} bytes each")
    body = b"".join(struct.pack("<Q", node) + blob for node, blob in pairs)
    return struct.pack("<I", len(pairs)) + body


def _check_increasing(ids: tuple[int, ...], what: str) -> None:
    if any(not 1 <= node <= _U64_MAX for node in ids):
        raise MessageError(f"{what} ids must be in 1..{_U64_MAX}")
    if any(a >= b for a, b in pairwise(ids)):
        raise MessageError(f"{what} ids must be strictly increasing")


def _check_range(name: str, value: int, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise MessageError(f"{name} must be an integer in 0..{top}, got {value!r}")


# ---------------------------------------------------------------- decoding helpers


def _check_header(
    reader: "_Reader", kind: MessageKind, *, run_id: int, round: int, sender: int, recipient: int
) -> None:
    header(kind, run_id, round, sender, recipient)  # range-checks the expectations
    if sender == SERVER and recipient == SERVER:
        # Node id 0 is the server's own: a message claiming it as its node would be accepted
        # here and fail the whole round later (issue 12), so every entry point refuses it.
        raise MessageError(f"node id {SERVER} is reserved for the server; nodes are 1..{_U64_MAX}")
    magic, version, got_kind, reserved, got_run, got_round, got_sender, got_recipient = (
        HEADER.unpack(reader.take(HEADER.size))
    )
    if magic != MAGIC:
        raise MessageError("not a secure aggregation message (bad magic)")
    if version != VERSION:
        raise MessageError(
            f"secagg message version {version} is not supported; this reads {VERSION}"
        )
    if got_kind != kind:
        name = (
            MessageKind(got_kind).name if got_kind in MessageKind.__members__.values() else got_kind
        )
        raise MessageError(f"expected a {kind.name} message, got {name}")
    if reserved != 0:
        raise MessageError("reserved header field is not zero")
    for what, expected, got in (
        ("run", run_id, got_run),
        ("round", round, got_round),
        ("sender", sender, got_sender),
        ("recipient", recipient, got_recipient),
    ):
        if expected != got:
            raise MessageError(f"message is for another {what}: expected {expected}, got {got}")


class _Reader:
    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise MessageError(f"expected bytes, got {type(data).__name__}")
        self._data = data
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._data):
            raise MessageError(f"message is truncated at byte {len(self._data)}")
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def ids(self, what: str) -> tuple[int, ...]:
        count = self.u32()
        if count * 8 > len(self._data) - self._at:
            raise MessageError(f"message is truncated in its {what} list")
        ids = struct.unpack(f"<{count}Q", self.take(8 * count))
        _check_increasing(ids, what)
        return ids

    def ids_with_entries(self, what: str) -> Iterator[int]:
        """A count, then each entry's id; the caller reads the rest of each entry in between."""
        count = self.u32()
        if count > len(self._data) - self._at:
            raise MessageError(f"message is truncated in its {what} list")
        previous = 0
        for _ in range(count):
            node = self.u64()
            if node <= previous:
                raise MessageError(f"{what} ids must be >= 1 and strictly increasing")
            previous = node
            yield node

    def keys(self) -> PublicKeys:
        return PublicKeys(self.take(KEY_BYTES), self.take(KEY_BYTES), self.take(COMMITMENT_BYTES))

    def signed_keys(self) -> SignedKeys:
        return SignedKeys(self.keys(), self.take(IDENTITY_BYTES), self.take(SIGNATURE_BYTES))

    def relayed_keys(self) -> SignedKeys:
        keys, identity, signature = (
            self.keys(),
            self.take(IDENTITY_BYTES),
            self.take(SIGNATURE_BYTES),
        )
        flag = self.u8()
        if flag not in (0, 1):
            raise MessageError(f"peer certificate flag must be 0 or 1, got {flag}")
        certificate = self.take(CERTIFICATE_BYTES) if flag else None
        return SignedKeys(keys, identity, signature, certificate)

    def sealed(self, what: str) -> tuple[tuple[int, bytes], ...]:
        return tuple((node, self.take(SEALED_SHARES_BYTES)) for node in self.ids_with_entries(what))

    def finish(self) -> None:
        if self._at != len(self._data):
            raise MessageError(f"message has {len(self._data) - self._at} trailing byte(s)")
