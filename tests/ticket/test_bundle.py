"""The .ticket bundle: round trips, the pinned golden file, and every way decoding must fail.

Regenerate the golden file (a conscious format change) with:
    .venv/bin/python tests/ticket/test_bundle.py
then update the pinned hashes below from what it prints.
"""

import base64
import copy
import hashlib
import json
import re
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ticket import bundle, crypto
from ticket.bundle import (
    Signature,
    Ticket,
    build_ticket,
    check_against_model,
    decode_ticket,
    encode_ticket,
    load_ticket,
    read_ticket,
    sign_ticket,
    to_torch_masks,
    write_ticket,
)
from ticket.errors import BundleError, IntegrityError, TicketError, UnsignedTicketError
from ticket.manifest import Manifest, measure_density
from ticket.models import build_model
from ticket.tensorfile import decode_tensors, encode_tensors

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_TICKET = GOLDEN / "tiny.ticket"
# A throwaway key committed for the golden file only; it signs nothing else.
SIGNER_KEY = (GOLDEN / "test-signer.key").read_bytes()
SIGNER_PUB = (GOLDEN / "test-signer.pub").read_bytes()

# Pinned: changing any of these is a format change (see the module docstring).
GOLDEN_SHA256 = "b65879b9975a224499409e97f61aae3f528b9899bab0a231e528420ee97b471b"
GOLDEN_CONTENT_ID = "e967cb47ca54b2a4fc5ff6ec3f3a5fac64be0116c5e04bdd1aa86d6073c9626c"
GOLDEN_SIGNER_ID = "d30fe813d618ee97"

TINY_ARGS = {"in_features": 4, "hidden": [3], "num_classes": 2}
CORRUPT = "ticket file is corrupt or was modified"


