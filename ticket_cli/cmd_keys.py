"""`ticket keygen`, `ticket sign`, `ticket verify`: Ed25519 keys and the signatures they make."""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ticket import crypto
from ticket.atomic import atomic_write_bytes
from ticket.bundle import Ticket, check_against_model, read_ticket, sign_ticket, write_ticket
from ticket.errors import BundleError, TicketError
from ticket.models import build_model
from ticket_cli.commands import HELP

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    keygen = subparsers.add_parser(
        "keygen",
        help=HELP["keygen"],
        description="Write PREFIX.key (the private key, mode 0600: keep it secret) and "
        "PREFIX.pub (the public key: give it to whoever verifies your tickets).",
    )
    keygen.add_argument(
        "--out", required=True, type=Path, metavar="PREFIX", help="e.g. keys/release"
    )
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    keygen.set_defaults(handler=run_keygen)

    sign = subparsers.add_parser(
        "sign",
        help=HELP["sign"],
        description="Check the ticket's integrity, then add (or replace) the signature of KEY. "
        "The content id does not change; other signatures are kept.",
    )
    sign.add_argument("file", type=Path, metavar="FILE", help="the .ticket file")
    sign.add_argument("--key", required=True, type=Path, metavar="KEY", help="a private .key file")
    sign.add_argument("--out", type=Path, help="write the signed ticket here (default: FILE)")
    sign.set_defaults(handler=run_sign)

    verify = subparsers.add_parser(
        "verify",
        help=HELP["verify"],
        description="Exit 0 when the ticket is intact and signed by at least one of the given "
        "public keys, non-zero with the reason otherwise.",
    )
    verify.add_argument("file", type=Path, metavar="FILE", help="the .ticket file")
    verify.add_argument(
        "--key",
        required=True,
        action="append",
        type=Path,
        metavar="PUB",
        help="a trusted public .pub key; repeat to trust several",
    )
    verify.set_defaults(handler=run_verify)


def run_keygen(args: argparse.Namespace) -> int:
    prefix: Path = args.out
    private_path = prefix.with_name(prefix.name + PRIVATE_SUFFIX)
    public_path = prefix.with_name(prefix.name + PUBLIC_SUFFIX)
    if not args.force:
        for path in (private_path, public_path):
            if path.exists():
                raise FileExistsError(f"{path} already exists; pass --force to overwrite it")
    private_pem, public_pem = crypto.generate_signing_key()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem)
    print(f"key id   {crypto.key_id(public_pem)}")
    print(f"private  {private_path}  (keep it secret)")
    print(f"public   {public_path}  (give it to verifiers)")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    private_pem = read_private_key(args.key)
    signer = crypto.key_id(crypto.public_key_of(private_pem))
    # Integrity only: existing signatures are kept as they are, whoever made them.
    ticket = read_model_ticket(args.file, trusted_keys=(), allow_unsigned=True)
    out: Path = args.out or args.file
    write_ticket(out, sign_ticket(ticket, private_pem))
    print(f"signed {ticket.content_id} by {signer}")
    if out != args.file:
        print(f"wrote {out}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    keys = [read_public_key(path) for path in args.key]
    ticket = read_model_ticket(args.file, trusted_keys=keys, allow_unsigned=False)
    trusted = {crypto.key_id(pem) for pem in keys}
    signers = [s.key_id for s in ticket.signatures if s.key_id in trusted]
    print(f"OK {ticket.content_id} signed by {', '.join(signers)}")
    return 0


def read_public_key(path: Path) -> bytes:
    """The PEM bytes of a public key file; KeyFormatError naming the file if it is not one."""
    pem = Path(path).read_bytes()
    try:
        crypto.load_public_key(pem)
    except crypto.KeyFormatError as error:
        raise crypto.KeyFormatError(f"{path}: {error}") from error
    return pem


def read_private_key(path: Path) -> bytes:
    """The PEM bytes of a private key file; KeyFormatError naming the file if it is not one."""
    pem = Path(path).read_bytes()
    try:
        crypto.load_private_key(pem)
    except crypto.KeyFormatError as error:
        raise crypto.KeyFormatError(f"{path}: {error}") from error
    return pem


def read_model_ticket(path: Path, *, trusted_keys: Sequence[bytes], allow_unsigned: bool) -> Ticket:
    """`read_ticket`, then BundleError unless the tensors fit the model the manifest names.

    Decoding alone checks the tensors against each other, not against the model: a ticket
    whose shapes disagree with its model arguments would be signed or verified here and
    refused only by the device that tries to load it.
    """
    ticket = read_ticket(path, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
    name, model_args = ticket.manifest.model.name, ticket.manifest.model.args
    try:
        # On the meta device nothing is allocated: only shapes are compared, and a manifest
        # can name a model far larger than the file that carries it.
        with torch.device("meta"):
            model = build_model(name, model_args, seed=0)
    except TicketError as error:
        raise BundleError(f"{path}: the ticket's model cannot be built: {error}") from error
    try:
        check_against_model(ticket, model)
    except BundleError as error:
        raise BundleError(
            f"{path}: the tensors do not fit the manifest's model {name} "
            f"{json.dumps(model_args, sort_keys=True)}: {error}"
        ) from error
    return ticket
