"""Exit statuses of the `ticket` command, each with the help line printed beside the error."""

from enum import IntEnum

from ticket.errors import (
    BundleError,
    CodecError,
    DatasetUnavailableError,
    IntegrityError,
    TicketError,
    UnknownNameError,
    UnsignedTicketError,
)
from ticket_cli.hub_errors import HubError


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # the command ran but its outcome is a failure (e.g. a rollout did not succeed)
    USAGE = 2  # argparse's own status for bad arguments
    BAD_INPUT = 3
    DATASET_UNAVAILABLE = 4
    BAD_TICKET = 5
    INTEGRITY = 6
    UNSIGNED = 7
    HUB = 8  # a ticket hub could not be reached or refused the request (ticket_cli/hub_client)
    INTERRUPTED = 130


HELP: dict[ExitCode, str] = {
    ExitCode.BAD_INPUT: "check the arguments and files named in the message",
    ExitCode.DATASET_UNAVAILABLE: "the message names the package or file to install",
    ExitCode.BAD_TICKET: "the ticket file cannot be used with this version or this model",
    ExitCode.INTEGRITY: "the ticket was modified after it was written, or is signed by a key "
    "you do not trust; get a fresh copy from its publisher",
    ExitCode.UNSIGNED: "sign it with `ticket sign FILE --key KEY`; `ticket inspect` also "
    "takes --allow-unsigned if you trust where the file came from",
    ExitCode.HUB: "the message holds the hub's own answer; check --hub and that the hub is up",
}


def exit_code_for(error: BaseException) -> ExitCode:
    """Map an error to the status the process exits with; most specific class first."""
    table: list[tuple[type[BaseException], ExitCode]] = [
        (IntegrityError, ExitCode.INTEGRITY),
        (UnsignedTicketError, ExitCode.UNSIGNED),
        (HubError, ExitCode.HUB),
        (BundleError, ExitCode.BAD_TICKET),
        (DatasetUnavailableError, ExitCode.DATASET_UNAVAILABLE),
        (UnknownNameError, ExitCode.BAD_INPUT),
        (CodecError, ExitCode.BAD_INPUT),
        (TicketError, ExitCode.BAD_INPUT),
        (OSError, ExitCode.BAD_INPUT),
    ]
    for error_type, code in table:
        if isinstance(error, error_type):
            return code
    return ExitCode.FAILURE
