"""The errors of the hub client, apart from it: `ticket`'s exit codes name them, and loading
the client would load the ticket format (torch) for every command, `ticket --help` included."""

from ticket.errors import TicketError


class HubError(TicketError):
    """The hub could not be reached, or answered with an error (`status`, its text verbatim)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HubAddressError(TicketError):
    """A --hub value that is not an http(s)://HOST[:PORT][/PATH] address."""
