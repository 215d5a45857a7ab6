"""Signed key adverts: an altered key is refused by name, or the sum is the survivors' exact one.

The attack of issue 12: one flipped bit of a device's public mask key, in its advert or in the
bundle the server relays, made the round return a wrong sum with every device counted. Each
test tampers through the simulation's tap, with the server and nodes behaving like the glue
(a refused message is left out, a node that refuses sits the round out).
"""

import dataclasses

import numpy as np
import pytest

from tests.ticket.secagg_sim import FLEET_KEY, Drops, Simulation, enrolled, identity_key
from ticket import crypto
from ticket.secagg import (
    SERVER,
    AuthenticationError,
    MessageError,
    PeerTrust,
    RoundAbortedError,
    SecAggError,
    SecAggParams,
    ServerRound,
    advertise_keys,
)
from ticket.secagg.identity import advert_statement, check_peer
from ticket.secagg.messages import KeyAdvert, KeyBundle, PublicKeys, SignedKeys
from ticket.secagg.params import PARAMS_BYTES

NODES = (1, 2, 3, 4)
HEADER = 36
# (field, offset, size) in a KeyAdvert's body, then in a KeyBundle's entry for one peer.
ADVERT_FIELDS = [
    ("cipher key", 0, 32),
    ("mask key", 32, 32),
    ("seed commitment", 64, 32),
    ("identity key", 96, 49),
    ("signature", 145, 96),
]
ENTRY = 8 + 96 + 49 + 96 + 1 + 64  # id | keys | identity | signature | flag | certificate
ENTRY_FIELDS = [
    ("peer id", 0, 8),
    *((name, 8 + offset, size) for name, offset, size in ADVERT_FIELDS),
    ("certificate flag", 249, 1),
    ("certificate", 250, 64),
]


def _bits(fields: list[tuple[str, int, int]]) -> list[tuple[str, int]]:
    """Per field its first, a middle and its last bit: the last bit of an X25519 key is the
    one X25519 ignores (an unsigned advert would even pass it with a correct sum)."""
    return [
        (name, 8 * offset + bit)
        for name, offset, size in fields
        for bit in sorted({0, 4 * size + 3, 8 * size - 1})
    ]


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def _never_wrong(sim: Simulation) -> tuple[int, ...]:
    """Run the round: its survivors, whose sum must be exact, or () if it aborted by name."""
    try:
        result = sim.run()
    except RoundAbortedError:
        return ()
    np.testing.assert_array_equal(result.total.astype(np.int64), sim.plain_sum(result.survivors))
    return result.survivors


@pytest.mark.parametrize(("field", "bit"), _bits(ADVERT_FIELDS))
@pytest.mark.parametrize("certified", [True, False], ids=["enrolled", "development"])
def test_a_flipped_bit_in_an_advert_leaves_that_node_out(
    field: str, bit: int, certified: bool
) -> None:
    def tamper(step: str, node: int, data: bytes) -> bytes:
        return _flip(data, 8 * HEADER + bit) if (step, node) == ("advert", 2) else data

    sim = Simulation(nodes=NODES, length=16, tap=tamper, tolerant=True, certified=certified)

    survivors = _never_wrong(sim)

    assert isinstance(sim.refused.get(("advert", 2)), AuthenticationError), field
    assert survivors == (1, 3, 4)


@pytest.mark.parametrize(("field", "bit"), _bits(ENTRY_FIELDS))
def test_a_flipped_bit_in_a_relayed_peer_entry_makes_its_recipient_sit_out(
    field: str, bit: int
) -> None:
    first_entry = HEADER + PARAMS_BYTES + 4 + 8 * len(NODES) + 4  # node 1's entry for node 2

    def tamper(step: str, node: int, data: bytes) -> bytes:
        return _flip(data, 8 * first_entry + bit) if (step, node) == ("bundle", 1) else data

    sim = Simulation(nodes=NODES, length=16, tap=tamper, tolerant=True)

    survivors = _never_wrong(sim)

    refusal = sim.refused.get(("bundle", 1))
    assert isinstance(refusal, AuthenticationError | MessageError), field
    assert survivors == (2, 3, 4)


def test_a_spread_of_bits_over_a_whole_relayed_bundle_never_gives_a_wrong_sum() -> None:
    """Bits all along node 1's bundle past the header (bench/hardening.py flips every one):
    each is refused by name (by node 1, or by the server from node 1's round view), and the
    others' sum is exact."""
    probe = Simulation(nodes=(1, 2, 3), length=4)
    probe.setup(Drops())
    size = len(probe.sent["bundle"][1])
    for byte in range(HEADER, size, 11):
        bit = 8 * byte + byte % 8

        def tamper(step: str, node: int, got: bytes, bit: int = bit) -> bytes:
            return _flip(got, bit) if (step, node) == ("bundle", 1) else got

        sim = Simulation(nodes=(1, 2, 3), length=4, tap=tamper, tolerant=True)
        assert 1 not in _never_wrong(sim), byte
        refusal = sim.refused.get(("bundle", 1)) or sim.refused.get(("shares", 1))
        assert isinstance(refusal, SecAggError), byte


# ---------------------------------------------------------------- a server that swaps keys


