"""The ticket hub: cards, a served index of signed tickets, its client and its web page."""
