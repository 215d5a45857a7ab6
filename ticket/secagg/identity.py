"""Who may take part in a round: signed key adverts and the fleet's certificates of node keys.

A node signs its KeyAdvert with its identity key (its Flower node-authentication key, ECDSA
P-384; ticket.crypto) over ADVERT_DOMAIN | the advert's header (run, round, node id, server) |
its public keys | its identity key. The operator's `fleet-server enroll` certifies each enrolled
node's identity key with the fleet signing key (Ed25519, the key every device already trusts
for tickets) over CERTIFICATE_DOMAIN | u64 node id | identity key. The server relays, with each
neighbour's public keys, that neighbour's identity key, advert signature and certificate; a
node checks all of them (check_peer) before it derives a single mask, so a server or relay that
alters a key, or invents a node, is caught with AuthenticationError instead of giving a wrong
sum. The domains keep these signatures apart from ticket, card and Flower signatures made with
the same keys.
"""

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ticket import crypto
from ticket.errors import IntegrityError
from ticket.secagg.errors import AuthenticationError
from ticket.secagg.messages import SERVER, MessageKind, SignedKeys, header

ADVERT_DOMAIN = b"ticketfleet/secagg/key-advert/v2\x00"
CERTIFICATE_DOMAIN = b"ticketfleet/secagg/node-identity/v1\x00"
CERTIFICATE_BYTES = crypto.SIGNATURE_BYTES


@dataclass(frozen=True)
class PeerTrust:
    """What a node accepts as a neighbour's identity.

    fleet_key: PEM Ed25519 public key whose certificates name each node's identity key
        (daemon.yaml's fleet_key); None: this node can check no certificate.
    allow_uncertified: accept a neighbour without a valid certificate, its advert signature
        still checked (a development fleet of plain SuperNodes, nobody enrolled): then the
        signatures catch corruption, not a server that swaps keys.
    """

    fleet_key: bytes | None
    allow_uncertified: bool = False


@dataclass(frozen=True)
class Enrolled:
    """A node's enrolled identity key and the fleet's certificate of it (the server's roster)."""

    identity: bytes  # 49-byte compressed P-384 point
    certificate: bytes  # Ed25519 signature by the fleet key of certificate_statement(...)


Roster = Mapping[int, Enrolled]


def advert_statement(run_id: int, round: int, node: int, keys: SignedKeys) -> bytes:
    """The bytes a node signs for its advert of `round`: bound to run, round, node and domain."""
    binding = header(MessageKind.KEY_ADVERT, run_id, round, node, SERVER)
    return ADVERT_DOMAIN + binding + keys.keys.to_bytes() + keys.identity


def certificate_statement(node: int, identity: bytes) -> bytes:
    """The bytes the fleet key signs to say "node `node`'s identity key is `identity`"."""
    return CERTIFICATE_DOMAIN + struct.pack("<Q", node) + identity


def certify(fleet_private_key: bytes, node: int, identity: bytes) -> bytes:
    """The fleet's certificate of `node`'s identity key (the operator's enrolment makes it)."""
    return crypto.sign(fleet_private_key, certificate_statement(node, identity))


def check_advert(run_id: int, round: int, node: int, keys: SignedKeys) -> None:
    """AuthenticationError unless `keys` carries `node`'s valid signature for this round."""
    try:
        crypto.identity_verify(
            keys.identity, advert_statement(run_id, round, node, keys), keys.signature
        )
    except IntegrityError:
        raise AuthenticationError(
            f"node {node}'s key advert for round {round} does not verify against its identity key"
        ) from None


def check_peer(run_id: int, round: int, node: int, keys: SignedKeys, trust: PeerTrust) -> None:
    """AuthenticationError unless neighbour `node`'s relayed keys are its own (signature) and
    its identity key is the one the fleet enrolled for `node` (certificate), or `trust` lets
    an uncertified neighbour in."""
    check_advert(run_id, round, node, keys)
    if keys.certificate is not None and trust.fleet_key is not None:
        statement = certificate_statement(node, keys.identity)
        try:
            crypto.verify(trust.fleet_key, statement, keys.certificate)
        except IntegrityError:
            raise AuthenticationError(
                f"node {node}'s identity key is not the one the fleet key certified for it"
            ) from None
        return
    if trust.allow_uncertified:
        return
    if trust.fleet_key is None:
        raise AuthenticationError(
            f"cannot check node {node}'s identity: this node trusts no fleet key "
            "(node config fleet-key); a development fleet sets secagg-allow-uncertified"
        )
    raise AuthenticationError(f"node {node}'s keys come without a fleet certificate")


def check_enrolled(node: int, identity: bytes, roster: Roster) -> Enrolled:
    """The server's check of an advert against its roster: the entry, or AuthenticationError."""
    entry = roster.get(node)
    if entry is None:
        raise AuthenticationError(f"node {node} has no certified identity key in the roster")
    if entry.identity != identity:
        raise AuthenticationError(f"node {node}'s advert is signed by a key not enrolled for it")
    return entry
