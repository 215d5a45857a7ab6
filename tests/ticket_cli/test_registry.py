"""TicketRegistry: what it indexes, how it searches, and every ticket it must refuse."""

import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.ticket_cli.registry_tickets import Tickets, add_twin_row, copy_registry, flip_byte
from tests.ticket_cli.registry_tickets import make_tickets as _make_tickets
from ticket.bundle import MAX_TICKET_BYTES, read_ticket
from ticket.errors import BundleError, IntegrityError, UnknownNameError, UnsignedTicketError
from ticket_cli.registry import (
    SCHEMA_VERSION,
    Entry,
    Outcome,
    RegistryError,
    TicketRegistry,
    final_metrics,
)

NOW = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Tickets:
    return _make_tickets(tmp_path_factory.mktemp("tickets"))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tickets: Tickets) -> Path:
    """A registry holding dense, sparse and digits: read it, or copy it before changing it."""
    root = tmp_path_factory.mktemp("published") / "registry"
    with TicketRegistry(root, clock=lambda: NOW) as registry:
        for path in (tickets.dense, tickets.sparse, tickets.digits):
            registry.publish(path, [tickets.fleet_pub.read_bytes()])
    return root


@pytest.fixture
def registry(published: Path) -> Iterator[TicketRegistry]:
    with TicketRegistry(published, create=False) as opened:
        yield opened


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[TicketRegistry]:
    with TicketRegistry(tmp_path / "registry", clock=lambda: NOW) as opened:
        yield opened


def _keys(tickets: Tickets) -> list[bytes]:
    return [tickets.fleet_pub.read_bytes()]


def _stored_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / "blobs").rglob("*") if path.is_file())


# ---------------------------------------------------------------- publish


def test_publish_indexes_what_the_manifest_says(fresh: TicketRegistry, tickets: Tickets) -> None:
    manifest = read_ticket(tickets.dense, allow_unsigned=True).manifest

    result = fresh.publish(tickets.dense, _keys(tickets))

    entry = result.entry
    assert result.outcome is Outcome.ADDED
    assert entry.content_id == tickets.content_id(tickets.dense)
    assert (entry.model, entry.task, entry.sites) == ("heart-mlp", "heart-uci", ["Cleveland"])
    assert entry.model_args == manifest.model.args
    assert entry.density == manifest.density.overall
    assert entry.accuracy == manifest.metrics["final"]["accuracy"]
    assert entry.auc == manifest.metrics["final"]["auc"]
    assert entry.metrics == manifest.metrics["final"]
    assert (entry.method, entry.rewind_step, entry.parent) == ("imp", 0, None)
    assert entry.created_at == manifest.created_at
    assert entry.signers == entry.verified_by == [tickets.fleet_id]
    assert entry.published_at == "2025-03-01T09:30:15Z"
    assert entry.size_bytes == tickets.dense.stat().st_size
    assert 0 < entry.kept_weights < entry.total_weights
    assert fresh.show(entry.content_id) == entry


def test_publish_stores_the_file_read_only_under_its_content_id(
    fresh: TicketRegistry, tickets: Tickets
) -> None:
    entry = fresh.publish(tickets.dense, _keys(tickets)).entry

    blob = fresh.root / "blobs" / entry.content_id[:2] / f"{entry.content_id}.ticket"
    assert _stored_files(fresh.root) == [blob]
    assert blob.read_bytes() == tickets.dense.read_bytes()
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444


