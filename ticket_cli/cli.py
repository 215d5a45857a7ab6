"""`ticket`: the ML engineer's command: find, inspect, sign, verify and publish winning tickets."""

import argparse
import importlib
import sys
from collections.abc import Sequence

from ticket.errors import TicketError
from ticket_cli.commands import COMMANDS
from ticket_cli.exit_codes import HELP, ExitCode, exit_code_for


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `ticket` parser. Only the module registering `command` is loaded: every other
    command is listed by its name and help (ticket_cli/commands.py), so `ticket --help` and a
    usage error stay fast and a broken module cannot stop the others' commands from running.
    `full_parser` loads them all."""
    return _parser({entry.module for entry in COMMANDS if entry.name == command})


def full_parser() -> argparse.ArgumentParser:
    """The parser with every command's own options (every module loaded)."""
    return _parser({entry.module for entry in COMMANDS})


def _parser(load: set[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ticket",
        description="Find, inspect, sign, verify and publish lottery-ticket sparse networks.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registered: set[str] = set()
    for entry in COMMANDS:
        if entry.module not in load:
            subparsers.add_parser(entry.name, help=entry.help)  # a name in the listing only
        elif entry.module not in registered:  # its register adds all of its commands
            importlib.import_module(f"ticket_cli.{entry.module}").register(subparsers)
            registered.add(entry.module)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand argv names: its first word (`ticket` itself takes only -h)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
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
