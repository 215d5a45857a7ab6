"""ticketfleet's pure core: what a winning ticket is, how it is found, and how it travels."""

__version__ = "0.1.0"
