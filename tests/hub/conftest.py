"""Tickets shared by the hub's tests: found once per session (~5 s), only read after."""

import pytest

from tests.hub.hub_tickets import Lineage, make_lineage
from tests.ticket_cli.registry_tickets import Tickets, make_tickets


@pytest.fixture(scope="session")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Tickets:
    return make_tickets(tmp_path_factory.mktemp("hub-tickets"))


@pytest.fixture(scope="session")
def lineage(tmp_path_factory: pytest.TempPathFactory, tickets: Tickets) -> Lineage:
    return make_lineage(tmp_path_factory.mktemp("hub-lineage"), tickets)
