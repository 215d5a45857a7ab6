"""`ticket`: the ML engineer's command: find, inspect, sign, verify and publish winning tickets."""

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from ticket.errors import TicketError
from ticket_cli.exit_codes import HELP, ExitCode, exit_code_for


def _command_modules() -> list[ModuleType]:
    # Imported here, not at module level, so `ticket --help` stays fast and a broken
    # subcommand cannot stop the others from loading their own help.
    from ticket_cli import (
        cmd_card,
        cmd_deploy,
        cmd_find,
        cmd_hub,
        cmd_init,
        cmd_inspect,
        cmd_keys,
        cmd_registry,
    )

    return [cmd_find, cmd_init, cmd_inspect, cmd_keys, cmd_registry, cmd_card, cmd_hub, cmd_deploy]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ticket",
        description="Find, inspect, sign, verify and publish lottery-ticket sparse networks.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules():
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("ticket: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except (TicketError, OSError) as error:
        code = exit_code_for(error)
        print(f"ticket {args.command}: error: {error_text(error)}", file=sys.stderr)
        if code in HELP:
            print(f"  hint: {HELP[code]}", file=sys.stderr)
        return code


def error_text(error: BaseException) -> str:
    """The message for `error`; an OS error reads "PATH: no such file or directory"."""
    if not isinstance(error, OSError) or error.filename is None or not error.strerror:
        return str(error)
    paths = str(error.filename)
    if error.filename2 is not None:
        paths += f" -> {error.filename2}"
    return f"{paths}: {error.strerror[0].lower()}{error.strerror[1:]}"


if __name__ == "__main__":
    sys.exit(main())
