"""Enrolment records: which node keys the operator let in, under which names, and when.

`fleet-server enroll` registers a key with the SuperLink and records it in state_dir/nodes.json
(one object per node id: name, key fingerprint, public key line, enrolled_at, and the fleet
key's certificate of that key as the node's secure-aggregation identity). The SuperLink's
database knows nodes by id and status only; `fleet-server nodes` joins the two. The ServerApp
reads the certificates back as its roster (`load_roster`) and relays them with every key
bundle; the devices check them against the fleet key (ticket/secagg/identity.py).
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ticket import crypto
from ticket.atomic import atomic_write_text
from ticket.crypto import KeyFormatError, node_auth_fingerprint
from ticket.secagg import Enrolled, Roster, certify

MAX_KEY_BYTES = 4096  # an OpenSSH ECDSA public key line is a few hundred bytes
MAX_RECORDS_BYTES = 64 * 1024 * 1024  # nodes.json: about 1 KiB per node
# Node ids no device may hold: 0 is the server in secure aggregation's messages
# (ticket/secagg/messages.py SERVER), 1 is the SuperLink's own id in Flower's messages
# (flwr.common.constant.SUPERLINK_NODE_ID; Flower never gives it to a SuperNode).
RESERVED_NODE_IDS = frozenset({0, 1})
MAX_NODE_ID = 2**64 - 1  # Flower's node ids are unsigned 64-bit


class EnrolmentError(Exception):
    """A node key file is malformed, a name is taken, or the records file is damaged."""


@dataclass(frozen=True)
class Enrolment:
    node_id: int
    name: str
    fingerprint: str  # OpenSSH "SHA256:..." of the node's public key
    public_key: str  # the OpenSSH public key line as enrolled
    enrolled_at: str  # ISO 8601, UTC
    # hex Ed25519 signature by the fleet key: "this node id's secure-aggregation identity is
    # this key" (ticket/secagg/identity.py); "" for a record made before certificates, or for
    # a key of another curve than P-384 (such a node cannot join secure rounds)
    secagg_certificate: str = ""


def read_node_key(path: Path) -> tuple[str, str]:
    """(public key line, fingerprint) of a node's KEY.pub; EnrolmentError naming the file."""
    try:
        data = path.read_bytes()[: MAX_KEY_BYTES + 1]
    except FileNotFoundError:
        raise EnrolmentError(f"{path}: no such file") from None
    except OSError as error:
        raise EnrolmentError(f"{path}: cannot read: {error.strerror}") from None
    if len(data) > MAX_KEY_BYTES:
        raise EnrolmentError(f"{path}: too large for a node's public key")
    try:
        fingerprint = node_auth_fingerprint(data)
        line = data.decode("ascii").strip()
    except (KeyFormatError, UnicodeDecodeError) as error:
        reason = error if isinstance(error, KeyFormatError) else "not ASCII text"
        raise EnrolmentError(
            f"{path}: {reason}; expected the node's KEY.pub from `edge-daemon keygen`"
        ) from None
    if "\n" in line:
        raise EnrolmentError(f"{path}: holds more than one line; expected one public key")
    return line, fingerprint