def golden_parts() -> tuple[Manifest, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(manifest, masks, weights) of the golden ticket: heart-mlp 4-3-2 with a fixed mask."""
    document, masks, weights = golden_json_parts()
    return Manifest.from_json(document), masks, weights


def golden_json_parts() -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """golden_parts with the manifest as its JSON object, for tests that edit it.

    The weights follow a formula, not the seed-0 init, so a torch upgrade that changes
    initialisation cannot move the pinned bytes; every value is exact in float32.
    """
    model = build_model("heart-mlp", TINY_ARGS, seed=0)
    weights: dict[str, np.ndarray] = {}
    start = 0
    for name, parameter in model.named_parameters():
        index = np.arange(start, start + parameter.numel())
        values = (index + 1) * np.where(index % 2 == 0, 1.0, -1.0) / 16  # 1/16, -2/16, 3/16, ...
        weights[name] = values.astype(np.float32).reshape(parameter.shape)
        start += parameter.numel()
    masks = {
        "fc1.weight": np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=bool),
        "fc2.weight": np.array([[1, 0, 1], [0, 0, 0]], dtype=bool),
    }
    for name, mask in masks.items():
        weights[name] = weights[name] * mask
    manifest = {
        "format_version": 1,
        "model": {"name": "heart-mlp", "args": TINY_ARGS},
        "data": {"name": "heart-uci", "sites": ["Cleveland"]},
        "method": {
            "name": "imp",
            "pruner": "magnitude-layerwise",
            "rates": {"rate": 0.2, "output_rate": None, "layer_rates": {}},
        },
        "rewind_step": 0,
        "density": {
            "overall": 0.4444444444444444,
            "layers": {"fc1.weight": 0.5, "fc2.weight": 0.3333333333333333},
        },
        "metrics": {
            "levels": [
                {
                    "level": 0,
                    "density": 1.0,
                    "ticket": {"accuracy": 0.75, "auc": 0.8125, "loss": 0.5},
                    "controls": {"random": {"accuracy": 0.75}},
                },
                {
                    "level": 1,
                    "density": 0.4444444444444444,
                    "ticket": {"accuracy": 0.8125, "auc": 0.875, "loss": 0.4375},
                    "controls": {"random": {"accuracy": 0.625}},
                },
            ]
        },
        "parent": None,
        "created_at": "2025-01-31T12:00:00Z",
    }
    return manifest, masks, weights


def _build(
    document: dict[str, Any], masks: dict[str, np.ndarray], weights: dict[str, np.ndarray]
) -> Ticket:
    return build_ticket(Manifest.from_json(document), masks, weights)


def golden_ticket() -> Ticket:
    return sign_ticket(build_ticket(*golden_parts()), SIGNER_KEY)


@pytest.fixture(scope="module")
def golden_bytes() -> bytes:
    return GOLDEN_TICKET.read_bytes()


@pytest.fixture(scope="module")
def other_key() -> tuple[bytes, bytes]:
    return crypto.generate_signing_key()


def _assert_same_ticket(decoded: Ticket, original: Ticket) -> None:
    assert decoded.content_id == original.content_id
    assert decoded.manifest == original.manifest
    assert decoded.signatures == original.signatures
    assert list(decoded.masks) == list(original.masks)
    assert list(decoded.weights) == list(original.weights)
    for name, mask in original.masks.items():
        assert decoded.masks[name].dtype == np.bool_
        np.testing.assert_array_equal(decoded.masks[name], mask)
    for name, weight in original.weights.items():
        assert decoded.weights[name].dtype == np.float32
        assert decoded.weights[name].tobytes() == weight.tobytes()


# ---------------------------------------------------------------- round trips and golden


def test_round_trip_keeps_masks_weights_manifest_id_and_signatures() -> None:
    ticket = golden_ticket()

    decoded = decode_ticket(encode_ticket(ticket), trusted_keys=[SIGNER_PUB])

    _assert_same_ticket(decoded, ticket)


def test_fresh_encoding_equals_the_committed_golden_file(golden_bytes: bytes) -> None:
    assert encode_ticket(golden_ticket()) == golden_bytes


def test_a_process_without_torch_decodes_the_golden_file_to_the_same_bits(
    golden_bytes: bytes,
) -> None:
    # A device's ClientApp reads tickets without torch (issue 14): its decode must give exactly
    # the masks and weights this process (torch loaded, tests/conftest.py) decodes.
    script = (
        "import sys, hashlib\n"
        "from ticket.bundle import read_ticket\n"
        f"ticket = read_ticket({str(GOLDEN_TICKET)!r}, trusted_keys=[{SIGNER_PUB!r}])\n"
        "digest = hashlib.sha256()\n"
        "for name in sorted(ticket.masks): digest.update(ticket.masks[name].tobytes())\n"
        "for name in sorted(ticket.weights): digest.update(ticket.weights[name].tobytes())\n"
        "print('torch' in sys.modules, ticket.content_id, digest.hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[2]
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True
    )
    here = decode_ticket(golden_bytes, trusted_keys=[SIGNER_PUB])
    digest = hashlib.sha256()
    for name in sorted(here.masks):
        digest.update(here.masks[name].tobytes())
    for name in sorted(here.weights):
        digest.update(here.weights[name].tobytes())

    assert completed.stdout.split() == ["False", here.content_id, digest.hexdigest()]


def test_golden_file_hash_content_id_and_signer_are_pinned(golden_bytes: bytes) -> None:
    ticket = decode_ticket(golden_bytes, trusted_keys=[SIGNER_PUB])

    assert hashlib.sha256(golden_bytes).hexdigest() == GOLDEN_SHA256
    assert ticket.content_id == GOLDEN_CONTENT_ID
    assert [s.key_id for s in ticket.signatures] == [GOLDEN_SIGNER_ID]


def _split(data: bytes) -> tuple[int, bytes, bytes]:
    """An independent reading of the documented layout: (version, body, trailer)."""
    magic, version, body_len = struct.unpack_from("<8sHI", data)
    assert magic == b"TICKETF\x00"
    body = data[14 : 14 + body_len]
    (trailer_len,) = struct.unpack_from("<I", data, 14 + body_len)
    trailer = data[18 + body_len :]
    assert len(trailer) == trailer_len
    return version, body, trailer


def test_golden_file_follows_the_documented_layout(golden_bytes: bytes) -> None:
    version, body, trailer = _split(golden_bytes)
    (header_len,) = struct.unpack_from("<I", body)
    header = json.loads(body[4 : 4 + header_len])
    trailer_doc = json.loads(trailer)

    assert version == 1
    assert (
        body[4 : 4 + header_len]
        == json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    )
    assert [(e["name"], e["dtype"], e["shape"]) for e in header["tensors"]] == [
        ("fc1.bias", "float32", [3]),
        ("fc1.weight.mask", "uint8", [2]),  # 12 bits, LSB first
        ("fc1.weight.values", "float32", [6]),
        ("fc2.bias", "float32", [2]),
        ("fc2.weight.mask", "uint8", [1]),
        ("fc2.weight.values", "float32", [2]),
    ]
    assert header["tensors"][1]["param_shape"] == [3, 4]
    blob = body[4 + header_len :]
    assert blob[12:14] == bytes([0b01101001, 0b0011])  # fc1 mask rows 1001 0110 1100, LSB first
    assert (
        trailer_doc["content_id"] == hashlib.sha256(b"ticketfleet.ticket.v1\x00" + body).hexdigest()
    )
    [entry] = trailer_doc["signatures"]
    message = b"ticketfleet.ticket.signature.v1\x00" + bytes.fromhex(trailer_doc["content_id"])
    crypto.verify(SIGNER_PUB, message, base64.b64decode(entry["sig"]))
    assert entry["alg"] == "ed25519"


@st.composite
def random_parts(
    draw: st.DrawFn,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    in_features, hidden = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    model = build_model("heart-mlp", {"in_features": in_features, "hidden": [hidden]}, seed=0)
    weights, masks = {}, {}
    for name, parameter in model.named_parameters():
        shape = tuple(parameter.shape)
        finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
        weights[name] = draw(hnp.arrays(np.float32, shape, elements=finite))
        if name.endswith(".weight"):
            masks[name] = draw(hnp.arrays(np.bool_, shape))
            weights[name] = np.where(masks[name], weights[name], np.float32(0))
    manifest = copy.deepcopy(golden_json_parts()[0])
    manifest["model"]["args"] = {"in_features": in_features, "hidden": [hidden]}
    manifest["density"] = measure_density(masks)
    return manifest, masks, weights


@settings(max_examples=40, deadline=None)
@given(random_parts())
def test_any_ticket_round_trips_bit_exactly(
    parts: tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]],
) -> None:
    ticket = _build(*parts)

    encoded = encode_ticket(ticket)
    decoded = decode_ticket(encoded, allow_unsigned=True)

    _assert_same_ticket(decoded, ticket)
    assert encode_ticket(decoded) == encoded


def test_content_id_ignores_the_order_parts_were_given_in() -> None:
    manifest, masks, weights = golden_parts()
    reordered = dict(reversed(list(weights.items())))

    assert (
        build_ticket(manifest, masks, reordered).content_id
        == build_ticket(*golden_parts()).content_id
    )


def test_write_then_read_ticket(tmp_path: Path) -> None:
    path = tmp_path / "t.ticket"

    write_ticket(path, golden_ticket())

    _assert_same_ticket(read_ticket(path, trusted_keys=[SIGNER_PUB]), golden_ticket())
    assert [p.name for p in tmp_path.iterdir()] == ["t.ticket"]


def test_ticket_arrays_are_read_only() -> None:
    ticket = build_ticket(*golden_parts())

    with pytest.raises(ValueError):
        ticket.weights["fc1.bias"][0] = 1.0
    with pytest.raises(ValueError):
        ticket.masks["fc1.weight"][0, 0] = False


def test_build_copies_its_inputs() -> None:
    manifest, masks, weights = golden_parts()
    ticket = build_ticket(manifest, masks, weights)

    weights["fc1.bias"][0] = 99.0
    manifest.metrics["levels"].clear()
    manifest.model.args["hidden"][0] = 7

    assert ticket.weights["fc1.bias"][0] != 99.0
    assert len(ticket.manifest.metrics["levels"]) == 2
    assert ticket.manifest.model.args["hidden"] == [3]


# ---------------------------------------------------------------- signing


def test_signing_does_not_change_the_content_id(other_key: tuple[bytes, bytes]) -> None:
    unsigned = build_ticket(*golden_parts())

    signed = sign_ticket(sign_ticket(unsigned, SIGNER_KEY), other_key[0])

    assert signed.content_id == unsigned.content_id
    assert [s.key_id for s in signed.signatures] == sorted(
        [GOLDEN_SIGNER_ID, crypto.key_id(other_key[1])]
    )


def test_signing_twice_with_one_key_replaces_its_signature() -> None:
    once = sign_ticket(build_ticket(*golden_parts()), SIGNER_KEY)

    twice = sign_ticket(once, SIGNER_KEY)

    assert len(twice.signatures) == 1
    assert encode_ticket(twice) == encode_ticket(once)


def test_a_ticket_edited_after_building_cannot_be_encoded() -> None:
    ticket = golden_ticket()
    edited = replace(ticket, manifest=replace(ticket.manifest, rewind_step=5))

    with pytest.raises(BundleError, match="content id does not match"):
        encode_ticket(edited)


# ---------------------------------------------------------------- trust


def test_unsigned_ticket_is_refused_by_default() -> None:
    data = encode_ticket(build_ticket(*golden_parts()))

    with pytest.raises(UnsignedTicketError, match="not signed"):
        decode_ticket(data)


def test_unsigned_ticket_is_refused_even_with_trusted_keys() -> None:
    data = encode_ticket(build_ticket(*golden_parts()))

    with pytest.raises(UnsignedTicketError):
        decode_ticket(data, trusted_keys=[SIGNER_PUB])


def test_allow_unsigned_accepts_an_unsigned_ticket_but_still_checks_its_content_id() -> None:
    data = bytearray(encode_ticket(build_ticket(*golden_parts())))
    assert decode_ticket(bytes(data), allow_unsigned=True).signatures == ()

    data[200] ^= 0x01  # inside the body

    with pytest.raises(IntegrityError, match=CORRUPT):
        decode_ticket(bytes(data), allow_unsigned=True)


def test_a_key_that_did_not_sign_is_refused(
    golden_bytes: bytes, other_key: tuple[bytes, bytes]
) -> None:
    with pytest.raises(
        IntegrityError, match=f"signed by key {GOLDEN_SIGNER_ID}, which is not trusted"
    ):
        decode_ticket(golden_bytes, trusted_keys=[other_key[1]])


def test_a_signed_ticket_without_trusted_keys_is_refused(golden_bytes: bytes) -> None:
    with pytest.raises(IntegrityError, match="no trusted key was given"):
        decode_ticket(golden_bytes)


def test_one_of_several_trusted_keys_is_enough(
    golden_bytes: bytes, other_key: tuple[bytes, bytes]
) -> None:
    ticket = decode_ticket(golden_bytes, trusted_keys=[other_key[1], SIGNER_PUB])

    assert ticket.content_id == GOLDEN_CONTENT_ID


def test_a_trusted_signature_among_untrusted_ones_is_enough(other_key: tuple[bytes, bytes]) -> None:
    data = encode_ticket(sign_ticket(golden_ticket(), other_key[0]))

    assert len(decode_ticket(data, trusted_keys=[SIGNER_PUB]).signatures) == 2


def test_a_bad_signature_by_a_trusted_key_is_refused_even_beside_a_good_one(
    other_key: tuple[bytes, bytes],
) -> None:
    ticket = sign_ticket(golden_ticket(), other_key[0])
    other_id = crypto.key_id(other_key[1])
    forged = tuple(
        Signature(s.key_id, bytes(64)) if s.key_id == other_id else s for s in ticket.signatures
    )
    data = encode_ticket(replace(ticket, signatures=forged))

    with pytest.raises(IntegrityError, match=f"^{CORRUPT}$"):
        decode_ticket(data, trusted_keys=[SIGNER_PUB, other_key[1]])


def test_allow_unsigned_with_keys_accepts_an_untrusted_signer(
    golden_bytes: bytes, other_key: tuple[bytes, bytes]
) -> None:
    ticket = decode_ticket(golden_bytes, trusted_keys=[other_key[1]], allow_unsigned=True)

    assert ticket.content_id == GOLDEN_CONTENT_ID


def test_a_malformed_trusted_key_is_a_key_error(golden_bytes: bytes) -> None:
    with pytest.raises(crypto.KeyFormatError):
        decode_ticket(golden_bytes, trusted_keys=[SIGNER_KEY])


# ---------------------------------------------------------------- damaged bytes


def _expected_error(position: int) -> type[TicketError]:
    if position < 8:
        return BundleError  # the magic: "not a ticket file"
    if position < 10:
        return BundleError  # the version: "version N is not supported"
    return IntegrityError  # lengths, body, trailer


def test_flipping_any_bit_of_any_byte_is_detected(golden_bytes: bytes) -> None:
    for position in range(len(golden_bytes)):
        for bit in range(8):
            damaged = bytearray(golden_bytes)
            damaged[position] ^= 1 << bit
            with pytest.raises(TicketError) as caught:
                decode_ticket(bytes(damaged), trusted_keys=[SIGNER_PUB])
            expected = _expected_error(position)
            assert type(caught.value) is expected, (position, bit, caught.value)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_replacing_any_byte_of_an_unsigned_ticket_is_detected(data: st.DataObject) -> None:
    encoded = encode_ticket(build_ticket(*golden_parts()))
    position = data.draw(st.integers(0, len(encoded) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != encoded[position]))
    damaged = encoded[:position] + bytes([value]) + encoded[position + 1 :]

    with pytest.raises(TicketError) as caught:
        decode_ticket(damaged, allow_unsigned=True)

    assert type(caught.value) is _expected_error(position)


def test_every_truncation_is_detected(golden_bytes: bytes) -> None:
    for length in range(len(golden_bytes)):
        with pytest.raises(TicketError) as caught:
            decode_ticket(golden_bytes[:length], trusted_keys=[SIGNER_PUB])
        assert type(caught.value) is (BundleError if length < 8 else IntegrityError), length


@pytest.mark.parametrize("extra", [b"\x00", b"garbage", bytes(1000)])
def test_trailing_bytes_are_detected(golden_bytes: bytes, extra: bytes) -> None:
    with pytest.raises(IntegrityError, match=f"^{CORRUPT}$"):
        decode_ticket(golden_bytes + extra, trusted_keys=[SIGNER_PUB])


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04", b"\x80\x04\x95", b"TICKETF"])
def test_other_files_are_not_tickets(data: bytes) -> None:
    with pytest.raises(BundleError, match=r"^not a ticket file$"):
        decode_ticket(data, allow_unsigned=True)


def test_an_unknown_version_is_named(golden_bytes: bytes) -> None:
    data = golden_bytes[:8] + struct.pack("<H", 2) + golden_bytes[10:]

    with pytest.raises(BundleError) as caught:
        decode_ticket(data, trusted_keys=[SIGNER_PUB])

    assert not isinstance(caught.value, IntegrityError)
    assert "version 2 is not supported" in str(caught.value)
    assert "reads version 1" in str(caught.value)


def _reframe(golden_bytes: bytes, trailer: bytes) -> bytes:
    _, body, _ = _split(golden_bytes)
    return golden_bytes[:14] + body + struct.pack("<I", len(trailer)) + trailer


@pytest.mark.parametrize(
    "edit",
    [
        lambda doc: doc.update(extra=1),
        lambda doc: doc["signatures"][0].update(alg="rsa"),
        lambda doc: doc["signatures"].append(doc["signatures"][0]),  # the same key twice
        lambda doc: doc["signatures"][0].update(sig=doc["signatures"][0]["sig"][:-4]),
        lambda doc: doc.update(content_id=doc["content_id"].upper()),
        lambda doc: doc.update(signatures={}),
    ],
)
def test_a_non_canonical_or_malformed_trailer_is_refused(golden_bytes: bytes, edit: Any) -> None:
    doc = json.loads(_split(golden_bytes)[2])
    edit(doc)
    trailer = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    with pytest.raises(IntegrityError, match=f"^{CORRUPT}$"):
        decode_ticket(_reframe(golden_bytes, trailer), trusted_keys=[SIGNER_PUB])


def test_a_trailer_with_spaces_is_refused(golden_bytes: bytes) -> None:
    trailer = json.dumps(json.loads(_split(golden_bytes)[2])).encode()  # default separators

    with pytest.raises(IntegrityError):
        decode_ticket(_reframe(golden_bytes, trailer), trusted_keys=[SIGNER_PUB])


def test_a_deeply_nested_trailer_is_refused_not_crashed_on(golden_bytes: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_ticket(_reframe(golden_bytes, b"[" * 100_000), trusted_keys=[SIGNER_PUB])


# ---------------------------------------------------------------- authentic but malformed bodies


def _frame_unsigned(body: bytes) -> bytes:
    """A correctly framed, correctly hashed, unsigned ticket around any body."""
    content_id = hashlib.sha256(b"ticketfleet.ticket.v1\x00" + body).hexdigest()
    trailer = json.dumps(
        {"content_id": content_id, "signatures": []}, separators=(",", ":")
    ).encode()
    return (
        b"TICKETF\x00"
        + struct.pack("<HI", 1, len(body))
        + body
        + struct.pack("<I", len(trailer))
        + trailer
    )


def _body(header: Any, blob: bytes, **dumps: Any) -> bytes:
    text = json.dumps(header, **(dumps or {"sort_keys": True, "separators": (",", ":")})).encode()
    return struct.pack("<I", len(text)) + text + blob


def _golden_header() -> tuple[dict[str, Any], bytes]:
    _, body, _ = _split(GOLDEN_TICKET.read_bytes())
    (header_len,) = struct.unpack_from("<I", body)
    return json.loads(body[4 : 4 + header_len]), body[4 + header_len :]


def test_the_body_helpers_make_a_valid_ticket() -> None:
    header, blob = _golden_header()

    ticket = decode_ticket(_frame_unsigned(_body(header, blob)), allow_unsigned=True)

    assert ticket.content_id == GOLDEN_CONTENT_ID


def _retensor(header: dict[str, Any], blob: bytes, name: str, change: Any) -> tuple[Any, bytes]:
    """Header and blob with tensor `name` replaced by `change(tensor)`, offsets recomputed."""
    shapes = {e["name"]: e["param_shape"] for e in header["tensors"] if "param_shape" in e}
    tensors = decode_tensors(header["tensors"], blob, extra_keys={"param_shape"})
    tensors[name] = change(tensors[name])
    table, new_blob = encode_tensors(tensors)
    for entry in table:
        if entry["name"] in shapes:
            entry["param_shape"] = shapes[entry["name"]]
    return {**header, "tensors": table}, new_blob


def _edited_body(edit: Any) -> bytes:
    header, blob = _golden_header()
    edited = edit(header, blob)
    return _frame_unsigned(_body(*edited) if isinstance(edited, tuple) else _body(header, blob))


MALFORMED_BODIES: dict[str, tuple[Any, str]] = {
    "manifest misses a key": (lambda h, b: h["manifest"].pop("rewind_step"), "'rewind_step'"),
    "manifest key mistyped": (
        lambda h, b: h["manifest"]["model"].update(name=1),
        "manifest.model.name",
    ),
    "manifest not an object": (lambda h, b: h.update(manifest=[]), "manifest must be"),
    "header not an object": (lambda h, b: ([h], b), "header must be an object"),
    "header extra key": (lambda h, b: h.update(x=1), "header must be an object"),
    "density disagrees": (
        lambda h, b: h["manifest"]["density"]["layers"].update({"fc1.weight": 0.25}),
        "manifest.density.layers.fc1.weight",
    ),
    "table offset": (lambda h, b: h["tensors"][0].update(offset=4), "ticket tensors"),
    "values missing": (
        lambda h, b: h["tensors"][2].update(name="fc1.weight.valuez"),
        "fc1.weight.mask",
    ),
    "too few values": (
        lambda h, b: _retensor(h, b, "fc1.weight.values", lambda v: v[:5]),
        "needs 6",
    ),
    "values not float32": (
        lambda h, b: _retensor(h, b, "fc1.weight.values", lambda v: v.astype(np.float16)),
        "needs 6 float32 values",
    ),
    "mask stray bits": (lambda h, b: (h, b[:13] + b"\xff" + b[14:]), "padding bits"),
    "param_shape on a weight": (lambda h, b: h["tensors"][0].update(param_shape=[3]), "fc1.bias"),
    "bad param_shape": (lambda h, b: h["tensors"][1].update(param_shape=[-3, 4]), "param_shape"),
    "dense weight not float32": (
        lambda h, b: _retensor(h, b, "fc1.bias", lambda v: v.astype(np.int8)),
        "'fc1.bias' is not a float32 weight",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_BODIES))
def test_an_authentic_but_malformed_body_names_the_problem(case: str) -> None:
    edit, expected = MALFORMED_BODIES[case]

    with pytest.raises(BundleError) as caught:
        decode_ticket(_edited_body(edit), allow_unsigned=True)

    assert not isinstance(caught.value, IntegrityError)
    assert expected in str(caught.value)


def test_a_header_length_past_the_body_is_malformed() -> None:
    with pytest.raises(BundleError, match="header length"):
        decode_ticket(_frame_unsigned(struct.pack("<I", 99) + b"{}"), allow_unsigned=True)


def test_a_non_canonical_header_is_refused() -> None:
    header, blob = _golden_header()

    with pytest.raises(BundleError, match="canonical"):
        decode_ticket(_frame_unsigned(_body(header, blob, indent=1)), allow_unsigned=True)


def test_signatures_are_checked_before_the_body_is_parsed() -> None:
    # An unauthenticated body is never parsed: the trust failure wins over a bad manifest.
    data = _edited_body(lambda h, b: h["manifest"].pop("rewind_step"))

    with pytest.raises(UnsignedTicketError):
        decode_ticket(data)


# ---------------------------------------------------------------- building


def _build_error(edit: Any) -> str:
    manifest, masks, weights = golden_json_parts()
    edit(manifest, masks, weights)
    with pytest.raises(BundleError) as caught:
        _build(manifest, masks, weights)
    return str(caught.value)


def test_build_names_a_missing_manifest_key() -> None:
    assert "'created_at'" in _build_error(lambda m, k, w: m.pop("created_at"))


def test_build_refuses_a_pruned_weight_that_is_not_zero() -> None:
    message = _build_error(lambda m, k, w: w["fc2.weight"].__setitem__((1, 1), 0.5))

    assert "'fc2.weight' is not zero everywhere its mask is False" in message


def test_build_accepts_negative_zero_where_pruned_and_stores_positive_zero() -> None:
    manifest, masks, weights = golden_parts()
    weights["fc2.weight"][1, 1] = -0.0

    ticket = build_ticket(manifest, masks, weights)

    assert not np.signbit(ticket.weights["fc2.weight"][1, 1])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m, k, w: k.update(fc9=np.ones(2, dtype=bool)), "mask 'fc9' does not name a weight"),
        (
            lambda m, k, w: k.update({"fc1.weight": k["fc1.weight"].astype(np.uint8)}),
            "must be bool",
        ),
        (lambda m, k, w: k.update({"fc1.weight": k["fc1.weight"].T}), "of shape [3, 4]"),
        (lambda m, k, w: w.update({"fc1.bias": w["fc1.bias"].astype(np.float64)}), "float32"),
        (lambda m, k, w: w["fc1.bias"].__setitem__(0, np.nan), "not finite"),
        (lambda m, k, w: w.update({"fc1.weight.mask": w["fc1.bias"]}), "clashes"),
        (lambda m, k, w: m["density"].update(overall=0.5), "manifest.density.overall"),
        (
            lambda m, k, w: m["density"]["layers"].pop("fc2.weight"),
            "missing masked layer 'fc2.weight'",
        ),
        (lambda m, k, w: m["density"]["layers"].update(fc3=1.0), "'fc3' has no mask"),
        (lambda m, k, w: m["metrics"].update(x=np.float32(1)), "not plain JSON"),
        (lambda m, k, w: m["metrics"].update(x=float("nan")), "not plain JSON"),
    ],
)
def test_build_names_the_problem(edit: Any, expected: str) -> None:
    assert expected in _build_error(edit)


def test_density_is_checked_to_1e_9() -> None:
    manifest, masks, weights = golden_json_parts()
    manifest["density"]["layers"]["fc1.weight"] = 0.5 + 5e-10
    _build(manifest, masks, weights)  # within tolerance

    manifest["density"]["layers"]["fc1.weight"] = 0.5 + 2e-9

    with pytest.raises(BundleError, match=r"fc1\.weight"):
        _build(manifest, masks, weights)


# ---------------------------------------------------------------- models


def test_load_ticket_builds_the_model_and_loads_w_k(tmp_path: Path) -> None:
    path = tmp_path / "t.ticket"
    write_ticket(path, golden_ticket())

    ticket, model = load_ticket(path, trusted_keys=[SIGNER_PUB], allow_unsigned=False)

    for name, parameter in model.named_parameters():
        assert torch.equal(parameter.detach(), torch.from_numpy(ticket.weights[name].copy()))
    assert model(torch.ones(1, 4)).shape == (1, 2)


def test_load_ticket_verifies_trust(tmp_path: Path, other_key: tuple[bytes, bytes]) -> None:
    path = tmp_path / "t.ticket"
    write_ticket(path, golden_ticket())

    with pytest.raises(IntegrityError):
        load_ticket(path, trusted_keys=[other_key[1]], allow_unsigned=False)


def test_load_ticket_refuses_an_unknown_model(tmp_path: Path) -> None:
    manifest, masks, weights = golden_json_parts()
    manifest["model"]["name"] = "resnet-9000"
    path = tmp_path / "t.ticket"
    write_ticket(path, _build(manifest, masks, weights))

    with pytest.raises(BundleError, match=r"resnet-9000.*heart-mlp"):
        load_ticket(path, trusted_keys=(), allow_unsigned=True)


def test_shape_mismatch_names_the_parameter() -> None:
    model = build_model("heart-mlp", {**TINY_ARGS, "hidden": [5]}, seed=0)

    expected = r"parameter 'fc1.weight': ticket has shape \[3, 4\], model has \[5, 4\]"
    with pytest.raises(BundleError, match=expected):
        check_against_model(golden_ticket(), model)


def test_a_missing_parameter_is_named() -> None:
    deeper = build_model("heart-mlp", {**TINY_ARGS, "hidden": [3, 2]}, seed=0)

    with pytest.raises(BundleError, match=re.escape("no weights for model parameter 'fc3.weight'")):
        check_against_model(golden_ticket(), deeper)


def test_extra_weights_and_missing_masks_are_named() -> None:
    manifest, masks, weights = golden_json_parts()
    model = build_model("heart-mlp", TINY_ARGS, seed=0)
    unmasked = {"fc1.weight": masks["fc1.weight"]}
    manifest["density"] = measure_density(unmasked)
    extra = {**weights, "fc0.weight": np.zeros(2, dtype=np.float32)}

    with pytest.raises(BundleError, match=re.escape("no mask for prunable weight 'fc2.weight'")):
        check_against_model(_build(manifest, unmasked, weights), model)
    with pytest.raises(
        BundleError, match=re.escape("weights 'fc0.weight', which the model does not have")
    ):
        check_against_model(build_ticket(golden_parts()[0], masks, extra), model)


def test_to_torch_masks_gives_independent_bool_tensors() -> None:
    ticket = golden_ticket()

    masks = to_torch_masks(ticket)
    masks["fc1.weight"][0, 0] = False

    assert masks["fc1.weight"].dtype == torch.bool
    assert bool(ticket.masks["fc1.weight"][0, 0])


def test_bundle_code_never_unpickles() -> None:
    root = Path(__file__).resolve().parents[2] / "ticket"
    for module in ("bundle.py", "tensorfile.py", "manifest.py", "crypto.py"):
        source = (root / module).read_text()
        for forbidden in ("import pickle", "allow_pickle", "torch.load(", "np.load("):
            assert forbidden not in source, (module, forbidden)


def _write_golden() -> None:
    data = encode_ticket(golden_ticket())
    GOLDEN_TICKET.write_bytes(data)
    print(f'GOLDEN_SHA256 = "{hashlib.sha256(data).hexdigest()}"')
    print(f'GOLDEN_CONTENT_ID = "{golden_ticket().content_id}"')


if __name__ == "__main__":
    _write_golden()


# ---------------------------------------------------------------- size limits


def test_a_ticket_over_the_size_limit_is_refused_before_parsing(golden_bytes: bytes) -> None:
    limit = len(golden_bytes) - 1

    with pytest.raises(BundleError, match=f"over the {limit}-byte limit"):
        decode_ticket(golden_bytes, trusted_keys=[SIGNER_PUB], max_bytes=limit)

    assert decode_ticket(golden_bytes, trusted_keys=[SIGNER_PUB], max_bytes=limit + 1)


def test_a_ticket_file_over_the_limit_is_named_and_read_no_further(
    golden_bytes: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "big.ticket"
    path.write_bytes(golden_bytes)
    with path.open("ab") as handle:  # a sparse tail past the default limit: costs no disk
        handle.truncate(bundle.MAX_TICKET_BYTES + 1)

    with pytest.raises(BundleError, match=f"{path}: over the {bundle.MAX_TICKET_BYTES}-byte"):
        read_ticket(path, trusted_keys=[SIGNER_PUB])


def test_an_oversized_trailer_is_refused_before_it_is_parsed(
    golden_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, body, _ = _split(golden_bytes)
    trailer = b" " * (bundle.MAX_TRAILER_BYTES + 1)  # parsed before authentication
    framed = golden_bytes[:14] + body + struct.pack("<I", len(trailer)) + trailer

    def parse_json(data: bytes) -> Any:
        raise AssertionError("an oversized trailer was parsed")

    monkeypatch.setattr(bundle, "parse_json", parse_json)
    with pytest.raises(IntegrityError, match=CORRUPT):
        decode_ticket(framed, trusted_keys=[SIGNER_PUB])
