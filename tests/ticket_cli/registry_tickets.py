"""Tickets for the registry tests: real signed ones, and the bad ones a registry must refuse."""

import shutil
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

from tests.inprocess import find_ticket
from ticket import crypto
from ticket.bundle import build_ticket, read_ticket, sign_ticket, write_ticket
from ticket.manifest import DataSpec, ModelSpec
from ticket_cli.cli import main

GOLDEN = Path(__file__).resolve().parents[1] / "ticket" / "golden" / "tiny.ticket"


@dataclass(frozen=True)
class Tickets:
    fleet_key: Path
    fleet_pub: Path
    fleet_id: str
    other_pub: Path  # a well-formed key the fleet does not use
    dense: Path  # heart-mlp on heart-uci, density 0.5, signed by the fleet key
    sparse: Path  # heart-mlp on heart-uci, density ~0.2, signed by the fleet key
    digits: Path  # another model and task (its metrics only in `metrics.levels`), signed
    unsigned: Path  # `dense` without its signature
    foreign: Path  # `dense` signed only by another key
    tampered: Path  # `dense` with one byte of its body flipped

    def content_id(self, path: Path) -> str:
        return read_ticket(path, allow_unsigned=True).content_id


def make_tickets(directory: Path) -> Tickets:
    """Two tickets found for real (~2 s each), the rest derived from them in milliseconds."""
    directory.mkdir(parents=True, exist_ok=True)
    if main(["keygen", "--out", str(directory / "fleet")]) != 0:
        raise RuntimeError("ticket keygen failed")
    fleet_key, fleet_pub = directory / "fleet.key", directory / "fleet.pub"
    dense = find_ticket(directory / "dense.ticket", density=0.5, sign_key=fleet_key)
    sparse = find_ticket(directory / "sparse.ticket", density=0.2, sign_key=fleet_key)

    signed = read_ticket(dense, trusted_keys=[fleet_pub.read_bytes()])
    unsigned = directory / "unsigned.ticket"
    write_ticket(unsigned, replace(signed, signatures=()))

    other_key, other_pub_pem = crypto.generate_signing_key()
    other_pub = directory / "other.pub"
    other_pub.write_bytes(other_pub_pem)
    foreign = directory / "foreign.ticket"
    write_ticket(foreign, sign_ticket(replace(signed, signatures=()), other_key))

    tampered = directory / "tampered.ticket"
    data = bytearray(dense.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor blob, well before the trailer
    tampered.write_bytes(bytes(data))

    # The registry indexes the manifest only, so the golden tensors can stand in for a model
    # and a task that would take minutes to search.
    golden = read_ticket(GOLDEN, allow_unsigned=True)
    manifest = replace(
        golden.manifest,
        model=ModelSpec(name="lenet-300-100", args={}),
        data=DataSpec(name="mnist"),
    )
    digits = directory / "digits.ticket"
    ticket = build_ticket(manifest, golden.masks, golden.weights)
    write_ticket(digits, sign_ticket(ticket, fleet_key.read_bytes()))

    return Tickets(
        fleet_key=fleet_key,
        fleet_pub=fleet_pub,
        fleet_id=crypto.key_id(fleet_pub.read_bytes()),
        other_pub=other_pub,
        dense=dense,
        sparse=sparse,
        digits=digits,
        unsigned=unsigned,
        foreign=foreign,
        tampered=tampered,
    )


def flip_byte(path: Path, offset: int) -> None:
    """Flip one bit of a (possibly read-only) file in place."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def add_twin_row(index: Path, content_id: str, twin_id: str) -> None:
    """Copy the index row of `content_id` under `twin_id`: real ids almost never share a
    prefix of 8 hex characters, so an ambiguous prefix has to be made by hand."""
    with sqlite3.connect(index) as db:
        db.execute(
            "CREATE TEMP TABLE twin AS SELECT * FROM tickets WHERE content_id = ?", [content_id]
        )
        db.execute("UPDATE twin SET content_id = ?", [twin_id])
        db.execute("INSERT INTO tickets SELECT * FROM twin")
    db.close()


def copy_registry(source: Path, target: Path) -> Path:
    """A private copy of a registry for a test that damages or extends it."""
    shutil.copytree(source, target)
    return target
