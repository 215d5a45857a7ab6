"""`ticket search`, `pull` and `publish` with --hub: the registry commands against a hub.

ticket_cli/cmd_registry.py owns the commands and hands over here when --hub names a hub;
without one, they use the local registry.
"""

import argparse
from pathlib import Path

from hub.card import CARD_SUFFIX
from ticket import crypto
from ticket.bundle import Ticket
from ticket_cli.cmd_inspect import printable
from ticket_cli.cmd_keys import read_public_key
from ticket_cli.hub_client import (
    HubClient,
    SearchQuery,
    fetch_verified,
    token_of,
    write_download,
)
from ticket_cli.registry import Entry

_HUB_HELP = "a ticket hub's address, e.g. http://127.0.0.1:8470 (default: the local registry)"


def add_hub_options(parser: argparse.ArgumentParser, *, publish: bool) -> None:
    """--hub and what talking to a hub needs; `publish` adds --token-file and --card."""
    parser.add_argument("--hub", metavar="URL", help=_HUB_HELP)
    parser.add_argument("--ca-cert", type=Path, metavar="PEM", help="CA of an https hub")
    if publish:
        parser.add_argument(
            "--token-file", type=Path, metavar="F", help="the hub's publish token (--hub)"
        )
        parser.add_argument(
            "--card", type=Path, metavar="CARD", help=f"its card (default: FILE{CARD_SUFFIX})"
        )


# ---------------------------------------------------------------- handlers


def query_of(args: argparse.Namespace) -> SearchQuery:
    """The filters of `ticket search`, for a hub or the local registry alike."""
    return SearchQuery(
        dataset=args.dataset,
        model=args.model,
        min_density=args.min_density,
        max_density=args.max_density,
        min_accuracy=args.min_accuracy,
        signer=args.signer,
        parent=args.parent,
    )


def search_hub(args: argparse.Namespace, hub: str) -> list[Entry]:
    return HubClient(hub, ca_file=args.ca_cert).search(query_of(args))


def run_pull_from_hub(args: argparse.Namespace, hub: str) -> int:
    """Download, verify (content id, a signature by --key, the card), then write."""
    keys = [read_public_key(path) for path in args.key]
    client = HubClient(hub, ca_file=args.ca_cert)
    download = fetch_verified(client, args.id, keys, with_card=not args.no_card)
    card_path = write_download(download, args.out, overwrite=args.force)
    entry = download.entry
    print(f"pulled {entry.content_id} from {client.url}")
    print(f"  content id and signature verified: signed by {_signers(download.ticket, keys)}")
    print(f"wrote  {args.out}")
    if card_path is not None:
        print(f"wrote  {card_path} (its card, signature verified)")
    return 0


def run_publish_to_hub(args: argparse.Namespace, hub: str) -> int:
    """Upload FILE and its card; the hub checks both, and a refusal is shown as it said it."""
    data = Path(args.file).read_bytes()
    card_path: Path = args.card or args.file.with_name(args.file.name + CARD_SUFFIX)
    card = card_path.read_bytes() if args.card is not None or card_path.is_file() else None
    token = None if args.token_file is None else token_of(args.token_file)
    client = HubClient(hub, token=token, ca_file=args.ca_cert)
    answer = client.publish(data, card)
    outcome = answer.get("outcome")
    verb = {"unchanged": "already published", "repaired": "republished"}.get(
        str(outcome), "published"
    )
    print(printable(f"{verb} {answer['content_id']} to {client.url}"))
    print(f"  with its card {card_path}" if card is not None else "  without a card")
    return 0


# ---------------------------------------------------------------- helpers


def _signers(ticket: Ticket, keys: list[bytes]) -> str:
    trusted = {crypto.key_id(pem) for pem in keys}
    return ", ".join(s.key_id for s in ticket.signatures if s.key_id in trusted)
