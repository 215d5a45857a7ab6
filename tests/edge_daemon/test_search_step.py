"""edge_daemon/search_step.py: a search's mask may only narrow the installed ticket."""

from pathlib import Path

import numpy as np
import pytest

from edge_daemon.search_step import narrowed
from tests.inprocess import find_ticket
from ticket.bundle import Ticket, read_ticket
from ticket.errors import TicketError
from ticket.fleet_search.mask_bits import MaskBitsError, encode_mask


@pytest.fixture(scope="module")
def ticket(tmp_path_factory: pytest.TempPathFactory) -> Ticket:
    path = find_ticket(tmp_path_factory.mktemp("t") / "t.ticket", density=0.5)
    return read_ticket(path, allow_unsigned=True)


def test_a_narrower_mask_replaces_the_tickets_own(ticket: Ticket) -> None:
    rng = np.random.default_rng(0)
    smaller = {name: mask & (rng.random(mask.shape) < 0.5) for name, mask in ticket.masks.items()}
    result = narrowed(ticket, encode_mask(smaller))
    assert result.content_id == ticket.content_id  # still the signed ticket it trains
    for name, mask in smaller.items():
        np.testing.assert_array_equal(result.masks[name], mask)


def test_a_mask_that_keeps_a_pruned_weight_is_refused(ticket: Ticket) -> None:
    wider = {name: np.ones_like(mask) for name, mask in ticket.masks.items()}
    with pytest.raises(TicketError, match=r"keeps weights of .* the ticket pruned"):
        narrowed(ticket, encode_mask(wider))


def test_a_mask_of_other_shapes_is_refused(ticket: Ticket, tmp_path: Path) -> None:
    name = sorted(ticket.masks)[0]
    with pytest.raises(MaskBitsError, match="must hold"):
        narrowed(ticket, encode_mask({name: ticket.masks[name]}))
