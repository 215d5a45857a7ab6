"""The server tests' shared tickets: a small real heart-uci ticket at density 0.5, found once,
and the dense heart-uci ticket `ticket init` writes (what a fleet search starts from)."""

from pathlib import Path

import pytest

from tests.inprocess import find_ticket
from ticket.bundle import Ticket, read_ticket
from ticket_cli.cli import main as ticket_main


@pytest.fixture(scope="session")
def ticket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return find_ticket(tmp_path_factory.mktemp("ticket") / "t.ticket", density=0.5)


@pytest.fixture(scope="session")
def ticket(ticket_path: Path) -> Ticket:
    return read_ticket(ticket_path, allow_unsigned=True)


@pytest.fixture(scope="session")
def dense_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ticket init --model heart-mlp --data heart-uci`: W_0 from seed 0, every weight kept."""
    out = tmp_path_factory.mktemp("dense") / "dense.ticket"
    assert (
        ticket_main(["init", "--model", "heart-mlp", "--data", "heart-uci", "--out", str(out)]) == 0
    )
    return out
