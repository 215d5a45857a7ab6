"""The device's ticket cache: bundles verified against the fleet key, stored by content id.

A ticket enters the cache only through `TicketCache.add`, which checks the bundle's integrity
and requires a valid signature by the fleet key that daemon.yaml names (`fleet_key`). Unsigned
tickets are never accepted here, whatever a run config allows. What is stored is the verified
bytes, as `<tickets_dir>/<content id>.ticket`, written atomically: a reader finds a whole
verified ticket or none.

`path` verifies the stored file again (signature, and that it holds the ticket its name says)
before handing it out: the cache is only as trustworthy as every process that can write to the
state directory, and the fleet key may have been rotated since. Verifying decodes the bundle,
which loads torch; `ids` and `has` only list the directory, so `edge-daemon status` and the
idle daemon can use them without it.

The cache does not write the durable state. `install_ticket` is the one call that caches a
ticket and also records its id in `DaemonState.ticket_ids`; the directory stays the source of
truth for what is cached (a crash between the two steps leaves a cached ticket not yet
recorded, never a recorded one that is missing).
"""

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from edge_daemon.paths import DaemonPaths
from edge_daemon.state import update_state
from ticket.atomic import atomic_write_bytes

if TYPE_CHECKING:  # ticket.bundle imports torch; loaded only when a ticket is verified
    from ticket.bundle import Ticket

SUFFIX = ".ticket"
_CONTENT_ID = re.compile(r"[0-9a-f]{64}")


class TicketCacheError(Exception):
    """Base class of the ticket cache's errors; each message names the file concerned."""


class TicketRefusedError(TicketCacheError):
    """A ticket is not intact or not signed by the fleet key; nothing was stored."""


class TicketUnreadableError(TicketRefusedError):
    """The ticket file cannot be read at all (missing, no permission); nothing was stored."""


class TicketNotCachedError(TicketCacheError, LookupError):
    """No ticket with this content id is in the cache."""


class FleetKeyError(TicketCacheError):
    """The fleet key named in daemon.yaml is missing or is not an Ed25519 public key."""


class TicketCache:
    def __init__(self, tickets_dir: Path, fleet_key_path: Path) -> None:
        self.tickets_dir = tickets_dir
        self.fleet_key_path = fleet_key_path

    def add(self, source: Path | bytes) -> str:
        """Verify a ticket (a file or its bytes), store it, and return its content id."""
        if isinstance(source, Path):
            name = str(source)
            try:
                data = _read_bounded(source)
            except OSError as error:
                raise TicketUnreadableError(f"{name}: cannot read: {error.strerror}") from None
        else:
            name, data = f"ticket of {len(source)} bytes", source
        ticket_id = self._verify(data, name).content_id
        self.tickets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Re-adding a cached ticket rewrites it: the new bytes may carry more signatures.
        atomic_write_bytes(self._file(ticket_id), data)
        return ticket_id

    def path(self, ticket_id: str) -> Path:
        """The cached file of `ticket_id`, after verifying it again (see the module docstring)."""
        file = self._file(ticket_id)
        try:
            data = _read_bounded(file)
        except FileNotFoundError:
            raise TicketNotCachedError(
                f"ticket {ticket_id} is not cached in {self.tickets_dir}"
            ) from None
        except OSError as error:
            raise TicketUnreadableError(f"{file}: cannot read: {error.strerror}") from None
        found = self._verify(data, str(file)).content_id
        if found != ticket_id:
            raise TicketRefusedError(f"{file}: holds ticket {found}, not the one its name says")
        return file

    def ids(self) -> tuple[str, ...]:
        """Content ids of the cached tickets, sorted; unverified (only the names are read)."""
        try:
            names = os.listdir(self.tickets_dir)
        except FileNotFoundError:
            return ()
        stems = (name.removesuffix(SUFFIX) for name in names if name.endswith(SUFFIX))
        # Temporary files of an interrupted write (".<name>.<pid>.tmp") never match.
        return tuple(sorted(stem for stem in stems if _CONTENT_ID.fullmatch(stem)))

    def has(self, ticket_id: str) -> bool:
        is_id = _CONTENT_ID.fullmatch(ticket_id) is not None
        return is_id and (self.tickets_dir / f"{ticket_id}{SUFFIX}").is_file()

    def _file(self, ticket_id: str) -> Path:
        # The id becomes a file name: anything but 64 hex digits could step out of the cache.
        if _CONTENT_ID.fullmatch(ticket_id) is None:
            raise TicketNotCachedError(f"{ticket_id!r} is not a ticket content id (64 hex digits)")
        return self.tickets_dir / f"{ticket_id}{SUFFIX}"

    def _verify(self, data: bytes, name: str) -> "Ticket":
        from ticket.bundle import decode_ticket
        from ticket.errors import TicketError

        fleet_key = self._fleet_key()
        try:
            return decode_ticket(data, trusted_keys=[fleet_key], allow_unsigned=False)
        except TicketError as error:
            raise TicketRefusedError(f"{name}: refused: {error}") from None

    def _fleet_key(self) -> bytes:
        from ticket import crypto

        path = self.fleet_key_path
        try:
            pem = path.read_bytes()
        except OSError as error:
            raise FleetKeyError(f"{path}: cannot read the fleet key: {error.strerror}") from None
        try:
            crypto.load_public_key(pem)
        except crypto.KeyFormatError as error:
            raise FleetKeyError(f"{path}: not a usable fleet key: {error}") from None
        return pem


def install_ticket(paths: DaemonPaths, fleet_key_path: Path, source: Path | bytes) -> str:
    """Cache a verified ticket and record its id in the daemon's durable state."""
    ticket_id = TicketCache(paths.tickets_dir, fleet_key_path).add(source)
    update_state(paths.state_file, lambda state: state.with_ticket(ticket_id))
    return ticket_id


def _read_bounded(path: Path) -> bytes:
    """A ticket file's bytes, refused unread past ticket.bundle.MAX_TICKET_BYTES."""
    from ticket.bundle import read_ticket_bytes
    from ticket.errors import TicketError

    try:
        return read_ticket_bytes(path)
    except TicketError as error:
        raise TicketRefusedError(str(error)) from None
