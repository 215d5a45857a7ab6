"""The ticket cache: only tickets signed by the fleet key get in, stored by their content id."""

import shutil
from pathlib import Path

import pytest

from edge_daemon.paths import DaemonPaths
from edge_daemon.state import load_state
from edge_daemon.ticket_cache import (
    FleetKeyError,
    TicketCache,
    TicketNotCachedError,
    TicketRefusedError,
    TicketUnreadableError,
    install_ticket,
)
from tests.inprocess import find_ticket
from ticket.bundle import MAX_TICKET_BYTES, read_ticket
from ticket_cli.cli import main as ticket_cli


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for name in ("fleet", "other"):
        assert ticket_cli(["keygen", "--out", str(directory / name)]) == 0
    return directory


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Path:
    """unsigned.ticket, and the same ticket signed by the fleet key and by another key."""
    directory = tmp_path_factory.mktemp("tickets")
    unsigned = find_ticket(directory / "unsigned.ticket", density=0.5)
    for name in ("fleet", "other"):
        out = directory / f"{name}.ticket"
        assert (
            ticket_cli(
                ["sign", str(unsigned), "--key", str(keys / f"{name}.key"), "--out", str(out)]
            )
            == 0
        )
    return directory


@pytest.fixture
def cache(tmp_path: Path, keys: Path) -> TicketCache:
    return TicketCache(tmp_path / "state" / "tickets", keys / "fleet.pub")


def _refused(cache: TicketCache, source: Path | bytes) -> str:
    with pytest.raises(TicketRefusedError) as caught:
        cache.add(source)
    assert cache.ids() == ()
    assert not cache.tickets_dir.exists() or list(cache.tickets_dir.iterdir()) == []
    return str(caught.value)


def test_a_ticket_signed_by_the_fleet_key_is_stored_by_its_content_id(
    cache: TicketCache, tickets: Path
) -> None:
    expected = read_ticket(tickets / "fleet.ticket", allow_unsigned=True).content_id

    ticket_id = cache.add(tickets / "fleet.ticket")

    assert ticket_id == expected
    stored = cache.tickets_dir / f"{ticket_id}.ticket"
    assert stored.read_bytes() == (tickets / "fleet.ticket").read_bytes()
    assert cache.ids() == (ticket_id,)
    assert cache.has(ticket_id)
    assert cache.path(ticket_id) == stored


def test_bytes_are_accepted_too_and_adding_twice_keeps_one_copy(
    cache: TicketCache, tickets: Path
) -> None:
    data = (tickets / "fleet.ticket").read_bytes()

    first = cache.add(data)
    second = cache.add(data)

    assert first == second and cache.ids() == (first,)
    assert sorted(p.name for p in cache.tickets_dir.iterdir()) == [f"{first}.ticket"]


