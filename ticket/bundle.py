"""The `.ticket` file: manifest, masks and rewound weights W_k, a content id and signatures.

Byte layout (format version 1; docs/ticket-format.md has the details):

    magic "TICKETF\\0" | u16 version | u32 body_len | body | u32 trailer_len | trailer
    body    = u32 header_len | header (canonical JSON {"manifest", "tensors"}) | tensor blob
    trailer = canonical JSON {"content_id", "signatures": [{"alg", "key_id", "sig"}]}

The content id hashes the body, so it names the ticket's content; signatures sign the content
id, so adding one leaves the id unchanged. Decoding authenticates before it parses the body.

Reading, checking and writing tickets is numpy only: a device's ClientApp decodes its ticket
without importing torch (~220 MB and ~2 s per message). Only the functions that build or fill a
torch model (`load_ticket`, `check_against_model`, `to_torch_masks`) import it, when called.
"""

import base64
import hashlib
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ticket import crypto
from ticket.atomic import atomic_write_bytes
from ticket.bitmask import pack_mask, unpack_mask
from ticket.errors import BundleError, IntegrityError, TicketError, UnsignedTicketError
from ticket.manifest import Density, Manifest, measure_density
from ticket.tensorfile import (
    TensorFileError,
    canonical_json,
    decode_tensors,
    encode_tensors,
    parse_json,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

MAGIC = b"TICKETF\x00"
FORMAT_VERSION = 1
CONTENT_DOMAIN = b"ticketfleet.ticket.v1\x00"
SIGNATURE_DOMAIN = b"ticketfleet.ticket.signature.v1\x00"
SIGNATURE_ALG = "ed25519"

_MAGIC_VERSION = struct.Struct("<8sH")
_U32 = struct.Struct("<I")
_CORRUPT = "ticket file is corrupt or was modified"
_CONTENT_ID = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_DENSITY_TOLERANCE = 1e-9
# A ticket is refused before any parsing past these: no model of the registry comes near (the
# largest, MNIST's LeNet-300-100 dense, is ~1 MiB), and the hub takes uploads of this size.
MAX_TICKET_BYTES = 64 * 1024 * 1024
MAX_TRAILER_BYTES = 64 * 1024  # parsed before authentication: a content id and a few signatures


@dataclass(frozen=True)
class Signature:
    key_id: str  # crypto.key_id of the signer's public key
    signature: bytes  # Ed25519 over SIGNATURE_DOMAIN + the raw 32-byte content id


# eq=False: field-wise == would compare numpy arrays (ambiguous); content_id is the identity.
@dataclass(frozen=True, eq=False)
class Ticket:
    """A decoded or freshly built ticket. Arrays are read-only: the content id covers them."""

    manifest: Manifest  # as stored: to_json() is the header's manifest object
    masks: Mapping[str, np.ndarray]  # bool, full parameter shape, per prunable weight
    weights: Mapping[str, np.ndarray]  # float32, every model parameter; zero where pruned
    content_id: str  # hex SHA-256 of CONTENT_DOMAIN + body
    signatures: tuple[Signature, ...] = ()  # sorted by key_id, one per key


# ---------------------------------------------------------------- building and signing


def build_ticket(
    manifest: Manifest, masks: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]
) -> Ticket:
    """Validate the parts, copy them (read-only, sorted by name) and compute the content id."""
    try:
        document = parse_json(canonical_json(manifest.to_json()))  # exactly what a reader sees
    except (TypeError, ValueError) as error:
        raise BundleError(f"manifest is not plain JSON: {error}") from error
    stored = Manifest.from_json(document)  # checks the values a writer put in the fields
    frozen_masks, frozen_weights = _freeze_tensors(masks, weights)
    _check_density(stored.density, frozen_masks)
    body = _encode_body(stored, frozen_masks, frozen_weights)
    return Ticket(stored, frozen_masks, frozen_weights, _content_id(body))


