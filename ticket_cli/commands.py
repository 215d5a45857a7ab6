"""Every `ticket` subcommand: its name, the module that registers it, and its one-line help.

`ticket --help` and a usage error print from this table alone, and a command loads only its
own module (ticket_cli/cli.py): most modules import the ticket format, and with it torch,
which costs seconds. Each module's `register` takes its commands' help from here, so the
listing and the command's own parser cannot drift apart (tests/ticket_cli/test_cli.py).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # in ticket_cli/, with a `register(subparsers)` that adds this command
    help: str


# In `ticket --help`'s order; a module's commands in the order its `register` adds them.
COMMANDS = (
    Command(
        "find", "cmd_find", "find a winning ticket by iterative magnitude pruning with rewinding"
    ),
    Command("init", "cmd_init", "write the dense ticket a fleet search starts from"),
    Command(
        "inspect",
        "cmd_inspect",
        "show a ticket's model, data, method, density, metrics and signatures",
    ),
    Command("keygen", "cmd_keys", "create an Ed25519 key pair for signing tickets"),
    Command("sign", "cmd_keys", "add your signature to a ticket"),
    Command("verify", "cmd_keys", "check a ticket's integrity and that a trusted key signed it"),
    Command("publish", "cmd_registry", "check a ticket's signature and add it to the registry"),
    Command("list", "cmd_registry", "search the registry by task, model, density and accuracy"),
    Command("show", "cmd_registry", "describe one ticket of the registry"),
    Command("pull", "cmd_registry", "copy a ticket out of the registry, checked again"),
    Command(
        "search",
        "cmd_registry",
        "search a ticket hub, or the local registry, by dataset, model, density, signer",
    ),
    Command("card", "cmd_card", "write, edit or sign the card that says what a ticket is good for"),
    Command("hub", "cmd_hub", "serve a ticket hub"),
    Command("deploy", "cmd_deploy", "push a signed ticket to the fleet's devices"),
    Command("rollback", "cmd_deploy", "make the ticket before the active one active again"),
    Command("deployments", "cmd_deploy", "the active ticket and every rollout"),
)
HELP = {command.name: command.help for command in COMMANDS}