def test_a_tampered_byte_is_refused(cache: TicketCache, tickets: Path) -> None:
    data = bytearray((tickets / "fleet.ticket").read_bytes())
    data[len(data) // 2] ^= 0x01

    message = _refused(cache, bytes(data))

    assert "refused: ticket file is corrupt or was modified" in message


def test_an_unsigned_ticket_is_refused(cache: TicketCache, tickets: Path) -> None:
    message = _refused(cache, tickets / "unsigned.ticket")

    assert message.startswith(str(tickets / "unsigned.ticket"))  # names the file
    assert "refused: ticket is not signed" in message


def test_a_ticket_signed_by_another_key_is_refused(
    cache: TicketCache, tickets: Path, keys: Path
) -> None:
    other = read_ticket(tickets / "other.ticket", trusted_keys=[(keys / "other.pub").read_bytes()])

    message = _refused(cache, tickets / "other.ticket")

    assert f"signed by key {other.signatures[0].key_id}, which is not trusted" in message


def test_what_is_not_a_ticket_or_cannot_be_read_is_refused(
    cache: TicketCache, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("hello")

    assert "not a ticket file" in _refused(cache, tmp_path / "notes.txt")
    with pytest.raises(TicketUnreadableError, match=r"missing\.ticket: cannot read: No such file"):
        cache.add(tmp_path / "missing.ticket")  # a TicketRefusedError too, but the path's fault


def test_a_ticket_file_over_the_size_limit_is_refused_unread(
    cache: TicketCache, tickets: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.ticket"
    big.write_bytes((tickets / "fleet.ticket").read_bytes())
    with big.open("ab") as handle:  # sparse: no 64 MiB written
        handle.truncate(MAX_TICKET_BYTES + 1)

    message = _refused(cache, big)

    assert message == f"{big}: over the {MAX_TICKET_BYTES}-byte limit for a ticket"
    assert cache.ids() == ()


def test_a_missing_or_wrong_fleet_key_is_a_key_error_not_a_refusal(
    tmp_path: Path, tickets: Path, keys: Path
) -> None:
    missing = TicketCache(tmp_path / "tickets", tmp_path / "nope.pub")
    private = TicketCache(tmp_path / "tickets", keys / "fleet.key")

    with pytest.raises(FleetKeyError, match=r"nope\.pub: cannot read the fleet key"):
        missing.add(tickets / "fleet.ticket")
    with pytest.raises(
        FleetKeyError, match=r"fleet\.key: not a usable fleet key: this is a private"
    ):
        private.add(tickets / "fleet.ticket")
    assert not (tmp_path / "tickets").exists()


def test_path_verifies_the_stored_file_again(cache: TicketCache, tickets: Path) -> None:
    ticket_id = cache.add(tickets / "fleet.ticket")
    stored = cache.tickets_dir / f"{ticket_id}.ticket"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))

    with pytest.raises(TicketRefusedError, match="corrupt or was modified"):
        cache.path(ticket_id)


def test_path_refuses_a_file_that_holds_another_ticket(cache: TicketCache, tickets: Path) -> None:
    ticket_id = cache.add(tickets / "fleet.ticket")
    impostor = "0" * 64
    shutil.copy(cache.tickets_dir / f"{ticket_id}.ticket", cache.tickets_dir / f"{impostor}.ticket")

    assert cache.has(impostor)  # names only
    with pytest.raises(TicketRefusedError, match=f"holds ticket {ticket_id}, not the one its name"):
        cache.path(impostor)


def test_unknown_and_malformed_ids(cache: TicketCache) -> None:
    cache.tickets_dir.mkdir(parents=True)
    (cache.tickets_dir / ".x.ticket.123.tmp").write_bytes(b"leftover")
    (cache.tickets_dir / "README.ticket").write_bytes(b"not an id")

    assert cache.ids() == ()
    assert not cache.has("../../etc/passwd")
    with pytest.raises(TicketNotCachedError, match="is not cached"):
        cache.path("a" * 64)
    with pytest.raises(TicketNotCachedError, match="not a ticket content id"):
        cache.path("../" + "a" * 61)


def test_install_ticket_caches_and_records_the_id_in_the_state(
    tmp_path: Path, tickets: Path, keys: Path
) -> None:
    paths = DaemonPaths(tmp_path / "state")

    ticket_id = install_ticket(paths, keys / "fleet.pub", tickets / "fleet.ticket")
    install_ticket(paths, keys / "fleet.pub", tickets / "fleet.ticket")

    assert load_state(paths.state_file).ticket_ids == (ticket_id,)
    assert TicketCache(paths.tickets_dir, keys / "fleet.pub").ids() == (ticket_id,)


def test_a_refused_install_records_nothing(tmp_path: Path, tickets: Path, keys: Path) -> None:
    paths = DaemonPaths(tmp_path / "state")

    with pytest.raises(TicketRefusedError):
        install_ticket(paths, keys / "fleet.pub", tickets / "other.ticket")

    assert not paths.state_file.exists()