def sign_ticket(ticket: Ticket, private_pem: bytes) -> Ticket:
    """`ticket` with this key's signature added, or replaced if the key had signed it already."""
    signer = crypto.key_id(crypto.public_key_of(private_pem))
    signature = Signature(signer, crypto.sign(private_pem, _signature_message(ticket.content_id)))
    others = [s for s in ticket.signatures if s.key_id != signer]
    return replace(ticket, signatures=tuple(sorted([*others, signature], key=_by_key_id)))


def to_torch_masks(ticket: Ticket) -> "dict[str, torch.Tensor]":
    """The masks as (writable, independent) bool tensors."""
    import torch

    return {name: torch.from_numpy(mask.copy()) for name, mask in ticket.masks.items()}


# ---------------------------------------------------------------- bytes


def encode_ticket(ticket: Ticket) -> bytes:
    body = _encode_body(ticket.manifest, ticket.masks, ticket.weights)
    if _content_id(body) != ticket.content_id:
        # A Ticket edited with dataclasses.replace would otherwise carry a stale id and signatures.
        raise BundleError("ticket's content id does not match its content; use build_ticket")
    trailer = _encode_trailer(ticket.content_id, ticket.signatures)
    return b"".join(
        [
            _MAGIC_VERSION.pack(MAGIC, FORMAT_VERSION),
            _U32.pack(len(body)),
            body,
            _U32.pack(len(trailer)),
            trailer,
        ]
    )


def decode_ticket(
    data: bytes,
    *,
    trusted_keys: Sequence[bytes] = (),
    allow_unsigned: bool = False,
    max_bytes: int = MAX_TICKET_BYTES,
) -> Ticket:
    """Check size, integrity, then signatures, then parse; see `check_signatures` for the trust
    rule.

    Raises BundleError (over `max_bytes`, not a ticket, unsupported version, malformed content),
    IntegrityError (modified bytes, bad or untrusted signature) or UnsignedTicketError.
    """
    if len(data) > max_bytes:
        raise BundleError(f"a ticket of {len(data)} bytes is over the {max_bytes}-byte limit")
    body, trailer = _split_frame(data)
    content_id, signatures = _parse_trailer(trailer)
    if _content_id(body) != content_id:
        raise IntegrityError(_CORRUPT)
    check_signatures(
        content_id, signatures, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned
    )
    ticket = build_ticket(*_parse_body(body))
    if ticket.content_id != content_id:
        # Authentic bytes, but not the one encoding build_ticket produces: ids must be unique.
        raise BundleError("ticket body is not in canonical form")
    return replace(ticket, signatures=signatures)


def check_signatures(
    content_id: str,
    signatures: Sequence[Signature],
    *,
    trusted_keys: Sequence[bytes],
    allow_unsigned: bool,
) -> None:
    """Every signature by a trusted key must verify, and one must exist unless `allow_unsigned`.

    `allow_unsigned=True` accepts a ticket that no trusted key signed (unsigned, or signed by
    keys not given); a failing signature by a trusted key is refused regardless.
    """
    message = _signature_message(content_id)
    trusted = {crypto.key_id(pem): pem for pem in trusted_keys}
    is_verified = False
    for signature in signatures:
        if signature.key_id in trusted:
            try:
                crypto.verify(trusted[signature.key_id], message, signature.signature)
            except IntegrityError:
                raise IntegrityError(_CORRUPT) from None
            is_verified = True
    if is_verified or allow_unsigned:
        return
    if not signatures:
        raise UnsignedTicketError("ticket is not signed")
    signers = ", ".join(s.key_id for s in signatures)
    if trusted:
        raise IntegrityError(f"ticket is signed by key {signers}, which is not trusted")
    raise IntegrityError(f"ticket is signed by key {signers}, but no trusted key was given")


# ---------------------------------------------------------------- files and models


