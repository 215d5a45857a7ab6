"""From a ticket to the fleet: the `ticket` command, the ticket registry and rollouts."""
