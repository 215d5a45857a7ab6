"""`ticket card FILE`: write, edit and sign a ticket's card (FILE.card, beside the bundle)."""

import argparse
from dataclasses import replace
from pathlib import Path

from hub.card import (
    CARD_SUFFIX,
    SignedCard,
    check_card_matches,
    decode_card,
    draft_card,
    encode_card,
    sign_card,
)
from ticket.atomic import atomic_write_bytes
from ticket.bundle import read_ticket
from ticket_cli.cmd_keys import read_private_key, read_public_key
from ticket_cli.commands import HELP

_PROSE = ("title", "description", "task", "intended_use", "data_how", "license")


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    card = subparsers.add_parser(
        "card",
        help=HELP["card"],
        description="Write FILE.card: the facts of FILE's manifest (data, metrics per density "
        "with the controls, parent) plus the prose given here. An existing card keeps its "
        "prose (edit the JSON by hand or pass options); its facts are checked against FILE. "
        "The bundle itself is never changed. --sign-key signs the card.",
    )
    card.add_argument("file", type=Path, metavar="FILE", help="the .ticket file")
    card.add_argument("--out", type=Path, metavar="CARD", help="default: FILE.card")
    for name in _PROSE:
        flag = "--" + name.replace("_", "-")
        card.add_argument(flag, dest=name, metavar="TEXT", help=f"the card's {flag[2:]}")
    card.add_argument("--parent-relation", choices=["re-pruned", "fine-tuned"], help="lineage")
    card.add_argument("--sign-key", type=Path, metavar="KEY", help="sign the card with KEY")
    card.add_argument(
        "--key", action="append", default=[], type=Path, metavar="PUB", help="trusted key"
    )
    card.add_argument(
        "--allow-unsigned", action="store_true", help="describe a ticket no trusted key signed"
    )
    card.set_defaults(handler=run_card)


def run_card(args: argparse.Namespace) -> int:
    keys = [read_public_key(path) for path in args.key]
    bundle = read_ticket(args.file, trusted_keys=keys, allow_unsigned=args.allow_unsigned)
    out: Path = args.out or args.file.with_name(args.file.name + CARD_SUFFIX)
    if out.exists():
        card = decode_card(out.read_bytes()).card
        check_card_matches(card, bundle)
    else:
        card = draft_card(bundle)
    edits = {name: getattr(args, name) for name in _PROSE if getattr(args, name) is not None}
    if args.parent_relation is not None:
        edits["relation"] = args.parent_relation
    card = replace(card, **edits)
    check_card_matches(card, bundle)
    signed = SignedCard(card)  # an edit invalidates old signatures: sign again
    if args.sign_key is not None:
        signed = sign_card(signed, read_private_key(args.sign_key))
    atomic_write_bytes(out, encode_card(signed))
    state = f"signed by {', '.join(signed.signers)}" if signed.signatures else "unsigned"
    print(f"wrote {out} ({state}) for {bundle.content_id}")
    return 0
