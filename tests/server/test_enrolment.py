"""Enrolment: a node's key file read strictly, records kept, merged with Flower's node list."""

import json
from pathlib import Path

import pytest

from server.enrolment import (
    RESERVED_NODE_IDS,
    Enrolment,
    EnrolmentError,
    EnrolmentRecords,
    check_node_id,
    load_roster,
    merge_nodes,
    read_node_key,
    secagg_certificate,
)
from ticket.crypto import (
    generate_node_auth_key,
    generate_signing_key,
    identity_of_public_line,
    verify,
)
from ticket.secagg.identity import certificate_statement


def _node_key(tmp_path: Path, name: str = "node.key.pub") -> Path:
    _, line = generate_node_auth_key("edge-daemon@clinic")
    path = tmp_path / name
    path.write_text(line + "\n")
    return path


def test_a_node_key_reads_as_its_line_and_openssh_fingerprint(tmp_path: Path) -> None:
    path = _node_key(tmp_path)

    line, fingerprint = read_node_key(path)

    assert line.startswith("ecdsa-sha2-nistp384 ") and line.endswith("edge-daemon@clinic")
    assert fingerprint.startswith("SHA256:") and len(fingerprint) == 7 + 43


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key\n", "not an OpenSSH public key line"),
        (generate_signing_key()[1], "not an OpenSSH public key line"),  # a PEM fleet key
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
         "not an ECDSA key on a NIST curve"),
        (b"\xff\xfe", "not an OpenSSH public key line"),
        (b"x" * 5000, "too large"),
    ],
)  # fmt: skip
def test_a_malformed_key_file_is_refused_naming_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(content)

    with pytest.raises(EnrolmentError, match=message) as caught:
        read_node_key(path)
    assert str(caught.value).startswith(str(path))


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EnrolmentError, match="no such file"):
        read_node_key(tmp_path / "nope.pub")


def test_records_are_kept_private_and_found_by_name_or_fingerprint(tmp_path: Path) -> None:
    records = EnrolmentRecords(tmp_path / "nodes.json")
    entry = Enrolment(
        42, "clinic-a", "SHA256:abc", "ecdsa-sha2-nistp384 AAAA", "2025-01-01T00:00:00"
    )

    records.add(entry)
    records.add(Enrolment(7, "clinic-b", "SHA256:def", "ecdsa-sha2-nistp384 BBBB", "2025-01-02"))

    assert records.find(name="clinic-a") == entry
    assert records.find(fingerprint="SHA256:def") is not None
    assert records.find(name="nobody") is None
    assert [e.name for e in records.read()] == ["clinic-a", "clinic-b"]
    assert (tmp_path / "nodes.json").stat().st_mode & 0o777 == 0o600


def test_damaged_records_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "nodes.json").write_text('{"nodes": [{"name": 1}]}')

    with pytest.raises(EnrolmentError, match="damaged enrolment records"):
        EnrolmentRecords(tmp_path / "nodes.json").read()


def test_nodes_merge_records_with_the_superlinks_list() -> None:
    records = [
        Enrolment(1, "online", "SHA256:a", "k", "t"),
        Enrolment(2, "offline", "SHA256:b", "k", "t"),
        Enrolment(3, "never", "SHA256:c", "k", "t"),
    ]
    listed = [
        {"node-id": "1", "status": "online", "online-at": "2025-01-01 10:00:00Z",
         "offline-at": "N/A"},
        {"node-id": "2", "status": "offline", "online-at": "2025-01-01 09:00:00Z",
         "offline-at": "2025-01-01 09:30:00Z"},
        {"node-id": "3", "status": "registered", "online-at": "N/A", "offline-at": "N/A"},
        {"node-id": "9", "status": "online", "online-at": "2025-01-01 10:00:00Z",
         "offline-at": "N/A"},
    ]  # fmt: skip

    rows = {row["node_id"]: row for row in merge_nodes(records, listed)}

    assert rows[1]["online"] and rows[1]["online_since"] == "2025-01-01 10:00:00Z"
    assert rows[1]["last_seen"] is not None
    assert not rows[2]["online"] and rows[2]["last_seen"] == "2025-01-01 09:30:00Z"
    assert rows[3]["status"] == "registered" and rows[3]["last_seen"] is None
    assert rows[9]["name"] is None  # registered some other way than `fleet-server enroll`


def test_without_a_superlink_online_state_is_unknown() -> None:
    rows = merge_nodes([Enrolment(1, "a", "SHA256:a", "k", "t")], None)

    assert rows[0]["status"] == "unknown" and rows[0]["online"] is False


