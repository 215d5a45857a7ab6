"""What a hub keeps: a ticket (and its card) only after every check of a publish passes.

Shared by the HTTP service's publish and by `seed_hub`, so a seeded hub holds nothing that
its own API would have refused.
"""

import tempfile
from pathlib import Path

from hub.card import CARD_SUFFIX, check_card_matches, decode_card, verify_card
from ticket.atomic import atomic_write_bytes
from ticket.bundle import check_against_model, decode_ticket
from ticket.models import build_model
from ticket_cli.registry import Published, RegistryError, TicketRegistry

CARDS_DIR = "cards"
INCOMING_DIR = "incoming"


class HubNotReadyError(RegistryError):
    """The hub cannot take publishes yet: it trusts no key, or has no registry."""


def card_path(root: Path, content_id: str) -> Path:
    return Path(root) / CARDS_DIR / f"{content_id}{CARD_SUFFIX}"


def store_upload(root: Path, data: bytes, card_data: bytes | None) -> Published:
    """Check `data` (and `card_data`) against the hub's trusted keys, then store them.

    Raises IntegrityError (modified bytes, untrusted signer of the bundle or the card),
    CardError / BundleError / TicketError (malformed, misfit to its model, a card of another
    ticket) or HubNotReadyError; nothing is stored unless every check passed.
    """
    root = Path(root)
    try:
        with TicketRegistry(root, create=False) as opened:
            keys = opened.trusted_keys()
    except RegistryError as error:
        raise HubNotReadyError(f"the hub trusts no key yet: {error}") from error
    ticket = decode_ticket(data, trusted_keys=keys)
    spec = ticket.manifest.model
    check_against_model(ticket, build_model(spec.name, spec.args, seed=0))
    if card_data is not None:
        signed = decode_card(card_data)
        verify_card(signed, keys)
        check_card_matches(signed.card, ticket)
    incoming = root / INCOMING_DIR
    incoming.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=incoming) as scratch:
        path = Path(scratch) / "upload.ticket"
        path.write_bytes(data)
        with TicketRegistry(root, create=False) as opened:
            published = opened.publish(path)
    if card_data is not None:  # after the bundle: a card never names a ticket not stored
        target = card_path(root, ticket.content_id)
        target.parent.mkdir(exist_ok=True)
        atomic_write_bytes(target, card_data)
    return published
