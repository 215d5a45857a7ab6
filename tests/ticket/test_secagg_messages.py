"""The secure-aggregation wire format: round trips, a pinned layout, strict decoding."""

import struct

import pytest

from ticket.secagg import SERVER, MessageError, SecAggParams, ShareKind
from ticket.secagg.messages import (
    SEALED_SHARES_BYTES,
    KeyAdvert,
    KeyBundle,
    MaskedInput,
    MaskRequest,
    Message,
    PublicKeys,
    ShareBundle,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from ticket.secagg.shamir import SHARE_BYTES

KEYS = PublicKeys(b"c" * 32, b"s" * 32, b"h" * 32)
SIGNED = SignedKeys(KEYS, b"i" * 49, b"g" * 96)
CERTIFIED = SignedKeys(KEYS, b"i" * 49, b"g" * 96, b"f" * 64)
SEALED = b"x" * SEALED_SHARES_BYTES
RUN, ROUND, NODE = 7, 3, 12

MESSAGES: list[Message] = [
    KeyAdvert(RUN, ROUND, NODE, SERVER, SIGNED),
    KeyBundle(
        RUN,
        ROUND,
        SERVER,
        NODE,
        SecAggParams(clip=1.0),
        (11, 12, 13),
        ((11, CERTIFIED), (13, SIGNED)),
    ),
    ShareBundle(RUN, ROUND, NODE, SERVER, b"v" * 32, ((11, SEALED), (13, SEALED))),
    MaskRequest(RUN, ROUND, SERVER, NODE, 5, (11, 12)),
    MaskedInput(RUN, ROUND, NODE, SERVER, 11, 5, bytes(7)),
    UnmaskRequest(RUN, ROUND, SERVER, NODE, (11, 12), (13,), ((11, SEALED), (13, SEALED))),
    UnmaskResponse(
        RUN,
        ROUND,
        NODE,
        SERVER,
        (
            (11, ShareKind.SEED, b"\x01" * SHARE_BYTES),
            (13, ShareKind.MASK_KEY, b"\x02" * SHARE_BYTES),
        ),
    ),
]


def _parse(message: Message, data: bytes, **change: int) -> Message:
    expected = {
        "run_id": message.run_id,
        "round": message.round,
        "sender": message.sender,
        "recipient": message.recipient,
    }
    return type(message).from_bytes(data, **(expected | change))


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    assert _parse(message, message.to_bytes()) == message


def test_the_header_layout_is_pinned() -> None:
    data = MESSAGES[0].to_bytes()
    assert data[:36] == b"TFSA" + bytes([2, 1, 0, 0]) + struct.pack("<QIQQ", RUN, ROUND, NODE, 0)
    assert data[36:] == KEYS.to_bytes() + b"i" * 49 + b"g" * 96
    assert (
        data.hex()[:72]
        == "54465341020100000700000000000000030000000c000000000000000000000000000000"
    )


def test_a_relayed_peer_carries_a_certificate_flag_then_the_certificate() -> None:
    data = MESSAGES[1].to_bytes()
    first = data.index(struct.pack("<Q", 11) + KEYS.to_bytes(), 36) + 8
    assert data[first : first + 96 + 49 + 96 + 1 + 64] == (
        KEYS.to_bytes() + b"i" * 49 + b"g" * 96 + b"\x01" + b"f" * 64
    )
    second = first + 96 + 49 + 96 + 1 + 64 + 8
    assert data[second + 96 + 49 + 96 :] == b"\x00"
    flag = bytearray(data)
    flag[first + 96 + 49 + 96] = 2
    with pytest.raises(MessageError, match="certificate flag must be 0 or 1, got 2"):
        _parse(MESSAGES[1], bytes(flag))


def test_an_advert_carries_no_certificate() -> None:
    with pytest.raises(MessageError, match="carries no certificate"):
        KeyAdvert(RUN, ROUND, NODE, SERVER, CERTIFIED)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"run_id": 8}, "another run"),
        ({"round": 4}, "another round"),
        ({"sender": 99}, "another sender"),
        ({"recipient": 99}, "another recipient"),
    ],
)
def test_another_run_round_or_node_is_rejected(
    message: Message, change: dict[str, int], match: str
) -> None:
    with pytest.raises(MessageError, match=match):
        _parse(message, message.to_bytes(), **change)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_truncation_and_trailing_bytes_are_rejected(message: Message) -> None:
    data = message.to_bytes()
    for cut in range(len(data)):
        with pytest.raises(MessageError):
            _parse(message, data[:cut])
    with pytest.raises(MessageError, match="trailing"):
        _parse(message, data + b"\x00")


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (0, b"X", "bad magic"),
        (4, b"\x01", "version 1 is not supported; this reads 2"),
        (5, b"\x05", "got MASKED_INPUT"),
        (5, b"\x63", "got 99"),
        (6, b"\x01", "reserved"),
    ],
)
def test_header_fields_are_checked(offset: int, value: bytes, match: str) -> None:
    data = bytearray(MESSAGES[0].to_bytes())
    data[offset : offset + 1] = value
    with pytest.raises(MessageError, match=match):
        _parse(MESSAGES[0], bytes(data))


