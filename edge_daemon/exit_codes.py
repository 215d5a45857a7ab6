"""Exit statuses of the `edge-daemon` command, each with the help line printed beside the error."""

from enum import IntEnum

from edge_daemon.config import ConfigError
from edge_daemon.readings import IngestError, StoreError
from edge_daemon.state import StateError
from edge_daemon.ticket_cache import (
    FleetKeyError,
    TicketNotCachedError,
    TicketRefusedError,
    TicketUnreadableError,
)
from ticket.atomic import AlreadyRunningError


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # the command could not do its job for a reason outside its inputs
    USAGE = 2  # argparse's own status for bad arguments
    BAD_INPUT = 3  # daemon.yaml, a readings file, a key path or the state directory
    REFUSED = 6  # a ticket failed verification against the fleet key
    ALREADY_RUNNING = 7  # another `edge-daemon run` holds the state directory
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


HELP: dict[ExitCode, str] = {
    ExitCode.BAD_INPUT: "fix the file named in the message and run the command again",
    ExitCode.REFUSED: "the ticket was modified, is unsigned, or is not signed by the fleet key "
    "in daemon.yaml; get a fresh copy from the fleet operator",
    ExitCode.ALREADY_RUNNING: "one daemon per state directory: stop the other one (its pid is "
    "named above), or give this one its own state_dir",
}


def exit_code_for(error: BaseException) -> ExitCode:
    """Map an expected error to the status the process exits with; most specific class first."""
    table: list[tuple[type[BaseException], ExitCode]] = [
        (AlreadyRunningError, ExitCode.ALREADY_RUNNING),
        (TicketUnreadableError, ExitCode.BAD_INPUT),  # a wrong path, not a bad ticket
        (TicketRefusedError, ExitCode.REFUSED),
        (TicketNotCachedError, ExitCode.BAD_INPUT),
        (FleetKeyError, ExitCode.BAD_INPUT),
        (ConfigError, ExitCode.BAD_INPUT),
        (IngestError, ExitCode.BAD_INPUT),
        (StoreError, ExitCode.BAD_INPUT),
        (StateError, ExitCode.BAD_INPUT),
        (OSError, ExitCode.BAD_INPUT),  # e.g. a key that exists, a directory not writable
    ]
    for error_type, code in table:
        if isinstance(error, error_type):
            return code
    return ExitCode.FAILURE
