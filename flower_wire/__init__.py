"""ticket.wire records <-> Flower RecordDict; imports only ticket and flwr."""

from flower_wire.records import from_flower, reply, to_flower

__all__ = ["from_flower", "reply", "to_flower"]
