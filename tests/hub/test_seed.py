"""seed_hub: a hub root from ticket files, each through the checks of a publish, with cards."""

from pathlib import Path

import pytest

from hub.card import decode_card
from hub.seed import seed_hub
from hub.store import card_path
from tests.hub.hub_tickets import Lineage
from tests.ticket_cli.registry_tickets import Tickets
from ticket.errors import IntegrityError
from ticket_cli.registry import Outcome, TicketRegistry


def test_seed_keeps_cards_beside_tickets_and_drafts_the_missing_ones(
    tmp_path: Path, tickets: Tickets, lineage: Lineage
) -> None:
    root = tmp_path / "hub"

    seeded = seed_hub(
        root, [lineage.parent, tickets.sparse], tickets.fleet_pub, sign_key=tickets.fleet_key
    )
    again = seed_hub(root, [lineage.parent], tickets.fleet_pub)

    sparse_id = tickets.content_id(tickets.sparse)
    assert [(s.content_id, s.outcome, s.has_card) for s in seeded] == [
        (lineage.parent_id, Outcome.ADDED, True),
        (sparse_id, Outcome.ADDED, True),
    ]
    assert [s.outcome for s in again] == [Outcome.UNCHANGED]
    assert (
        card_path(root, lineage.parent_id).read_bytes()
        == Path(f"{lineage.parent}.card").read_bytes()
    )
    drafted = decode_card(card_path(root, sparse_id).read_bytes())
    assert drafted.card.ticket == sparse_id
    assert drafted.signers == [tickets.fleet_id]
    with TicketRegistry(root, create=False) as registry:
        assert {e.content_id for e in registry.list()} == {lineage.parent_id, sparse_id}


def test_seed_without_a_sign_key_stores_no_card(tmp_path: Path, tickets: Tickets) -> None:
    seeded = seed_hub(tmp_path / "hub", [tickets.dense], tickets.fleet_pub)

    assert [s.has_card for s in seeded] == [False]
    assert not card_path(tmp_path / "hub", seeded[0].content_id).exists()


def test_seed_refuses_a_ticket_the_key_did_not_sign(tmp_path: Path, tickets: Tickets) -> None:
    with pytest.raises(IntegrityError):
        seed_hub(tmp_path / "hub", [tickets.foreign], tickets.fleet_pub)

    with TicketRegistry(tmp_path / "hub", create=False) as registry:
        assert registry.list() == []
