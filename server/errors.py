"""The errors `fleet-server`'s commands report, apart from the Flower glue that raises most of
them, so that the command line and its exit codes load without Flower or torch."""


class FleetError(RuntimeError):
    """fleet-server cannot start or follow the SuperLink or its run."""


class BadArgumentError(FleetError):
    """A command-line argument is out of range or names a file that is not there."""


class NoActiveTicketError(FleetError):
    """server.yaml names no ticket and no rollout has made one active yet."""
