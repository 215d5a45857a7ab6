"""`ticket hub serve`: the ticket hub's JSON API over a registry directory (hub/service.py)."""

import argparse
from pathlib import Path

from ticket.errors import TicketError
from ticket_cli.commands import HELP

DEFAULT_PORT = 8470


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    hub = subparsers.add_parser("hub", help=HELP["hub"])
    commands = hub.add_subparsers(dest="hub_command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the registry at --root over HTTP(S)",
        description="Serve the JSON API of docs/hub.md: public search and download; "
        "publishing only of tickets (and cards) signed by a key in ROOT/trusted/*.pub, and "
        "with --token-file only by callers that send its token.",
    )
    serve.add_argument("--root", required=True, type=Path, metavar="DIR", help="registry dir")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this cert")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="and this key")
    serve.add_argument("--token-file", type=Path, metavar="F", help="publishers must send it")
    serve.add_argument(
        "--max-upload-mb", type=float, default=64.0, help="largest upload (default: 64)"
    )
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise TicketError("--tls-cert and --tls-key go together")
    token = None if args.token_file is None else args.token_file.read_text().strip()
    if token == "":
        raise TicketError(f"{args.token_file} is empty")
    import uvicorn  # only when serving: `ticket --help` stays fast

    from hub.service import create_app

    app = create_app(args.root, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), token=token)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=None if args.tls_cert is None else str(args.tls_cert),
        ssl_keyfile=None if args.tls_key is None else str(args.tls_key),
        log_level="info",
    )
    return 0
