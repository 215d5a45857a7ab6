"""The latest global model the server sent this device, kept for `edge-daemon predict`.

One file, `state_dir/model/latest.model`, replaced atomically (ticket/atomic.py):

    magic "TFMODEL\\0" | u32 header_len | header (JSON) | values (float32 little-endian [count])

The header names the ticket the values are packed over (ticket/packing.py's layout of its
mask), the run, the round and when it arrived, the values' count and SHA-256, and the ticket
the model replaced when it was of another ticket. No pickle, no numpy file format: a reader
parses a bounded JSON object and a flat float32 array, and refuses anything else.

What is kept is the global model as an instruction carried it, i.e. *before* this device's
local update: a train instruction of round r carries the aggregate after round r - 1. After a
run's last round R the server pushes the final aggregate (ticket/wire.py ModelPush), kept with
`final` set: the model after round R. A device offline then keeps the model of its last round
until the service delivers the final one at its next connection.

This module loads numpy only (not torch): `edge-daemon schema` reads headers without it.
"""

import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_daemon.state import StateError
from ticket.atomic import atomic_write_bytes, locked

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

MAGIC = b"TFMODEL\x00"
FORMAT = "ticketfleet/edge-daemon-model"
VERSION = 2  # 2 added `final`; a version 1 file reads as final = false
MAX_HEADER_BYTES = 64 * 1024
MAX_VALUES = 16 * 1024 * 1024  # 64 MiB of float32: the ticket size limit, never near in practice
_U32 = struct.Struct("<I")
_KEYS = {"format", "version", "ticket_id", "run_id", "server_round", "received_at"}
_KEYS |= {"count", "sha256", "replaced_ticket_id", "final"}


class ModelStoreError(StateError):
    """The stored model is unreadable, damaged, or not of the ticket asked for."""


class ModelOfAnotherTicketError(ModelStoreError):
    """The stored model is packed over another ticket's mask."""


@dataclass(frozen=True)
class ModelHeader:
    ticket_id: str  # content id of the ticket whose mask the values are packed over
    run_id: int
    server_round: (
        int  # final: the last round aggregated; else the round whose instruction carried it
    )
    received_at: datetime  # timezone-aware
    count: int  # float32 values
    sha256: str  # of the values' bytes
    replaced_ticket_id: str | None = None  # the previous model's ticket, when it was another
    final: bool = False  # the run's final model, pushed after its last round

    @property
    def after_round(self) -> int:
        """How many of the run's rounds are aggregated into the values."""
        return self.server_round if self.final else max(0, self.server_round - 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "ticket_id": self.ticket_id,
            "run_id": self.run_id,
            "server_round": self.server_round,
            "received_at": self.received_at.isoformat(),
            "count": self.count,
            "sha256": self.sha256,
            "replaced_ticket_id": self.replaced_ticket_id,
            "final": self.final,
        }

    @classmethod
    def from_json(cls, data: object) -> "ModelHeader":
        if isinstance(data, dict) and data.get("version") == 1 and "final" not in data:
            data = {**data, "version": VERSION, "final": False}  # written before `final`
        if not isinstance(data, dict) or set(data) != _KEYS:
            raise ValueError(f"expected an object with exactly the keys {sorted(_KEYS)}")
        if data["format"] != FORMAT or data["version"] != VERSION or type(data["version"]) is bool:
            raise ValueError(f"expected format {FORMAT!r} version {VERSION}")
        if type(data["final"]) is not bool:
            raise ValueError("final: expected true or false")
        whole = ("run_id", "server_round", "count")
        if not all(type(data[key]) is int and data[key] >= 0 for key in whole):
            raise ValueError(f"{', '.join(whole)}: expected whole numbers >= 0")
        if not _is_id(data["ticket_id"]) or not (
            data["replaced_ticket_id"] is None or _is_id(data["replaced_ticket_id"])
        ):
            raise ValueError("ticket_id: expected a content id (64 hex digits)")
        digest = data["sha256"]
        if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
            raise ValueError("sha256: expected 64 hex digits")
        try:
            at = datetime.fromisoformat(data["received_at"])
        except (TypeError, ValueError):
            raise ValueError("received_at: expected an ISO 8601 time") from None
        if at.tzinfo is None:
            raise ValueError("received_at: expected a timezone")
        return cls(
            data["ticket_id"],
            data["run_id"],
            data["server_round"],
            at,
            data["count"],
            digest,
            data["replaced_ticket_id"],
            data["final"],
        )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _is_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and _is_hex(value)


