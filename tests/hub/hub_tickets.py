"""Hub test tickets: a parent and a ticket re-pruned from it, with known metrics and cards.

Both reuse the tensors of a real heart ticket (so they fit heart-mlp) under manifests whose
metrics per density, controls included, are fixed numbers a test can look for on the page.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hub.card import CARD_SUFFIX, SignedCard, draft_card, encode_card, sign_card
from tests.ticket_cli.registry_tickets import Tickets
from ticket.bundle import Ticket, build_ticket, read_ticket, sign_ticket, write_ticket

# (density, ticket accuracy, random-pruning control, re-init control), densest first.
PARENT_LEVELS = ((1.0, 0.84, 0.84, 0.84), (0.8, 0.85, 0.80, 0.81), (0.64, 0.83, 0.74, 0.77))
CHILD_LEVELS = ((0.64, 0.83, 0.74, 0.77), (0.5, 0.82, 0.70, 0.72))


@dataclass(frozen=True)
class Lineage:
    parent: Path  # signed, with a signed card beside it (Path + ".card")
    child: Path  # re-pruned from `parent`: its manifest names it, its card says so
    parent_id: str
    child_id: str


def make_lineage(directory: Path, tickets: Tickets) -> Lineage:
    base = read_ticket(tickets.dense, trusted_keys=[tickets.fleet_pub.read_bytes()])
    key = tickets.fleet_key.read_bytes()
    parent = _variant(base, PARENT_LEVELS, parent=None)
    child = _variant(base, CHILD_LEVELS, parent=parent.content_id)
    paths = []
    for name, ticket, prose in [
        ("parent", parent, {"title": "Heart <b>parent</b>", "description": "found first"}),
        ("child", child, {"title": "Heart child", "description": "re-pruned from the parent"}),
    ]:
        path = directory / f"{name}.ticket"
        write_ticket(path, sign_ticket(ticket, key))
        card = draft_card(ticket, **prose)
        path.with_name(path.name + CARD_SUFFIX).write_bytes(
            encode_card(sign_card(SignedCard(card), key))
        )
        paths.append(path)
    return Lineage(paths[0], paths[1], parent.content_id, child.content_id)


def _variant(
    base: Ticket, levels: tuple[tuple[float, float, float, float], ...], parent: str | None
) -> Ticket:
    records: list[dict[str, Any]] = [
        {
            "density": density,
            "ticket": {"accuracy": accuracy},
            "controls": {"random": {"accuracy": random}, "reinit": {"accuracy": reinit}},
        }
        for density, accuracy, random, reinit in levels
    ]
    metrics = {"levels": records, "final": {"accuracy": levels[-1][1]}}
    manifest = replace(base.manifest, metrics=metrics, parent=parent)
    return build_ticket(manifest, base.masks, base.weights)