def test_id_lists_must_be_strictly_increasing() -> None:
    data = MaskRequest(RUN, ROUND, SERVER, NODE, 5, (11, 12)).to_bytes()
    swapped = data[:-16] + struct.pack("<QQ", 12, 11)
    with pytest.raises(MessageError, match="increasing"):
        MaskRequest.from_bytes(swapped, run_id=RUN, round=ROUND, sender=SERVER, recipient=NODE)
    with pytest.raises(MessageError, match="increasing"):
        MaskRequest(RUN, ROUND, SERVER, NODE, 5, (12, 11)).to_bytes()


def test_a_mask_request_must_include_its_recipient() -> None:
    data = MaskRequest(RUN, ROUND, SERVER, NODE, 5, (11, 13)).to_bytes()
    with pytest.raises(MessageError, match="recipient"):
        MaskRequest.from_bytes(data, run_id=RUN, round=ROUND, sender=SERVER, recipient=NODE)


def test_a_key_bundle_cannot_list_keys_outside_the_cohort() -> None:
    bundle = KeyBundle(RUN, ROUND, SERVER, NODE, SecAggParams(clip=1.0), (11, 12), ((14, SIGNED),))
    with pytest.raises(MessageError, match="outside the cohort"):
        KeyBundle.from_bytes(
            bundle.to_bytes(), run_id=RUN, round=ROUND, sender=SERVER, recipient=NODE
        )


def test_a_key_bundle_with_bad_parameters_is_rejected() -> None:
    data = bytearray(MESSAGES[1].to_bytes())
    data[36:44] = struct.pack("<d", -1.0)  # clip
    with pytest.raises(MessageError, match="clip"):
        _parse(MESSAGES[1], bytes(data))


def test_a_masked_input_must_match_its_declared_size() -> None:
    data = MaskedInput(RUN, ROUND, NODE, SERVER, 11, 5, bytes(7)).to_bytes()
    with pytest.raises(MessageError, match="trailing"):
        MaskedInput.from_bytes(
            data + b"\x00", run_id=RUN, round=ROUND, sender=NODE, recipient=SERVER
        )
    zero_bits = data[:36] + b"\x00" + data[37:]
    with pytest.raises(MessageError, match="0 bits"):
        MaskedInput.from_bytes(zero_bits, run_id=RUN, round=ROUND, sender=NODE, recipient=SERVER)


def test_unknown_share_kinds_are_rejected() -> None:
    data = bytearray(MESSAGES[6].to_bytes())
    data[36 + 4 + 8] = 9  # the first entry's kind byte
    with pytest.raises(MessageError, match="share kind code 9"):
        _parse(MESSAGES[6], bytes(data))


def test_public_keys_of_the_wrong_size_are_rejected() -> None:
    with pytest.raises(MessageError, match="32 bytes"):
        PublicKeys(b"c" * 31, b"s" * 32, b"h" * 32)
    with pytest.raises(MessageError, match="identity key must be 49 bytes"):
        SignedKeys(KEYS, b"i" * 48, b"g" * 96)
    with pytest.raises(MessageError, match="advert signature must be 96 bytes"):
        SignedKeys(KEYS, b"i" * 49, b"g" * 64)
    with pytest.raises(MessageError, match="certificate must be 64 bytes"):
        SignedKeys(KEYS, b"i" * 49, b"g" * 96, b"f" * 63)


def test_a_node_claiming_the_servers_id_0_is_refused_at_every_entry_point() -> None:
    from ticket.secagg import ServerRound  # only this test needs the server
    from ticket.secagg.messages import KeyAdvert, PublicKeys

    keys = PublicKeys(bytes(32), bytes(range(32)), bytes(32))
    advert = KeyAdvert(1, 2, SERVER, SERVER, SignedKeys(keys, b"i" * 49, b"g" * 96)).to_bytes()
    with pytest.raises(MessageError, match="reserved for the server"):
        KeyAdvert.from_bytes(advert, run_id=1, round=2, sender=SERVER, recipient=SERVER)
    server = ServerRound(run_id=1, round=2, params=SecAggParams(clip=1.0, levels=16), length=3)
    with pytest.raises(MessageError, match="reserved for the server"):
        server.add_advert(SERVER, advert)
    assert server.keys == {}  # the refused advert left the round as it was