def check_node_id(value: object, where: str) -> int:
    """`value` as a device's node id; EnrolmentError naming `where` for anything else: not an
    integer, out of range, or one of RESERVED_NODE_IDS."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnrolmentError(f"{where}: node id must be an integer, got {value!r}")
    if value in RESERVED_NODE_IDS:
        raise EnrolmentError(
            f"{where}: node id {value} is reserved (0: the secure-aggregation server, "
            "1: Flower's SuperLink); no device may hold it"
        )
    if not 0 < value <= MAX_NODE_ID:
        raise EnrolmentError(f"{where}: node id {value} is outside 2..{MAX_NODE_ID}")
    return value


class EnrolmentRecords:
    """state_dir/nodes.json, rewritten atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> list[Enrolment]:
        if not self.path.exists():
            return []
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_RECORDS_BYTES + 1)
            if len(raw) > MAX_RECORDS_BYTES:
                raise EnrolmentError(f"{self.path}: larger than {MAX_RECORDS_BYTES} bytes")
            data = json.loads(raw.decode("utf-8"))
            entries = [Enrolment(**entry) for entry in data["nodes"]]
        except (ValueError, KeyError, TypeError) as error:
            raise EnrolmentError(f"{self.path}: damaged enrolment records: {error}") from None
        for entry in entries:
            check_node_id(entry.node_id, f"{self.path}: node {entry.name!r}")
        return entries

    def find(self, *, name: str | None = None, fingerprint: str | None = None) -> Enrolment | None:
        for entry in self.read():
            if entry.name == name or entry.fingerprint == fingerprint:
                return entry
        return None

    def add(self, entry: Enrolment) -> None:
        check_node_id(entry.node_id, f"enrolling {entry.name!r}")
        entries = [e for e in self.read() if e.node_id != entry.node_id] + [entry]
        self._write(entries)

    def _write(self, entries: Sequence[Enrolment]) -> None:
        document = {"nodes": [asdict(entry) for entry in sorted(entries, key=_by_name)]}
        atomic_write_text(self.path, json.dumps(document, indent=2) + "\n", mode=0o600)


def _by_name(entry: Enrolment) -> str:
    return entry.name


def secagg_certificate(fleet_signing_key: bytes, node_id: int, public_line: str) -> str:
    """The fleet's certificate (hex) of a node-auth key as `node_id`'s secure-aggregation
    identity; "" if the key is not P-384, the only curve the protocol's adverts use."""
    try:
        identity = crypto.identity_of_public_line(public_line.encode("ascii"))
    except KeyFormatError:
        return ""
    return certify(fleet_signing_key, node_id, identity).hex()


def load_roster(path: Path) -> Roster:
    """{node id: certified identity} of every record in nodes.json that has a certificate;
    EnrolmentError naming the file and node if one is damaged."""
    roster: dict[int, Enrolled] = {}
    for entry in EnrolmentRecords(path).read():
        if not entry.secagg_certificate:
            continue
        try:
            identity = crypto.identity_of_public_line(entry.public_key.encode("ascii"))
            roster[entry.node_id] = Enrolled(identity, bytes.fromhex(entry.secagg_certificate))
        except (KeyFormatError, ValueError, UnicodeEncodeError) as error:
            raise EnrolmentError(f"{path}: node {entry.node_id}: {error}") from None
    return roster


def merge_nodes(
    records: Sequence[Enrolment], listed: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """One row per node: enrolment records joined with `flwr supernode list` by node id.

    `listed` None: the SuperLink is not running, so online state is unknown. A node the SuperLink
    lists without a record was registered some other way (name null).
    """
    by_id = {str(node.get("node-id")): node for node in listed or ()}
    rows: list[dict[str, Any]] = []
    for entry in records:
        node = by_id.pop(str(entry.node_id), None)
        rows.append(_row(entry.node_id, entry, node, is_known=listed is not None))
    for node_id, node in sorted(by_id.items()):
        if node.get("status") not in ("unregistered", "deleted"):
            rows.append(_row(int(node_id), None, node, is_known=True))
    return rows


def _row(
    node_id: int, entry: Enrolment | None, node: Mapping[str, Any] | None, *, is_known: bool
) -> dict[str, Any]:
    status = str(node.get("status")) if node else ("missing" if is_known else "unknown")
    online_at = _time(node.get("online-at")) if node else None
    offline_at = _time(node.get("offline-at")) if node else None
    last_seen = (
        datetime.now().astimezone().isoformat(timespec="seconds")
        if status == "online"
        else offline_at
    )
    return {
        "node_id": node_id,
        "name": entry.name if entry else None,
        "fingerprint": entry.fingerprint if entry else None,
        "enrolled_at": entry.enrolled_at if entry else None,
        "status": status,  # online, offline, registered (never connected), missing, unknown
        "online": status == "online",
        "online_since": online_at if status == "online" else None,
        "last_seen": last_seen,
    }


def _time(value: object) -> str | None:
    """Flower prints "N/A" for a time that never happened."""
    return None if value in (None, "", "N/A") else str(value)
