"""Seed a hub's root from ticket files: the demo's and the benches' tickets, with cards.

    from hub.seed import seed_hub
    seed_hub(out / "hub", [heart_ticket, *mnist_tickets], fleet_pub, sign_key=fleet_key)

then `ticket hub serve --root out/hub` shows them. Every ticket goes through the checks of
a publish (hub/store.py); seeding again changes nothing.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hub.card import CARD_SUFFIX, SignedCard, draft_card, encode_card, sign_card
from hub.store import store_upload
from ticket import crypto
from ticket.atomic import atomic_write_bytes
from ticket.bundle import decode_ticket
from ticket_cli.registry import TRUSTED_DIR, Outcome, TicketRegistry


@dataclass(frozen=True)
class Seeded:
    path: Path  # the ticket file it came from
    content_id: str
    outcome: Outcome
    has_card: bool


def seed_hub(
    root: Path,
    tickets: Sequence[Path],
    trusted_key: Path,
    *,
    sign_key: Path | None = None,
) -> list[Seeded]:
    """Make `root` a hub trusting `trusted_key` (a .pub) and holding `tickets` with cards.

    A ticket's card is its FILE.card when there is one; else, given `sign_key` (the private
    half of a trusted key), a card drafted from its manifest and signed with it, so a new
    user sees a populated page. Raises what a refused publish raises (IntegrityError for a
    ticket no trusted key signed, CardError for a card that does not match its ticket).
    """
    root = Path(root)
    pem = Path(trusted_key).read_bytes()
    crypto.load_public_key(pem)  # KeyFormatError now rather than a refused publish later
    TicketRegistry(root).close()  # create the index
    trusted = root / TRUSTED_DIR / f"{crypto.key_id(pem)}.pub"
    trusted.parent.mkdir(exist_ok=True)
    if not trusted.is_file() or trusted.read_bytes() != pem:
        atomic_write_bytes(trusted, pem)
    private = None if sign_key is None else Path(sign_key).read_bytes()
    seeded = []
    for path in map(Path, tickets):
        data = path.read_bytes()
        card = _card_of(path, data, pem, private)
        published = store_upload(root, data, card)
        seeded.append(Seeded(path, published.entry.content_id, published.outcome, card is not None))
    return seeded


def _card_of(path: Path, data: bytes, pem: bytes, private: bytes | None) -> bytes | None:
    beside = path.with_name(path.name + CARD_SUFFIX)
    if beside.is_file():
        return beside.read_bytes()
    if private is None:
        return None
    ticket = decode_ticket(data, trusted_keys=[pem])
    return encode_card(sign_card(SignedCard(draft_card(ticket)), private))
