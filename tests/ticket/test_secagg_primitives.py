"""The secure-aggregation primitives in ticket.crypto: X25519, HKDF contexts, ChaCha20, AEAD."""

import pytest

from ticket import crypto
from ticket.errors import IntegrityError

# RFC 7748 section 6.1.
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
# RFC 8439 appendix A.1, test vector 1: the all-zero key, nonce and counter.
CHACHA_ZERO_BLOCK = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)
CONTEXT = {"run_id": 9, "round": 4, "node_a": 3, "node_b": 5, "purpose": "pairwise-mask"}


def test_x25519_matches_rfc_7748() -> None:
    assert crypto.x25519_public_key(ALICE) == ALICE_PUBLIC
    assert crypto.x25519_public_key(BOB) == BOB_PUBLIC
    assert crypto.x25519_shared_secret(ALICE, BOB_PUBLIC) == SHARED
    assert crypto.x25519_shared_secret(BOB, ALICE_PUBLIC) == SHARED


def test_generated_x25519_pairs_are_raw_and_fresh() -> None:
    private, public = crypto.generate_x25519_key_pair()
    assert len(private) == len(public) == 32
    assert crypto.x25519_public_key(private) == public
    assert crypto.generate_x25519_key_pair()[0] != private


def test_a_small_order_peer_key_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        crypto.x25519_shared_secret(ALICE, bytes(32))


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)])
def test_keys_of_the_wrong_length_are_refused(key: bytes) -> None:
    with pytest.raises(crypto.KeyFormatError, match="32 bytes"):
        crypto.x25519_public_key(key)


def test_both_ends_derive_the_same_pair_key() -> None:
    forward = crypto.derive_pair_key(ALICE, BOB_PUBLIC, **CONTEXT)
    swapped = dict(CONTEXT, node_a=5, node_b=3)
    backward = crypto.derive_pair_key(BOB, ALICE_PUBLIC, **swapped)
    assert forward == backward
    assert len(forward) == 32


@pytest.mark.parametrize(
    "change",
    [{"run_id": 10}, {"round": 5}, {"node_b": 6}, {"node_a": 4}, {"purpose": "share-seal"}],
)
def test_any_other_context_derives_an_unrelated_key(change: dict[str, object]) -> None:
    base = crypto.derive_pair_key(ALICE, BOB_PUBLIC, **CONTEXT)
    other = crypto.derive_pair_key(ALICE, BOB_PUBLIC, **dict(CONTEXT, **change))
    assert other != base


def test_the_kdf_context_layout_is_pinned() -> None:
    info = crypto.pair_context(run_id=1, round=2, node_a=4, node_b=3, purpose="x")
    assert info == (
        b"ticketfleet/secagg/v1\x00"
        + (1).to_bytes(8, "little")
        + (2).to_bytes(4, "little")
        + (3).to_bytes(8, "little")
        + (4).to_bytes(8, "little")
        + b"x"
    )


@pytest.mark.parametrize(
    "change", [{"run_id": -1}, {"round": 2**32}, {"node_a": 2**64}, {"purpose": ""}]
)
def test_kdf_context_fields_are_range_checked(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        crypto.pair_context(**dict(CONTEXT, **change))


def test_the_keystream_is_chacha20_with_a_zero_nonce() -> None:
    assert crypto.chacha20_keystream(bytes(32), 64) == CHACHA_ZERO_BLOCK
    assert crypto.chacha20_keystream(bytes(32), 100)[:64] == CHACHA_ZERO_BLOCK
    assert crypto.chacha20_keystream(bytes(32), 0) == b""


def test_aead_round_trip_and_overhead() -> None:
    key = bytes(range(32))
    sealed = crypto.aead_encrypt(key, b"shares", b"header")
    assert len(sealed) == len(b"shares") + crypto.AEAD_OVERHEAD_BYTES
    assert crypto.aead_decrypt(key, sealed, b"header") == b"shares"
    assert crypto.aead_encrypt(key, b"shares", b"header") != sealed  # a fresh nonce each time


def test_every_aead_failure_is_the_same_opaque_error() -> None:
    key = bytes(range(32))
    sealed = crypto.aead_encrypt(key, b"shares", b"header")
    tampered = [
        bytes(sealed[:i]) + bytes([sealed[i] ^ 0x80]) + bytes(sealed[i + 1 :])
        for i in range(len(sealed))
    ]
    attempts = [(key, blob, b"header") for blob in tampered]
    attempts += [
        (key, sealed, b"headeR"),  # other associated data: another round, node or kind
        (bytes(32), sealed, b"header"),  # another key
        (key, sealed[:-1], b"header"),  # truncated
        (key, sealed[:10], b"header"),  # shorter than nonce + tag
        (key, sealed + b"\x00", b"header"),
    ]
    messages = set()
    for attempt_key, blob, associated in attempts:
        with pytest.raises(IntegrityError) as caught:
            crypto.aead_decrypt(attempt_key, blob, associated)
        messages.add(str(caught.value))
    assert messages == {"authentication failed"}


def test_hash_commitment_binds_value_and_context() -> None:
    base = crypto.hash_commitment(b"seed", b"ctx")
    assert base == crypto.hash_commitment(b"seed", b"ctx")
    assert base != crypto.hash_commitment(b"seeD", b"ctx")
    assert base != crypto.hash_commitment(b"seed", b"ctX")
    assert base != crypto.hash_commitment(b"xseed", b"ctx"[:-1] + b"x")  # framing is unambiguous


def test_the_keystream_written_into_a_buffer_is_the_same_keystream() -> None:
    seed = bytes(range(32))
    out = bytearray(4 * 1001)

    crypto.chacha20_keystream_into(seed, memoryview(out))

    assert bytes(out) == crypto.chacha20_keystream(seed, 4 * 1001)
    with pytest.raises(crypto.KeyFormatError, match="32 bytes"):
        crypto.chacha20_keystream_into(seed[:31], memoryview(out))


def test_pair_keys_with_many_peers_are_each_pairs_own_key() -> None:
    carol_private, carol_public = crypto.generate_x25519_key_pair()
    peers = {5: BOB_PUBLIC, 8: carol_public}
    context = {"run_id": 9, "round": 4, "purpose": "pairwise-mask"}

    keys = crypto.derive_pair_keys(ALICE, peers, me=3, **context)

    assert keys == {
        5: crypto.derive_pair_key(ALICE, BOB_PUBLIC, node_a=3, node_b=5, **context),
        8: crypto.derive_pair_key(ALICE, carol_public, node_a=3, node_b=8, **context),
    }
    backward = crypto.derive_pair_key(carol_private, ALICE_PUBLIC, node_a=8, node_b=3, **context)
    assert keys[8] == backward
    with pytest.raises(IntegrityError):
        crypto.derive_pair_keys(ALICE, {5: BOB_PUBLIC, 6: bytes(32)}, me=3, **context)