def _forge(node: int, certificate: bytes | None) -> SignedKeys:
    """Keys for `node` made and signed by someone else (a malicious server), validly."""
    attacker = crypto.generate_identity_key()
    keys = PublicKeys(bytes(range(32)), bytes(range(1, 33)), bytes(32))
    unsigned = SignedKeys(keys, crypto.identity_public_key(attacker), bytes(96))
    signature = crypto.identity_sign(attacker, advert_statement(7, 3, node, unsigned))
    return dataclasses.replace(unsigned, signature=signature, certificate=certificate)


def test_keys_re_signed_by_the_server_are_caught_by_the_certificate() -> None:
    trust = PeerTrust(FLEET_KEY[1])
    with pytest.raises(AuthenticationError, match="not the one the fleet key certified"):
        check_peer(7, 3, 2, _forge(2, enrolled(2).certificate), trust)
    with pytest.raises(AuthenticationError, match="without a fleet certificate"):
        check_peer(7, 3, 2, _forge(2, None), trust)  # an invented node, or a stripped one


def test_another_nodes_certificate_does_not_vouch_for_this_node() -> None:
    trust = PeerTrust(FLEET_KEY[1])
    honest = _signed_advert(3)
    check_peer(7, 3, 3, dataclasses.replace(honest, certificate=enrolled(3).certificate), trust)
    with pytest.raises(AuthenticationError, match="not the one the fleet key certified"):
        check_peer(7, 3, 3, dataclasses.replace(honest, certificate=enrolled(2).certificate), trust)


def test_an_advert_of_another_round_or_run_does_not_verify() -> None:
    trust = PeerTrust(FLEET_KEY[1])
    honest = dataclasses.replace(_signed_advert(3), certificate=enrolled(3).certificate)
    with pytest.raises(AuthenticationError, match="does not verify"):
        check_peer(7, 4, 3, honest, trust)  # a replay into round 4
    with pytest.raises(AuthenticationError, match="does not verify"):
        check_peer(8, 3, 3, honest, trust)


def test_a_node_that_trusts_no_fleet_key_refuses_unless_it_allows_uncertified_peers() -> None:
    honest = dataclasses.replace(_signed_advert(3), certificate=enrolled(3).certificate)
    with pytest.raises(AuthenticationError, match="trusts no fleet key"):
        check_peer(7, 3, 3, honest, PeerTrust(None))
    check_peer(7, 3, 3, honest, PeerTrust(None, allow_uncertified=True))


def _signed_advert(node: int) -> SignedKeys:
    data, _ = advertise_keys(run_id=7, round=3, node_id=node, identity_key=identity_key(node))
    return KeyAdvert.from_bytes(data, run_id=7, round=3, sender=node, recipient=SERVER).signed


# ---------------------------------------------------------------- the server's roster


def _server() -> ServerRound:
    roster = {node: enrolled(node) for node in (1, 2)}
    return ServerRound(run_id=7, round=3, params=SecAggParams(clip=1.0), length=4, roster=roster)


def test_the_server_refuses_an_advert_from_a_node_outside_its_roster() -> None:
    server = _server()
    advert, _ = advertise_keys(run_id=7, round=3, node_id=3, identity_key=identity_key(3))
    with pytest.raises(AuthenticationError, match="no certified identity key"):
        server.add_advert(3, advert)
    assert server.keys == {}


def test_the_server_refuses_an_advert_signed_by_a_key_not_enrolled_for_its_node() -> None:
    server = _server()
    advert, _ = advertise_keys(run_id=7, round=3, node_id=2, identity_key=identity_key(1))
    with pytest.raises(AuthenticationError, match="not enrolled for it"):
        server.add_advert(2, advert)
    assert server.keys == {}


def test_the_server_relays_each_neighbours_certificate() -> None:
    server = _server()
    for node in (1, 2):
        advert, _ = advertise_keys(run_id=7, round=3, node_id=node, identity_key=identity_key(node))
        server.add_advert(node, advert)
    bundle = KeyBundle.from_bytes(
        server.key_bundles()[1], run_id=7, round=3, sender=SERVER, recipient=1
    )
    [(peer, keys)] = bundle.peers
    assert peer == 2 and keys.certificate == enrolled(2).certificate
    check_peer(7, 3, 2, keys, PeerTrust(FLEET_KEY[1]))


# ---------------------------------------------------------------- parameters and cohort


@pytest.mark.parametrize(
    ("field", "byte"),
    [("clip", 7), ("levels", 8), ("threshold fraction", 19), ("complete-up-to", 28)],
)
def test_a_node_whose_bundle_parameters_were_altered_is_left_out_by_the_server(
    field: str, byte: int
) -> None:
    """The parameters are not signed by a device: its share bundle echoes a hash of what it
    took (round_view), and the server leaves out a node that saw other parameters."""

    def tamper(step: str, node: int, data: bytes) -> bytes:
        return _flip(data, 8 * (HEADER + byte)) if (step, node) == ("bundle", 1) else data

    sim = Simulation(nodes=NODES, length=16, tap=tamper, tolerant=True)

    survivors = _never_wrong(sim)

    assert isinstance(sim.refused.get(("shares", 1)) or sim.refused.get(("bundle", 1)), SecAggError)
    assert 1 not in survivors, field
