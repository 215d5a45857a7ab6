"""The demo's MNIST tickets: one short lottery-ticket search, a signed ticket at each density.

One iterative-magnitude-pruning search (`ticket find`'s runner: LeNet-300-100, 20% of the
remaining weights per level, rewound to the initialisation, both of the paper's controls at
every level) on the first TRAIN_ROWS of MNIST's real training digits, EPOCHS per level,
tested on all 10,000 test digits. The level nearest each asked density becomes a ticket, signed
by the fleet key, with a signed card beside it (FILE.card) that `seed_hub` puts on the hub's
page. Each ticket's parent is the one before it: its mask is that ticket's, pruned further.

The search resumes from its work directory (named by the search's fingerprint), and tickets
already in the output directory, signed by the same key from the same search, are reused, so a
second `make demo` spends no training here.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from hub.card import CARD_SUFFIX, SignedCard, draft_card, encode_card, sign_card
from ticket import crypto
from ticket.atomic import atomic_write_bytes
from ticket.bundle import Ticket, read_ticket, sign_ticket, write_ticket
from ticket.errors import BundleError, IntegrityError, TicketError
from ticket.lottery import SearchSpec
from ticket.prune import PruningRates
from ticket.recipes import DEFAULT_TRAINING
from ticket_cli.find_report import build_level_ticket
from ticket_cli.find_runner import SearchRunner

MODEL = "lenet-300-100"
DATA = "mnist"
DENSITIES = (0.2, 0.1, 0.05)  # the levels nearest these become tickets
TRAIN_ROWS = 12_000  # of 60,000: the whole search trains in well under a minute on 2 cores
EPOCHS = 1  # per level; bench/lth_mnist.py trains 5 on all 60,000 rows
RATE = 0.2  # Frankle & Carbin's per-level rate (the output layer at half of it)


@dataclass(frozen=True)
class MnistTicket:
    path: Path  # signed; its card at path + ".card"
    content_id: str
    level: int  # of the search
    density: float
    accuracy: float  # the ticket's test accuracy at this density
    controls: dict[str, float]  # the controls' test accuracy at this density: random, reinit
    parent: str | None  # content id of the ticket it was re-pruned from
    reused: bool  # found in the output directory, not built this time


def mnist_spec(
    *,
    densities: Sequence[float] = DENSITIES,
    train_rows: int = TRAIN_ROWS,
    epochs: int = EPOCHS,
    rate: float = RATE,
) -> SearchSpec:
    """The one search that makes every ticket: down to the sparsest asked density."""
    if not densities:
        raise TicketError("MNIST tickets: no density asked for")
    return SearchSpec(
        model=MODEL,
        data=DATA,
        target_density=min(densities),
        train=replace(DEFAULT_TRAINING[DATA], epochs=epochs),
        train_rows=train_rows,
        rates=PruningRates(rate=rate),
    )


def nearest_levels(level_densities: Sequence[float], wanted: Sequence[float]) -> list[int]:
    """For each wanted density, densest first, the level nearest it on a log scale.

    Raises TicketError when two wanted densities fall on the same level (asked closer
    together than one pruning step): the hub would get the same ticket twice.
    """
    levels = [
        min(range(len(level_densities)), key=lambda i: abs(math.log(level_densities[i] / d)))
        for d in sorted(wanted, reverse=True)
    ]
    if len(set(levels)) != len(levels):
        shown = ", ".join(f"{d:g}" for d in wanted)
        raise TicketError(f"MNIST tickets: densities {shown} are closer than one pruning level")
    return levels


def ticket_path(out_dir: Path, density: float) -> Path:
    return out_dir / f"mnist-{100 * density:g}pct.ticket"


def make_mnist_tickets(  # the search's knobs, all keyword-only
    out_dir: Path,
    sign_key: Path,
    *,
    created_at: datetime,
    densities: Sequence[float] = DENSITIES,
    train_rows: int = TRAIN_ROWS,
    epochs: int = EPOCHS,
    rate: float = RATE,
    progress: bool = False,
) -> list[MnistTicket]:
    """Signed MNIST tickets near `densities` in `out_dir`, densest first, each with a card.

    `sign_key` is the fleet's private key; `created_at` goes into each manifest. Reuses the
    tickets already there when they all verify under the key and come from this search.
    """
    spec = mnist_spec(densities=densities, train_rows=train_rows, epochs=epochs, rate=rate)
    private = sign_key.read_bytes()
    paths = [ticket_path(out_dir, d) for d in sorted(densities, reverse=True)]
    reused = _reusable(paths, spec, crypto.public_key_of(private))
    if reused is not None:
        return reused
    workdir = out_dir / f"mnist-{spec.fingerprint()[:12]}.work"
    threads = torch.get_num_threads()
    # One thread: these matrices are small, and on a busy machine (daemons just stopped, other
    # jobs) torch's second thread spins waiting for a core: 15-30x slower, measured.
    torch.set_num_threads(1)
    try:
        outcome = SearchRunner(spec, workdir, progress=progress).run()
    finally:
        torch.set_num_threads(threads)
    made: list[MnistTicket] = []
    parent: str | None = None
    for path, level in zip(
        paths, nearest_levels([r.density for r in outcome.levels], densities), strict=True
    ):
        unsigned = build_level_ticket(outcome, created_at=created_at, parent=parent, level=level)
        ticket = sign_ticket(unsigned, private)
        write_ticket(path, ticket)
        card = draft_card(ticket, **_prose(spec, level, parent))
        atomic_write_bytes(_card_path(path), encode_card(sign_card(SignedCard(card), private)))
        made.append(_summary(path, ticket, reused=False))
        parent = ticket.content_id
    return made


def _reusable(paths: Sequence[Path], spec: SearchSpec, public: bytes) -> list[MnistTicket] | None:
    """The tickets at `paths` when every one verifies under `public`, comes from `spec`'s
    search, has its card, and names the one before it as parent; else None."""
    found: list[MnistTicket] = []
    parent: str | None = None
    for path in paths:
        if not (path.is_file() and _card_path(path).is_file()):
            return None
        try:
            ticket = read_ticket(path, trusted_keys=[public])
        except (BundleError, IntegrityError, OSError):
            return None  # signed by an older fleet key, or damaged: make them again
        manifest = ticket.manifest
        if manifest.method.search_fingerprint != spec.fingerprint() or manifest.parent != parent:
            return None
        found.append(_summary(path, ticket, reused=True))
        parent = ticket.content_id
    return found


def _summary(path: Path, ticket: Ticket, *, reused: bool) -> MnistTicket:
    metrics = ticket.manifest.metrics
    last = metrics["levels"][-1]
    return MnistTicket(
        path=path,
        content_id=ticket.content_id,
        level=last["level"],
        density=ticket.manifest.density.overall,
        accuracy=float(metrics["final"]["accuracy"]),
        controls={name: float(m["accuracy"]) for name, m in sorted(last["controls"].items())},
        parent=ticket.manifest.parent,
        reused=reused,
    )


def _prose(spec: SearchSpec, level: int, parent: str | None) -> dict[str, str]:
    rows = f"{spec.train_rows:,}" if spec.train_rows is not None else "all 60,000"
    epochs = f"{spec.train.epochs} epoch{'s' * (spec.train.epochs != 1)}"
    lineage = (
        "The first ticket of the search kept for the hub."
        if parent is None
        else f"Re-pruned from ticket {parent[:12]}: its mask, pruned further."
    )
    return {
        "title": f"LeNet-300-100 on MNIST, level {level} of one IMP search",
        "description": (
            f"Level {level} of the iterative-magnitude-pruning search that make demo runs "
            f"to seed the hub: {epochs} per level on {rows} training digits, a shortened "
            "schedule (bench/lth_mnist.py trains 5 epochs per level on all 60,000). "
            f"{lineage} Test accuracy is on all 10,000 MNIST test digits."
        ),
        "task": "handwritten digit classification (10 classes, 28x28 grey images)",
        "intended_use": (
            "A starting point for federated training of LeNet-300-100 on digit images; a demo "
            "ticket from a short search, not a tuned one."
        ),
        "data_how": (
            f"found by IMP (magnitude-layerwise, {100 * spec.rates.rate:g}% of the remaining "
            f"weights per level) on the first {rows} of MNIST's 60,000 training digits, "
            f"rewound to step {spec.rewind_step}"
            + (" (the initialisation)" if spec.rewind_step == 0 else "")
        ),
    }


def _card_path(path: Path) -> Path:
    return path.with_name(path.name + CARD_SUFFIX)
