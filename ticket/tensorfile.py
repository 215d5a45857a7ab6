"""A safe tensor container: named numpy arrays <-> (JSON table, raw bytes), strictly decoded.

No pickle and no code runs on load: a table of {name, dtype, shape, offset, nbytes} entries
describes a blob of little-endian, C-order bytes. The `.ticket` bundle embeds a table and a
blob; `write_tensor_file` / `read_tensor_file` wrap them in a standalone, checksummed file for
the resumable checkpoints of `ticket find`.
"""

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ticket.atomic import atomic_write_bytes
from ticket.errors import TicketError

# Names are the numpy dtype names; stored little-endian whatever the machine's byte order.
ALLOWED_DTYPES: Mapping[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float16", "uint8", "int8", "int64")
}
ENTRY_KEYS = frozenset({"name", "dtype", "shape", "offset", "nbytes"})

TENSOR_FILE_MAGIC = b"TFTENSR\x00"
TENSOR_FILE_VERSION = 1
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_CHECKSUM_BYTES = 32  # SHA-256 of everything before it


class TensorFileError(TicketError, ValueError):
    """A tensor table or blob (or a tensor file) is malformed; the message says how."""


# ---------------------------------------------------------------- JSON


def canonical_json(value: Any, *, allow_nan: bool = False) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, ASCII only, UTF-8."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=allow_nan
    )
    return text.encode("ascii")


def parse_json(data: bytes, *, allow_nan: bool = False) -> Any:
    """Parse ASCII JSON; raises ValueError (never RecursionError) for anything malformed."""

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not valid JSON")

    try:
        text = data.decode("ascii")
        if allow_nan:
            return json.loads(text)
        return json.loads(text, parse_constant=reject)
    except RecursionError as error:  # deeply nested input must not escape as a crash
        raise ValueError("JSON is nested too deeply") from error


# ---------------------------------------------------------------- table + blob


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> tuple[list[dict[str, Any]], bytes]:
    """(table, blob) for `tensors`, in the mapping's order."""
    table: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        dtype = ALLOWED_DTYPES.get(array.dtype.name)
        if dtype is None:
            raise TensorFileError(f"tensor {name!r} has dtype {array.dtype.name}; {_allowed()}")
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        table.append(
            {
                "name": name,
                "dtype": dtype.name,
                "shape": [int(n) for n in array.shape],
                "offset": offset,
                "nbytes": len(data),
            }
        )
        chunks.append(data)
        offset += len(data)
    return table, b"".join(chunks)


def decode_tensors(
    table: Any, blob: bytes, *, extra_keys: Iterable[str] = ()
) -> dict[str, np.ndarray]:
    """Strict inverse of `encode_tensors`; `extra_keys` may also appear in entries (ignored).

    Raises TensorFileError unless the entries tile `blob` exactly, in order, from offset 0.
    The arrays are fresh, writable, native-endian copies.
    """
    if not isinstance(table, list):
        raise TensorFileError("tensor table must be a list")
    allowed_keys = ENTRY_KEYS | set(extra_keys)
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, entry in enumerate(table):
        name, dtype, shape, nbytes = _check_entry(index, entry, allowed_keys, offset)
        if name in tensors:
            raise TensorFileError(f"tensor {name!r} appears twice")
        if offset + nbytes > len(blob):
            raise TensorFileError(f"tensor {name!r} runs past the end of the data")
        tensors[name] = (
            np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=offset)
            .reshape(shape)
            .astype(dtype.newbyteorder("="), copy=True)
        )
        offset += nbytes
    if offset != len(blob):
        raise TensorFileError(f"{len(blob) - offset} bytes after the last tensor")
    return tensors


def _check_entry(
    index: int, entry: Any, allowed_keys: frozenset[str] | set[str], offset: int
) -> tuple[str, np.dtype[Any], tuple[int, ...], int]:
    where = f"tensor table entry {index}"
    if not isinstance(entry, dict):
        raise TensorFileError(f"{where} must be an object")
    missing = sorted(ENTRY_KEYS - set(entry))
    unknown = sorted(set(entry) - allowed_keys)
    if missing or unknown:
        raise TensorFileError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise TensorFileError(f"{where}: name must be a non-empty string")
    where = f"tensor {name!r}"
    dtype = ALLOWED_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise TensorFileError(f"{where}: dtype {entry['dtype']!r} not allowed; {_allowed()}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        raise TensorFileError(f"{where}: shape must be a list of non-negative integers")
    if not _is_int(entry["offset"]) or entry["offset"] != offset:
        raise TensorFileError(f"{where}: offset must be {offset} (tensors are contiguous)")
    nbytes = math.prod(shape) * dtype.itemsize
    if not _is_int(entry["nbytes"]) or entry["nbytes"] != nbytes:
        raise TensorFileError(f"{where}: nbytes must be {nbytes} for its shape and dtype")
    return name, dtype, tuple(shape), nbytes


# ---------------------------------------------------------------- standalone files


def write_tensor_file(
    path: Path, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> None:
    """Write `tensors` and JSON-able `meta` to `path` atomically (all or nothing).

    Layout: magic "TFTENSR\\0" | u16 LE version | u32 LE header length | header (canonical JSON
    {"meta", "tensors"}) | blob | SHA-256 of everything before it.
    """
    table, blob = encode_tensors(tensors)
    # Checkpoint metrics may legitimately hold NaN (a diverged run); only Python reads these.
    header = canonical_json({"meta": dict(meta), "tensors": table}, allow_nan=True)
    data = _PREFIX.pack(TENSOR_FILE_MAGIC, TENSOR_FILE_VERSION, len(header)) + header + blob
    atomic_write_bytes(Path(path), data + hashlib.sha256(data).digest())


def read_tensor_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, meta) from a file written by `write_tensor_file`; TensorFileError if damaged."""
    data = Path(path).read_bytes()
    if len(data) < _PREFIX.size + _CHECKSUM_BYTES or not data.startswith(TENSOR_FILE_MAGIC):
        raise TensorFileError(f"{path}: not a tensor file")
    _, version, header_len = _PREFIX.unpack_from(data)
    if version != TENSOR_FILE_VERSION:
        raise TensorFileError(
            f"{path}: tensor file version {version}; this version reads {TENSOR_FILE_VERSION}"
        )
    content, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if hashlib.sha256(content).digest() != checksum or _PREFIX.size + header_len > len(content):
        raise TensorFileError(f"{path}: tensor file is corrupt (checksum mismatch)")
    try:
        header = parse_json(content[_PREFIX.size : _PREFIX.size + header_len], allow_nan=True)
    except ValueError as error:
        raise TensorFileError(f"{path}: header is not JSON: {error}") from error
    if not isinstance(header, dict) or set(header) != {"meta", "tensors"}:
        raise TensorFileError(f'{path}: header must be an object with "meta" and "tensors"')
    if not isinstance(header["meta"], dict):
        raise TensorFileError(f"{path}: meta must be an object")
    try:
        tensors = decode_tensors(header["tensors"], content[_PREFIX.size + header_len :])
    except TensorFileError as error:
        raise TensorFileError(f"{path}: {error}") from error
    return tensors, header["meta"]


# ---------------------------------------------------------------- helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _allowed() -> str:
    return f"allowed: {', '.join(ALLOWED_DTYPES)}"