def test_metrics_come_from_the_last_level_when_there_is_no_final(
    registry: TicketRegistry, tickets: Tickets
) -> None:
    entry = registry.show(tickets.content_id(tickets.digits))

    # The golden ticket's last level: {"accuracy": 0.8125, "auc": 0.875, "loss": 0.4375}.
    assert (entry.model, entry.task, entry.sites) == ("lenet-300-100", "mnist", None)
    assert (entry.accuracy, entry.auc) == (0.8125, 0.875)
    assert entry.metrics == {"accuracy": 0.8125, "auc": 0.875, "loss": 0.4375}


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (
            {"final": {"accuracy": 0.9, "examples": 10, "note": "x"}},
            {"accuracy": 0.9, "examples": 10},
        ),
        (
            {"levels": [{"accuracy": 0.1}, {"accuracy": 0.7, "density": 0.5}]},
            {"accuracy": 0.7, "density": 0.5},
        ),
        ({"accuracy": 0.5, "is_best": True, "levels": "odd"}, {"accuracy": 0.5}),
        ({}, {}),
    ],
)
def test_final_metrics_keeps_the_numbers_of_the_final_level(
    metrics: dict[str, object], expected: dict[str, float]
) -> None:
    assert final_metrics(metrics) == expected


def test_republishing_changes_nothing(fresh: TicketRegistry, tickets: Tickets) -> None:
    first = fresh.publish(tickets.dense, _keys(tickets))
    later = TicketRegistry(fresh.root, clock=lambda: datetime(2030, 1, 1, tzinfo=UTC))

    again = later.publish(tickets.dense, _keys(tickets))
    later.close()

    assert again.outcome is Outcome.UNCHANGED
    assert again.entry == first.entry  # published_at included
    assert fresh.list() == [first.entry]


