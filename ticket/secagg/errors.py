"""Secure aggregation's exceptions (failed AEAD opens raise ticket.errors.IntegrityError; forged
or altered key adverts, AuthenticationError)."""

from ticket.errors import CodecError, TicketError


class SecAggError(TicketError):
    """Base class of the failures secure aggregation raises on purpose."""


class ParamsError(SecAggError, ValueError):
    """Protocol parameters (clip, levels, thresholds, graph degree) are out of range."""


class ShareError(SecAggError):
    """Shamir shares that cannot give a secret: too few, duplicated, malformed, inconsistent."""


class MessageError(SecAggError, CodecError):
    """A protocol message is malformed, or is for another run, round, node or message kind."""


class RoundStateError(SecAggError):
    """A step was called out of order, or twice (e.g. a second masked vector for one round)."""


class RevealRefusedError(SecAggError):
    """A node refuses an unmask request that would let the server unmask a live device."""


class RoundAbortedError(SecAggError):
    """The round cannot give a correct sum (too few devices or shares); keep the global model.

    Raised instead of ever returning a wrong or partly masked sum.
    """


class AuthenticationError(SecAggError):
    """A key advert is not signed by its node, or its node's identity key is not the one the
    fleet enrolled: a server or relay altered it. The round goes on without that advert (at
    the server) or this node refuses the round (at a node); never a wrong sum."""
