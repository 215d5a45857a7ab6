"""`ticket`'s command table (ticket_cli/commands.py) against the modules that register them."""

import argparse

from ticket_cli.cli import build_parser, full_parser
from ticket_cli.commands import COMMANDS


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _listing(parser: argparse.ArgumentParser) -> list[tuple[str, str | None]]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [(choice.dest, choice.help) for choice in action._choices_actions]


def test_the_table_lists_exactly_what_the_modules_register_in_order() -> None:
    assert _listing(full_parser()) == [(entry.name, entry.help) for entry in COMMANDS]


def test_a_commands_parser_is_its_modules_whatever_was_named() -> None:
    full = _subcommands(full_parser())
    for entry in COMMANDS:
        parser = build_parser(entry.name)
        assert _listing(parser) == _listing(full_parser()), entry.name
        ours = _subcommands(parser)[entry.name]
        assert ours.format_help() == full[entry.name].format_help(), entry.name
