"""The demo's closing tables: each device's personalisation, the MNIST tickets, the hub."""

from pathlib import Path
from types import SimpleNamespace
from typing import cast

from loopback.demo import format_mnist, format_personal, format_search, format_seeded
from loopback.mnist_tickets import MnistTicket
from ticket.bundle import Ticket


def test_the_personalisation_table_names_the_model_predict_uses() -> None:
    records = {
        "Cleveland": {
            "held_out_rows": 45,
            "global_accuracy": 0.8,
            "personal_accuracy": 0.8222,
            "used": True,
        },
        "Switzerland": {
            "held_out_rows": 3,
            "global_accuracy": 1.0,
            "personal_accuracy": None,  # too few rows: not personalised
            "used": False,
        },
    }

    lines = format_personal(records).splitlines()

    assert lines[2].split() == ["Cleveland", "45", "80.0%", "82.2%", "personal"]
    assert lines[3].split() == ["Switzerland", "3", "100.0%", "-", "global"]


def _mnist(name: str, density: float, parent: str | None) -> MnistTicket:
    controls = {"random": 0.87, "reinit": 0.895}
    return MnistTicket(Path(name), "cd" * 32, 14, density, 0.9218, controls, parent, False)


def test_the_mnist_table_and_the_hub_line_name_every_density() -> None:
    tickets = [
        _mnist("mnist-10pct.ticket", 0.1083, None),
        _mnist("mnist-5pct.ticket", 0.05, "ab" * 32),
    ]

    lines = format_mnist(tickets).splitlines()
    seeded = format_seeded(Path("out/hub"), 4, tickets)

    assert lines[1].split() == ["mnist-10pct.ticket", "14", "10.8%", "92.2%", "87.0%", "89.5%", "-"]
    assert lines[2].split()[-1] == "ab" * 6
    assert "hub: 4 tickets in out/hub" in seeded
    assert "2 MNIST tickets (10.8%, 5.0% of the weights)" in seeded
    assert "MNIST" not in format_seeded(Path("out/hub"), 2, [])


def test_the_search_line_says_where_the_encoding_was_fitted() -> None:
    fleet = SimpleNamespace(devices=4, rounds=3, bytes_up=90_000, bytes_down=150_000, secagg=True)
    fit = {"devices": 4, "rows": 643, "bytes_up": 14_248}
    manifest = SimpleNamespace(
        fleet=fleet, density=SimpleNamespace(overall=0.1), metrics={"encoding_fit": fit}
    )
    found = cast(Ticket, SimpleNamespace(content_id="ab" * 32, manifest=manifest))  # duck-typed
    line = format_search(found)

    assert "on 4 devices: 3 rounds, 90,000 bytes up" in line
    assert "encoding fitted on 4 devices' summed counts of 643 readings (14,248 bytes up" in line
