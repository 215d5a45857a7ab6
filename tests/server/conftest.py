"""The server tests' shared ticket: a small real heart-uci ticket at density 0.5, found once."""

from pathlib import Path

import pytest

from tests.inprocess import find_ticket
from ticket.bundle import Ticket, read_ticket


@pytest.fixture(scope="session")
def ticket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return find_ticket(tmp_path_factory.mktemp("ticket") / "t.ticket", density=0.5)


@pytest.fixture(scope="session")
def ticket(ticket_path: Path) -> Ticket:
    return read_ticket(ticket_path, allow_unsigned=True)
