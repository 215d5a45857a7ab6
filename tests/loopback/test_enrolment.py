"""A loopback fleet's registrations become a certified roster, as `fleet-server enroll` makes."""

from pathlib import Path

import pytest

from loopback.enrolment import EnrolledLoopback
from server.enrolment import load_roster
from ticket import crypto
from ticket.secagg.identity import certificate_statement


class _FakeFlower:
    def __init__(self) -> None:
        self.next_id = 500

    def register_node(self, public_key: Path, *, name: str) -> int:
        self.next_id += 1
        return self.next_id


def test_registered_node_keys_are_recorded_with_the_fleet_keys_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signing, public = crypto.generate_signing_key()
    (tmp_path / "fleet.key").write_bytes(signing)
    flower = _FakeFlower()
    monkeypatch.setattr(EnrolledLoopback, "cli", property(lambda self: flower))
    fleet = EnrolledLoopback(
        tmp_path / "work", tmp_path, [], fleet_signing_key=tmp_path / "fleet.key"
    )
    lines = {}
    for name in ("a", "b"):
        _, lines[name] = crypto.generate_node_auth_key(name)
        (tmp_path / f"{name}.pub").write_text(lines[name] + "\n")

        fleet.register_node(tmp_path / f"{name}.pub", name=name)

    roster = load_roster(fleet.roster_path)
    assert fleet.roster_path == tmp_path / "work" / "nodes.json"
    assert sorted(roster) == [501, 502]
    assert roster[502].identity == crypto.identity_of_public_line(lines["b"].encode())
    statement = certificate_statement(502, roster[502].identity)
    crypto.verify(public, statement, roster[502].certificate)
