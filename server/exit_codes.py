"""Exit statuses of the `fleet-server` command, each with the help line printed beside the error."""

from enum import IntEnum

from server.config import ConfigError
from server.enrolment import EnrolmentError
from server.errors import BadArgumentError, FleetError
from server.example_config import ExampleConfigError
from server.superlink import SuperLinkError
from ticket.atomic import AlreadyRunningError
from ticket.errors import TicketError


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # the command could not do its job (the SuperLink, the run), or the run failed
    USAGE = 2  # argparse's own status for bad arguments
    BAD_INPUT = 3  # server.yaml, a key file, a certificate, the state directory
    ALREADY_RUNNING = 7  # another `fleet-server run` holds the state directory
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it; also on SIGTERM


HELP: dict[ExitCode, str] = {
    ExitCode.FAILURE: "see the logs under the state directory (state_dir/logs)",
    ExitCode.BAD_INPUT: "fix the file or argument named in the message and run the command again",
    ExitCode.ALREADY_RUNNING: "one fleet-server run per state directory: stop the other one (its "
    "pid is named above)",
}


def exit_code_for(error: BaseException) -> ExitCode:
    """Map an expected error to the status the process exits with; most specific class first."""
    table: list[tuple[type[BaseException], ExitCode]] = [
        (AlreadyRunningError, ExitCode.ALREADY_RUNNING),
        (ConfigError, ExitCode.BAD_INPUT),
        (EnrolmentError, ExitCode.BAD_INPUT),
        (ExampleConfigError, ExitCode.BAD_INPUT),
        (TicketError, ExitCode.BAD_INPUT),  # a malformed key file
        (BadArgumentError, ExitCode.BAD_INPUT),
        (FleetError, ExitCode.FAILURE),
        (SuperLinkError, ExitCode.FAILURE),
        (OSError, ExitCode.BAD_INPUT),  # e.g. a state directory that is not writable
    ]
    for error_type, code in table:
        if isinstance(error, error_type):
            return code
    return ExitCode.FAILURE