@pytest.mark.parametrize(
    ("name", "error"),
    [("unsigned", UnsignedTicketError), ("tampered", IntegrityError), ("foreign", IntegrityError)],
)
def test_publish_refuses_and_keeps_nothing(
    fresh: TicketRegistry, tickets: Tickets, name: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        fresh.publish(getattr(tickets, name), _keys(tickets))

    assert fresh.list() == []
    assert _stored_files(fresh.root) == []


def test_publish_needs_a_trusted_key(fresh: TicketRegistry, tickets: Tickets) -> None:
    with pytest.raises(RegistryError, match="no trusted key"):
        fresh.publish(tickets.dense)


def test_keys_in_the_trusted_directory_are_trusted(fresh: TicketRegistry, tickets: Tickets) -> None:
    (fresh.root / "trusted").mkdir()
    (fresh.root / "trusted" / "fleet.pub").write_bytes(tickets.fleet_pub.read_bytes())

    result = fresh.publish(tickets.dense)

    assert result.entry.verified_by == [tickets.fleet_id]


# ---------------------------------------------------------------- list and show


def _ids(entries: list[Entry]) -> set[str]:
    return {entry.content_id for entry in entries}


def test_list_filters_by_task_and_model(registry: TicketRegistry, tickets: Tickets) -> None:
    dense, sparse, digits = (
        tickets.content_id(path) for path in (tickets.dense, tickets.sparse, tickets.digits)
    )

    assert _ids(registry.list()) == {dense, sparse, digits}
    assert _ids(registry.list(task="heart-uci")) == {dense, sparse}
    assert _ids(registry.list(task="mnist")) == {digits}
    assert _ids(registry.list(model="lenet-300-100")) == {digits}
    assert _ids(registry.list(model="heart-mlp", max_density=0.3)) == {sparse}
    assert registry.list(task="cifar10") == []
    assert registry.list(task="heart-uci", model="lenet-300-100") == []


def test_list_filters_by_density_and_accuracy_inclusively(registry: TicketRegistry) -> None:
    everything = registry.list()

    for entry in everything:
        assert entry.accuracy is not None
        sparser = {e.content_id for e in everything if e.density <= entry.density}
        better = {e.content_id for e in everything if (e.accuracy or 0) >= entry.accuracy}
        assert _ids(registry.list(max_density=entry.density)) == sparser
        assert _ids(registry.list(min_accuracy=entry.accuracy)) == better
    assert registry.list(max_density=0.01) == []
    assert registry.list(min_accuracy=1.0) == []


def test_list_filters_by_min_density_signer_and_limit(
    registry: TicketRegistry, tickets: Tickets
) -> None:
    everything = registry.list()

    for entry in everything:
        denser = {e.content_id for e in everything if e.density >= entry.density}
        assert _ids(registry.list(min_density=entry.density)) == denser
    assert _ids(registry.list(signer=tickets.fleet_id)) == _ids(everything)
    assert registry.list(signer="0" * 16) == []
    assert len(registry.list(limit=1)) == 1
    assert registry.list(limit=2) == everything[:2]


def test_list_orders_by_the_key_asked_for(registry: TicketRegistry, tickets: Tickets) -> None:
    by_density = [entry.density for entry in registry.list(order_by="density")]
    by_accuracy = [entry.accuracy for entry in registry.list(order_by="accuracy")]

    assert by_density == sorted(by_density)
    assert by_accuracy == sorted(by_accuracy, reverse=True)  # type: ignore[type-var]
    with pytest.raises(UnknownNameError, match="choose one of: accuracy, auc, created"):
        registry.list(order_by="size")


def test_show_takes_a_unique_prefix_in_either_case(
    registry: TicketRegistry, tickets: Tickets
) -> None:
    content_id = tickets.content_id(tickets.sparse)

    assert registry.show(content_id[:8]).content_id == content_id
    assert registry.show(content_id[:20].upper()).content_id == content_id
    assert registry.show(content_id).content_id == content_id


@pytest.mark.parametrize("text", ["abc", "0123456g", "", "a" * 65])
def test_show_refuses_what_is_not_an_id(registry: TicketRegistry, text: str) -> None:
    with pytest.raises(RegistryError, match="8 to 64 hex characters"):
        registry.show(text)


def test_show_refuses_an_unknown_id(registry: TicketRegistry, tickets: Tickets) -> None:
    unknown = "0" * 64 if not tickets.content_id(tickets.dense).startswith("0") else "f" * 64

    with pytest.raises(RegistryError, match=f"no ticket {unknown[:8]}"):
        registry.show(unknown[:8])


def test_show_refuses_an_ambiguous_prefix(
    published: Path, tmp_path: Path, tickets: Tickets
) -> None:
    root = copy_registry(published, tmp_path / "registry")
    content_id = tickets.content_id(tickets.dense)
    twin_id = content_id[:8] + ("0" if content_id[8] != "0" else "1") + content_id[9:]
    add_twin_row(root / "index.sqlite3", content_id, twin_id)

    with TicketRegistry(root, create=False) as registry:
        with pytest.raises(RegistryError, match=f"{content_id[:8]} is ambiguous"):
            registry.show(content_id[:8])
        assert registry.show(content_id[:9]).content_id == content_id


# ---------------------------------------------------------------- pull


def test_pull_hands_out_the_published_bytes(
    registry: TicketRegistry, tickets: Tickets, tmp_path: Path
) -> None:
    out = tmp_path / "pulled" / "sparse.ticket"
    content_id = tickets.content_id(tickets.sparse)

    entry = registry.pull(content_id[:10], out, _keys(tickets))

    assert entry.content_id == content_id
    assert out.read_bytes() == tickets.sparse.read_bytes()
    assert read_ticket(out, trusted_keys=_keys(tickets)).content_id == content_id


def test_pull_refuses_to_overwrite_unless_asked(
    registry: TicketRegistry, tickets: Tickets, tmp_path: Path
) -> None:
    out = tmp_path / "there.ticket"
    out.write_bytes(b"mine")
    content_id = tickets.content_id(tickets.dense)

    with pytest.raises(FileExistsError, match="pass --force"):
        registry.pull(content_id, out, _keys(tickets))
    assert out.read_bytes() == b"mine"

    registry.pull(content_id, out, _keys(tickets), overwrite=True)
    assert out.read_bytes() == tickets.dense.read_bytes()


def test_pull_checks_the_signature_again(
    registry: TicketRegistry, tickets: Tickets, tmp_path: Path
) -> None:
    out = tmp_path / "out.ticket"

    with pytest.raises(IntegrityError, match="not trusted"):
        registry.pull(tickets.content_id(tickets.dense), out, [tickets.other_pub.read_bytes()])
    assert not out.exists()


@pytest.mark.parametrize("where", ["body", "trailer"])
def test_pull_refuses_a_blob_corrupted_on_disk(
    published: Path, tmp_path: Path, tickets: Tickets, where: str
) -> None:
    root = copy_registry(published, tmp_path / "registry")
    registry = TicketRegistry(root, create=False)
    entry = registry.show(tickets.content_id(tickets.dense))
    blob = registry.blob_path(entry.content_id)
    flip_byte(blob, 100 if where == "body" else entry.size_bytes - 3)
    out = tmp_path / "out.ticket"

    with pytest.raises(IntegrityError, match="corrupt"):
        registry.pull(entry.content_id, out, _keys(tickets))

    registry.close()
    assert not out.exists()


def test_pull_refuses_a_blob_swapped_for_another_signed_ticket(
    published: Path, tmp_path: Path, tickets: Tickets
) -> None:
    root = copy_registry(published, tmp_path / "registry")
    registry = TicketRegistry(root, create=False)
    blob = registry.blob_path(tickets.content_id(tickets.dense))
    blob.chmod(0o644)
    blob.write_bytes(tickets.sparse.read_bytes())  # authentic, signed, but not this ticket
    out = tmp_path / "out.ticket"

    with pytest.raises(IntegrityError):
        registry.pull(tickets.content_id(tickets.dense), out, _keys(tickets))

    registry.close()
    assert not out.exists()


def test_republishing_repairs_a_lost_blob(
    fresh: TicketRegistry, tickets: Tickets, tmp_path: Path
) -> None:
    entry = fresh.publish(tickets.dense, _keys(tickets)).entry
    fresh.blob_path(entry.content_id).unlink()
    out = tmp_path / "out.ticket"
    with pytest.raises(RegistryError, match="lost the file"):
        fresh.pull(entry.content_id, out, _keys(tickets))

    repaired = fresh.publish(tickets.dense, _keys(tickets))
    fresh.pull(entry.content_id, out, _keys(tickets))

    assert repaired.outcome is Outcome.REPAIRED
    assert out.read_bytes() == tickets.dense.read_bytes()


# ---------------------------------------------------------------- the index itself


def test_index_is_versioned_and_in_wal_mode(published: Path) -> None:
    with sqlite3.connect(published / "index.sqlite3") as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    db.close()

    assert (version, journal) == (SCHEMA_VERSION, "wal")


def test_an_unknown_schema_version_is_refused(published: Path, tmp_path: Path) -> None:
    root = copy_registry(published, tmp_path / "registry")
    db = sqlite3.connect(root / "index.sqlite3")
    db.execute("PRAGMA user_version = 99")
    db.close()

    with pytest.raises(RegistryError, match=r"schema version 99; .* reads version 1"):
        TicketRegistry(root)


def test_a_missing_registry_is_created_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no ticket registry at"):
        TicketRegistry(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()


def test_an_index_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "index.sqlite3").write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(RegistryError, match=r"index\.sqlite3: file is not a database"):
        TicketRegistry(tmp_path)


def test_publish_refuses_a_file_over_the_ticket_size_limit_and_keeps_nothing(
    fresh: TicketRegistry, tickets: Tickets, tmp_path: Path
) -> None:
    big = tmp_path / "big.ticket"
    big.write_bytes(tickets.dense.read_bytes())
    with big.open("ab") as handle:  # sparse: the limit is checked without a 64 MiB write
        handle.truncate(MAX_TICKET_BYTES + 1)

    with pytest.raises(BundleError, match=f"{big}: over the {MAX_TICKET_BYTES}-byte limit"):
        fresh.publish(big, _keys(tickets))

    assert fresh.list() == []
    assert _stored_files(fresh.root) == []
