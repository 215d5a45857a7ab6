"""`edge-daemon personalise`: fine-tune the latest global model on this device's readings now.

    edge-daemon personalise -c daemon.yaml [--json]

What the daemon does by itself for every new global model (edge_daemon/personal_job.py), on
demand: prints which model `predict` uses from now on and why, or records why there is nothing
to personalise. The personal model and its record (personal.json) stay in the state directory;
nothing is sent. Numpy loads inside `personalise_command` only (edge_daemon/personalise.py).
"""

import argparse
import json
import sys

from edge_daemon.config import load_config
from edge_daemon.exit_codes import ExitCode


def register(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", config: argparse.ArgumentParser
) -> None:
    personalise = commands.add_parser(
        "personalise",
        parents=[config],
        help="fine-tune the latest global model on this device's labelled readings",
        description="Trains a personal copy of the latest global model (same mask) on the "
        "store's labelled readings and keeps it for `predict` only if it scores better than "
        "the global model on the held-out ones (every 5th labelled reading). daemon.yaml's "
        "personalise section sets the layers, epochs and minimum rows. Nothing is sent.",
    )
    personalise.add_argument("--json", action="store_true", help="print personal.json's record")
    personalise.set_defaults(handler=personalise_command, name="personalise")


def personalise_command(args: argparse.Namespace) -> int:
    from edge_daemon.personalise import PersonaliseError, describe, run_device
    from ticket.errors import TicketError

    config = load_config(args.config)
    try:
        record = run_device(config)
    except (PersonaliseError, TicketError) as error:
        print(f"edge-daemon personalise: error: {error}", file=sys.stderr)
        return ExitCode.FAILURE
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
    else:
        print(describe(record))
        print(f"predict uses the {'personal' if record.used else 'global'} model")
    return ExitCode.OK
