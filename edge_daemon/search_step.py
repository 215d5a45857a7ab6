"""A fleet search's round on the device: the installed dense ticket, narrowed to the search's mask.

The server sends the search's current mask with every round's instruction (ticket/wire.py
SearchStep). The mask may only narrow the installed, signed ticket: a mask that keeps a weight
the ticket pruned, or that has another shape, is refused. The signed ticket still decides the
model, its encoding of readings and its content id (the codec binds payloads to it); the mask
decides which coordinates travel, exactly as a ticket's own mask does in training.
"""

import dataclasses

import numpy as np

from ticket.bundle import Ticket
from ticket.errors import TicketError
from ticket.fleet_search.mask_bits import decode_mask


def narrowed(ticket: Ticket, mask_bits: bytes) -> Ticket:
    """`ticket` with the search's mask in place of its own; raises TicketError if it widens it."""
    shapes = {name: tuple(mask.shape) for name, mask in ticket.masks.items()}
    masks = decode_mask(mask_bits, shapes)
    for name, mask in masks.items():
        if np.any(mask & ~ticket.masks[name]):
            raise TicketError(f"the search mask keeps weights of {name} the ticket pruned")
    return dataclasses.replace(ticket, masks=masks)
