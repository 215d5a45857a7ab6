"""The demo's MNIST tickets: made at the asked densities from one real search on real MNIST,
signed by the fleet key, each re-pruned from the one before, reused on a rerun, and seeded
into a hub whose search API finds them by dataset and density.

The search is the demo's, shrunk: 600 training digits, 1 epoch, half the weights per level.
"""

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hub.card import decode_card, verify_card
from hub.seed import seed_hub
from hub.service import create_app
from loopback import mnist_tickets
from loopback.mnist_tickets import MnistTicket, make_mnist_tickets, nearest_levels
from ticket.bundle import read_ticket
from ticket.errors import TicketError
from ticket_cli.cli import main
from ticket_cli.registry import Outcome

WANTED = (0.5, 0.25)
TINY: dict[str, Any] = {"densities": WANTED, "train_rows": 600, "epochs": 1, "rate": 0.5}
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Made:
    out: Path
    tickets: list[MnistTicket]

    @property
    def key(self) -> Path:
        return self.out / "fleet.key"

    @property
    def pub(self) -> Path:
        return self.out / "fleet.pub"


def _keygen(out: Path) -> None:
    if main(["keygen", "--out", str(out / "fleet")]) != 0:
        raise RuntimeError("ticket keygen failed")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    out = tmp_path_factory.mktemp("mnist-demo")
    _keygen(out)
    return Made(out, make_mnist_tickets(out, out / "fleet.key", created_at=WHEN, **TINY))


def test_tickets_at_the_asked_densities_signed_by_the_fleet_key(made: Made) -> None:
    pem = made.pub.read_bytes()

    assert [t.path.name for t in made.tickets] == ["mnist-50pct.ticket", "mnist-25pct.ticket"]
    for asked, made_ticket in zip(WANTED, made.tickets, strict=True):
        ticket = read_ticket(made_ticket.path, trusted_keys=[pem])  # IntegrityError otherwise
        manifest = ticket.manifest
        assert manifest.density.overall == pytest.approx(asked, rel=0.02)
        assert made_ticket.density == manifest.density.overall
        assert (manifest.model.name, manifest.data.name) == ("lenet-300-100", "mnist")
        assert manifest.data.rows == {"train": 600, "test": 10_000}
        # Real training on real digits: far above chance (10%) after 10 steps of Adam.
        assert made_ticket.accuracy > 0.5
        assert set(made_ticket.controls) == {"random", "reinit"}
        assert not made_ticket.reused


def test_each_ticket_is_re_pruned_from_the_one_before(made: Made) -> None:
    first, second = made.tickets
    parent = read_ticket(first.path, allow_unsigned=True)
    child = read_ticket(second.path, allow_unsigned=True)

    assert (first.parent, second.parent) == (None, first.content_id)
    assert child.manifest.parent == parent.content_id
    assert second.level > first.level
    for name, keep in child.masks.items():
        assert not np.any(keep & ~parent.masks[name])  # the child's mask inside the parent's
    cards = [decode_card(Path(f"{t.path}.card").read_bytes()) for t in made.tickets]
    assert [c.card.relation for c in cards] == ["found", "re-pruned"]
    assert [c.card.parent for c in cards] == [None, first.content_id]
    for signed in cards:
        verify_card(signed, [made.pub.read_bytes()])
        densities = [p.density for p in signed.card.points]
        assert densities[0] == 1.0 and densities == sorted(densities, reverse=True)
        assert all(set(p.controls) == {"random", "reinit"} for p in signed.card.points)


def test_a_rerun_reuses_the_tickets_without_training(
    made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(made.out, out)

    def no_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("the search ran again")

    monkeypatch.setattr(mnist_tickets, "SearchRunner", no_search)
    again = make_mnist_tickets(out, out / "fleet.key", created_at=datetime.now(UTC), **TINY)

    assert [t.content_id for t in again] == [t.content_id for t in made.tickets]
    assert all(t.reused for t in again)


def test_a_new_fleet_key_signs_them_again_from_the_finished_search(
    made: Made, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(made.out, out)
    for name in ("fleet.key", "fleet.pub"):
        (out / name).unlink()
    _keygen(out)

    again = make_mnist_tickets(out, out / "fleet.key", created_at=WHEN, **TINY)

    assert not any(t.reused for t in again)
    for made_ticket in again:
        read_ticket(made_ticket.path, trusted_keys=[(out / "fleet.pub").read_bytes()])
    # The finished levels were read back, not trained again: the same metrics.
    assert [t.accuracy for t in again] == [t.accuracy for t in made.tickets]


def test_the_seeded_hub_finds_them_by_dataset_and_density(made: Made, tmp_path: Path) -> None:
    root = tmp_path / "hub"

    seeded = seed_hub(root, [t.path for t in made.tickets], made.pub)

    assert [(s.outcome, s.has_card) for s in seeded] == [(Outcome.ADDED, True)] * 2
    client = TestClient(create_app(root))
    mnist = client.get("/api/v1/tickets", params={"dataset": "mnist"}).json()["tickets"]
    assert sorted(t["content_id"] for t in mnist) == sorted(t.content_id for t in made.tickets)
    sparse = client.get("/api/v1/tickets", params={"dataset": "mnist", "max_density": 0.3})
    assert [t["content_id"] for t in sparse.json()["tickets"]] == [made.tickets[1].content_id]
    assert sparse.json()["tickets"][0]["parent"] == made.tickets[0].content_id
    heart = client.get("/api/v1/tickets", params={"dataset": "heart-uci"}).json()["tickets"]
    assert heart == []
    shown = client.get(f"/api/v1/tickets/{made.tickets[1].content_id}").json()
    assert "re-pruned from ticket" in shown["card"]["description"].lower()
    assert shown["card"]["metrics"][-1]["controls"].keys() == {"random", "reinit"}


def test_the_nearest_level_on_a_log_scale_stands_for_each_density() -> None:
    levels = [1.0, 0.8, 0.64, 0.512, 0.41, 0.328, 0.262, 0.21, 0.168, 0.134, 0.107, 0.086]

    assert nearest_levels(levels, [0.1, 0.2]) == [7, 10]  # densest first
    assert nearest_levels(levels, [0.5]) == [3]


def test_densities_closer_than_one_level_are_refused() -> None:
    with pytest.raises(TicketError, match="closer than one pruning level"):
        nearest_levels([1.0, 0.5, 0.25], [0.26, 0.24])