def test_a_certified_record_reads_back_as_a_roster_entry_the_fleet_key_vouches_for(
    tmp_path: Path,
) -> None:
    signing, public = generate_signing_key()
    line, fingerprint = read_node_key(_node_key(tmp_path))
    records = EnrolmentRecords(tmp_path / "nodes.json")
    certificate = secagg_certificate(signing, 42, line)
    records.add(
        Enrolment(42, "clinic", fingerprint, line, "2026-01-01T00:00:00+00:00", certificate)
    )
    records.add(Enrolment(43, "old", "SHA256:x", line, "2026-01-01T00:00:00+00:00"))  # no cert

    roster = load_roster(tmp_path / "nodes.json")

    assert set(roster) == {42}
    assert roster[42].identity == identity_of_public_line(line.encode())
    verify(public, certificate_statement(42, roster[42].identity), roster[42].certificate)


def test_a_key_of_another_curve_gets_no_certificate(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)

    assert secagg_certificate(generate_signing_key()[0], 42, line.decode()) == ""


def test_a_damaged_certificate_is_an_error_naming_the_node(tmp_path: Path) -> None:
    line, fingerprint = read_node_key(_node_key(tmp_path))
    records = EnrolmentRecords(tmp_path / "nodes.json")
    records.add(Enrolment(42, "clinic", fingerprint, line, "2026-01-01T00:00:00+00:00", "zz"))

    with pytest.raises(EnrolmentError, match=r"nodes\.json: node 42"):
        load_roster(tmp_path / "nodes.json")


def test_reserved_node_ids_are_the_secagg_server_and_flowers_superlink() -> None:
    from flwr.common.constant import SUPERLINK_NODE_ID

    from ticket.secagg.messages import SERVER

    assert {SERVER, SUPERLINK_NODE_ID} == RESERVED_NODE_IDS


@pytest.mark.parametrize(
    ("node_id", "why"),
    [
        (0, "node id 0 is reserved"),
        (1, "node id 1 is reserved"),
        (-5, "outside 2.."),
        (2**64, "outside 2.."),
        (True, "must be an integer"),
        ("7", "must be an integer"),
        (7.0, "must be an integer"),
    ],
)
def test_nodes_json_with_a_reserved_or_malformed_node_id_is_refused_by_name(
    tmp_path: Path, node_id: object, why: str
) -> None:
    path = tmp_path / "nodes.json"
    record = {
        "node_id": node_id,
        "name": "clinic-a",
        "fingerprint": "SHA256:x",
        "public_key": "ecdsa-sha2-nistp384 AAAA",
        "enrolled_at": "2026-12-04T00:00:00+00:00",
    }
    path.write_text(json.dumps({"nodes": [record]}))

    with pytest.raises(EnrolmentError, match=why) as raised:
        EnrolmentRecords(path).read()
    assert str(path) in str(raised.value) and "clinic-a" in str(raised.value)
    with pytest.raises(EnrolmentError, match=why):
        load_roster(path)  # the ServerApp's roster reads the same records


def test_an_enrolment_under_a_reserved_node_id_is_not_written(tmp_path: Path) -> None:
    records = EnrolmentRecords(tmp_path / "nodes.json")
    line = "ecdsa-sha2-nistp384 AAAA"
    records.add(Enrolment(7, "a", "SHA256:a", line, "2026-12-04T00:00:00+00:00"))

    with pytest.raises(EnrolmentError, match="enrolling 'b': node id 1 is reserved"):
        records.add(Enrolment(1, "b", "SHA256:b", line, "2026-12-04T00:00:00+00:00"))
    assert [entry.node_id for entry in records.read()] == [7]
    assert check_node_id(2**64 - 1, "x") == 2**64 - 1


def test_a_secure_run_needing_more_devices_than_are_enrolled_is_refused(tmp_path: Path) -> None:
    from server.secagg_round import SecAggPlan
    from server.strategy import RoundPlan
    from server.training_run import make_strategy
    from ticket.packing import PackLayout
    from ticket.runconfig import RunConfigError
    from ticket.train_config import TrainConfig

    signing, _ = generate_signing_key()
    line, fingerprint = read_node_key(_node_key(tmp_path))
    records = EnrolmentRecords(tmp_path / "nodes.json")
    for node in (42, 43):
        certificate = secagg_certificate(signing, node, line)
        records.add(Enrolment(node, f"n{node}", fingerprint, line, "2026-01-01", certificate))
    layout = PackLayout(("w",), ((3,),), {})
    plan = RoundPlan("t", TrainConfig(epochs=1, batch_size=1, lr=0.1), min_replies=1)

    def strategy(min_nodes: int) -> object:
        return make_strategy(
            layout,
            plan,
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_nodes=min_nodes,
            secagg=SecAggPlan(),
            dp=None,
            roster=tmp_path / "nodes.json",
        )

    assert strategy(2) is not None
    with pytest.raises(RunConfigError, match=r"nodes.json enrolls 2 device\(s\) .* needs 3"):
        strategy(3)