def save_model(
    path: Path,
    values: "npt.NDArray[np.float32]",
    *,
    ticket_id: str,
    run_id: int,
    server_round: int,
    received_at: datetime,
    final: bool = False,
    replace_later: bool = False,
) -> bool:
    """Keep `values` unless the stored model is a later one of the same run and ticket.

    True when written. A model of another ticket or another run replaces the stored one: it is
    what the server sends now. `replace_later`: write whatever is stored (the personal model,
    whose record says which global model it came from). Serialised with other writers by a lock
    beside the file.
    """
    import numpy as np

    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with locked(path):
        try:
            old: ModelHeader | None = read_header(path)
        except FileNotFoundError:
            old = None
        except ModelStoreError:
            old = None  # a damaged file is what this write repairs
        if (
            old is not None
            and not replace_later
            and (old.ticket_id, old.run_id) == (ticket_id, run_id)
            and (old.server_round, old.final) > (server_round, final)
        ):
            return False
        replaced = None
        if old is not None:
            replaced = old.replaced_ticket_id if old.ticket_id == ticket_id else old.ticket_id
        header = ModelHeader(
            ticket_id,
            run_id,
            server_round,
            received_at,
            len(data) // 4,
            hashlib.sha256(data).hexdigest(),
            replaced,
            final,
        )
        text = json.dumps(header.to_json(), sort_keys=True).encode()
        atomic_write_bytes(path, MAGIC + _U32.pack(len(text)) + text + data, mode=0o600)
    return True


def read_header(path: Path) -> ModelHeader:
    """The stored model's header, checked; FileNotFoundError when none was received yet."""
    with path.open("rb") as handle:
        return _header(handle.read(len(MAGIC) + _U32.size + MAX_HEADER_BYTES), path)[0]


def _header(data: bytes, path: Path) -> tuple[ModelHeader, int]:
    prefix = len(MAGIC) + _U32.size
    if len(data) < prefix or not data.startswith(MAGIC):
        raise ModelStoreError(f"{path}: not a stored model; move it aside")
    (size,) = _U32.unpack_from(data, len(MAGIC))
    if size > MAX_HEADER_BYTES or len(data) < prefix + size:
        raise ModelStoreError(f"{path}: header truncated or too large; move it aside")
    try:
        header = ModelHeader.from_json(json.loads(data[prefix : prefix + size]))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelStoreError(f"{path}: bad header ({error}); move it aside") from None
    if header.count > MAX_VALUES:
        raise ModelStoreError(f"{path}: {header.count} values is past the limit; move it aside")
    return header, prefix + size


def load_model(
    path: Path, *, ticket_id: str, count: int
) -> tuple[ModelHeader, "npt.NDArray[np.float32]"]:
    """The stored values for `ticket_id`, exactly `count` of them (its layout's size).

    FileNotFoundError: none received yet. ModelOfAnotherTicketError: packed over another
    ticket's mask. ModelStoreError: truncated, altered, or the wrong size for the ticket.
    """
    import numpy as np

    with path.open("rb") as handle:
        data = handle.read(len(MAGIC) + _U32.size + MAX_HEADER_BYTES + 4 * MAX_VALUES + 1)
    header, start = _header(data, path)
    if header.ticket_id != ticket_id:
        raise ModelOfAnotherTicketError(
            f"{path}: holds a model of ticket {header.ticket_id[:12]}, not {ticket_id[:12]}"
        )
    if header.count != count:
        raise ModelStoreError(
            f"{path}: {header.count} values, ticket {ticket_id[:12]} keeps {count}; move it aside"
        )
    body = data[start:]
    if len(body) != 4 * count or hashlib.sha256(body).hexdigest() != header.sha256:
        raise ModelStoreError(f"{path}: values truncated or altered; move it aside")
    values = np.frombuffer(body, dtype="<f4").astype(np.float32)  # a private, writable copy
    if not np.isfinite(values).all():
        raise ModelStoreError(f"{path}: values not finite; move it aside")
    return header, values
