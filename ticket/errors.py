"""The core's exception tree: one base class, one subclass per kind of failure."""


class TicketError(Exception):
    """Base class of every error raised on purpose by the `ticket` core."""


class UnknownNameError(TicketError, LookupError):
    """A registry lookup (model, dataset, partitioner, pruning strategy) found no such name."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}")
        self.kind = kind
        self.name = name
        self.choices = sorted(choices)


class DatasetUnavailableError(TicketError):
    """A dataset's files are missing or do not match their pinned checksums."""


class BundleError(TicketError):
    """A .ticket file is well-formed but unusable: unknown version, bad manifest, wrong shapes."""


class IntegrityError(BundleError):
    """Bytes were modified, or a signature or authentication tag does not verify.

    Deliberately opaque: the message never says which byte or which check failed.
    """


class UnsignedTicketError(BundleError):
    """A ticket carries no signature and the caller did not allow unsigned tickets."""


class CodecError(TicketError):
    """A packed vector on the wire does not decode to what the receiver expects."""