def read_ticket_bytes(path: Path, *, max_bytes: int = MAX_TICKET_BYTES) -> bytes:
    """A ticket file's bytes, no more than `max_bytes + 1` read; BundleError naming the file
    if it is larger (OSError as raised when it cannot be read)."""
    too_large = f"{path}: over the {max_bytes}-byte limit for a ticket"
    with Path(path).open("rb") as handle:
        if os.fstat(handle.fileno()).st_size > max_bytes:
            raise BundleError(too_large)  # refused before a byte is read
        data = handle.read(max_bytes + 1)  # a pipe has no size: read no more
    if len(data) > max_bytes:
        raise BundleError(too_large)
    return data


def read_ticket(
    path: Path,
    *,
    trusted_keys: Sequence[bytes] = (),
    allow_unsigned: bool = False,
    max_bytes: int = MAX_TICKET_BYTES,
) -> Ticket:
    data = read_ticket_bytes(path, max_bytes=max_bytes)
    return decode_ticket(
        data, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, max_bytes=max_bytes
    )


def write_ticket(path: Path, ticket: Ticket) -> None:
    """Write atomically: readers see the old file or the new one, never a mixture."""
    atomic_write_bytes(Path(path), encode_ticket(ticket))


def load_ticket(
    path: Path, *, trusted_keys: Sequence[bytes], allow_unsigned: bool
) -> "tuple[Ticket, nn.Module]":
    """Read and verify a ticket, build its model and load W_k into it."""
    import torch

    from ticket.models import build_model

    ticket = read_ticket(path, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
    spec = ticket.manifest.model
    try:
        model = build_model(spec.name, spec.args, seed=0)  # every weight is replaced below
    except TicketError as error:
        raise BundleError(f"the ticket's model cannot be built: {error}") from error
    check_against_model(ticket, model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.from_numpy(ticket.weights[name].copy()))
    return ticket, model


def check_against_model(ticket: Ticket, model: "nn.Module") -> None:
    """Raise BundleError naming the first parameter or mask that does not fit `model`."""
    from ticket.masks import prunable_names

    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, shape in shapes.items():
        if name not in ticket.weights:
            raise BundleError(f"ticket has no weights for model parameter {name!r}")
        if ticket.weights[name].shape != shape:
            raise BundleError(
                f"parameter {name!r}: ticket has shape {list(ticket.weights[name].shape)}, "
                f"model has {list(shape)}"
            )
    for name in ticket.weights:
        if name not in shapes:
            raise BundleError(f"ticket has weights {name!r}, which the model does not have")
    prunable = prunable_names(model)
    for name in prunable:
        if name not in ticket.masks:
            raise BundleError(f"ticket has no mask for prunable weight {name!r}")
    for name in ticket.masks:
        if name not in prunable:
            raise BundleError(f"ticket masks {name!r}, which is not a prunable weight")


# ---------------------------------------------------------------- body


def _freeze_tensors(
    masks: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    frozen_weights: dict[str, np.ndarray] = {}
    for name in sorted(weights):
        weight = weights[name]
        if weight.dtype != np.float32:
            raise BundleError(f"weight {name!r} must be float32, got {weight.dtype}")
        if not np.isfinite(weight).all():
            raise BundleError(f"weight {name!r} is not finite everywhere")
        if f"{name}.mask" in weights or f"{name}.values" in weights:
            raise BundleError(f"weight name {name!r} clashes with the names of another's mask")
        frozen_weights[name] = np.array(weight, dtype=np.float32, order="C")
    frozen_masks: dict[str, np.ndarray] = {}
    for name in sorted(masks):
        mask = masks[name]
        if name not in frozen_weights:
            raise BundleError(f"mask {name!r} does not name a weight")
        if mask.dtype != np.bool_ or mask.shape != frozen_weights[name].shape:
            raise BundleError(
                f"mask {name!r} must be bool of shape {list(frozen_weights[name].shape)}, "
                f"got {mask.dtype} of shape {list(mask.shape)}"
            )
        weight = frozen_weights[name]
        if weight[~mask].any():
            raise BundleError(f"weight {name!r} is not zero everywhere its mask is False")
        weight[~mask] = 0.0  # -0.0 -> +0.0: the wire stores only kept values
        frozen_masks[name] = np.array(mask, dtype=np.bool_, order="C")
    for array in [*frozen_weights.values(), *frozen_masks.values()]:
        array.flags.writeable = False
    return frozen_masks, frozen_weights


def _check_density(density: Density, masks: Mapping[str, np.ndarray]) -> None:
    actual = measure_density(masks)
    layers = density.layers
    for name in sorted(set(masks) | set(layers)):
        if name not in layers:
            raise BundleError(f"manifest.density.layers: missing masked layer {name!r}")
        if name not in masks:
            raise BundleError(f"manifest.density.layers: {name!r} has no mask")
        if abs(layers[name] - actual["layers"][name]) > _DENSITY_TOLERANCE:
            raise BundleError(
                f"manifest.density.layers.{name}: {layers[name]!r} does not match its mask "
                f"({actual['layers'][name]!r})"
            )
    if abs(density.overall - actual["overall"]) > _DENSITY_TOLERANCE:
        raise BundleError(
            f"manifest.density.overall: {density.overall!r} does not match the masks "
            f"({actual['overall']!r})"
        )


def _encode_body(
    manifest: Manifest, masks: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]
) -> bytes:
    wire: dict[str, np.ndarray] = {}
    param_shapes: dict[str, list[int]] = {}
    for name, weight in weights.items():  # sorted by name: one encoding per ticket
        if name in masks:
            mask = masks[name]
            packed = pack_mask(mask)
            wire[f"{name}.mask"] = np.frombuffer(packed, dtype=np.uint8)  # [ceil(numel / 8)]
            wire[f"{name}.values"] = weight[mask]  # [kept], row-major
            param_shapes[f"{name}.mask"] = list(mask.shape)
        else:
            wire[name] = weight
    table, blob = encode_tensors(wire)
    for entry in table:
        if entry["name"] in param_shapes:
            entry["param_shape"] = param_shapes[entry["name"]]
    header = canonical_json({"manifest": manifest.to_json(), "tensors": table})
    return _U32.pack(len(header)) + header + blob


def _parse_body(body: bytes) -> tuple[Manifest, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(manifest, masks, weights) from an authenticated body; BundleError if malformed."""
    if len(body) < _U32.size or _U32.size + _U32.unpack_from(body)[0] > len(body):
        raise BundleError("ticket body is malformed: bad header length")
    header_end = _U32.size + _U32.unpack_from(body)[0]
    try:
        header = parse_json(body[_U32.size : header_end])
    except ValueError as error:
        raise BundleError(f"ticket header is not JSON: {error}") from error
    if not isinstance(header, dict) or set(header) != {"manifest", "tensors"}:
        raise BundleError('ticket header must be an object with keys "manifest" and "tensors"')
    if not isinstance(header["manifest"], dict):
        raise BundleError("manifest must be a JSON object")
    try:
        wire = decode_tensors(header["tensors"], body[header_end:], extra_keys={"param_shape"})
    except TensorFileError as error:
        raise BundleError(f"ticket tensors: {error}") from error
    param_shapes = {e["name"]: e["param_shape"] for e in header["tensors"] if "param_shape" in e}
    masks, weights = _unpack_wire(wire, param_shapes)
    return Manifest.from_json(header["manifest"]), masks, weights


def _unpack_wire(
    wire: Mapping[str, np.ndarray], param_shapes: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    masks: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    for wire_name, shape in param_shapes.items():
        name = wire_name.removesuffix(".mask")
        packed, values = wire[wire_name], wire.get(f"{name}.values")
        if name == wire_name or values is None or packed.dtype != np.uint8 or packed.ndim != 1:
            raise BundleError(f"ticket tensors: {wire_name!r} is not a mask with values")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise BundleError(f"ticket tensors: {wire_name!r} has a bad param_shape")
        try:
            mask = unpack_mask(packed.tobytes(), tuple(shape))
        except ValueError as error:
            raise BundleError(f"ticket tensors: {wire_name!r}: {error}") from error
        if values.dtype != np.float32 or values.shape != (int(mask.sum()),):
            raise BundleError(f"ticket tensors: {name!r} needs {int(mask.sum())} float32 values")
        weight = np.zeros(mask.shape, dtype=np.float32)
        weight[mask] = values
        masks[name], weights[name] = mask, weight
    for wire_name, array in wire.items():
        if wire_name in param_shapes or wire_name.removesuffix(".values") in masks:
            continue
        if array.dtype != np.float32 or wire_name in weights:
            raise BundleError(f"ticket tensors: {wire_name!r} is not a float32 weight")
        weights[wire_name] = array
    return masks, weights


# ---------------------------------------------------------------- frame and trailer


def _split_frame(data: bytes) -> tuple[bytes, bytes]:
    """(body, trailer); BundleError for the wrong magic or version, IntegrityError otherwise."""
    if not data.startswith(MAGIC):
        raise BundleError("not a ticket file")
    if len(data) < _MAGIC_VERSION.size:
        raise IntegrityError(_CORRUPT)
    _, version = _MAGIC_VERSION.unpack_from(data)
    if version != FORMAT_VERSION:
        raise BundleError(
            f"ticket format version {version} is not supported; "
            f"this version of ticketfleet reads version {FORMAT_VERSION}"
        )
    body_at = _MAGIC_VERSION.size + _U32.size
    if len(data) < body_at:
        raise IntegrityError(_CORRUPT)
    trailer_len_at = body_at + _U32.unpack_from(data, _MAGIC_VERSION.size)[0]
    if len(data) < trailer_len_at + _U32.size:
        raise IntegrityError(_CORRUPT)
    trailer_at = trailer_len_at + _U32.size
    trailer_len = _U32.unpack_from(data, trailer_len_at)[0]
    if len(data) != trailer_at + trailer_len:
        raise IntegrityError(_CORRUPT)  # truncated, or bytes after the trailer
    if trailer_len > MAX_TRAILER_BYTES:
        raise IntegrityError(_CORRUPT)  # as every unauthenticated trailer it cannot take
    return data[body_at:trailer_len_at], data[trailer_at:]


def _parse_trailer(trailer: bytes) -> tuple[str, tuple[Signature, ...]]:
    # Parsed before anything is authenticated: strict, and every failure is the same error.
    try:
        document = parse_json(trailer)
        content_id = document["content_id"]
        entries = document["signatures"]
        signatures = tuple(
            Signature(entry["key_id"], base64.b64decode(entry["sig"], validate=True))
            for entry in entries
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        raise IntegrityError(_CORRUPT) from None
    is_valid = (
        isinstance(content_id, str)
        and _CONTENT_ID.fullmatch(content_id) is not None
        and all(isinstance(s.key_id, str) and _KEY_ID.fullmatch(s.key_id) for s in signatures)
        and all(len(s.signature) == crypto.SIGNATURE_BYTES for s in signatures)
        and all(entry.get("alg") == SIGNATURE_ALG for entry in entries)
        and len({s.key_id for s in signatures}) == len(signatures)
        # Byte-equal to a fresh encoding: no extra keys, no reordering, one base64 per sig.
        and _encode_trailer(content_id, signatures) == trailer
    )
    if not is_valid:
        raise IntegrityError(_CORRUPT)
    return content_id, signatures


def _encode_trailer(content_id: str, signatures: Sequence[Signature]) -> bytes:
    entries = [
        {"alg": SIGNATURE_ALG, "key_id": s.key_id, "sig": base64.b64encode(s.signature).decode()}
        for s in sorted(signatures, key=_by_key_id)
    ]
    return canonical_json({"content_id": content_id, "signatures": entries})


def _content_id(body: bytes) -> str:
    return hashlib.sha256(CONTENT_DOMAIN + body).hexdigest()


def _signature_message(content_id: str) -> bytes:
    return SIGNATURE_DOMAIN + bytes.fromhex(content_id)


def _by_key_id(signature: Signature) -> str:
    return signature.key_id
