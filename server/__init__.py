"""Aggregation side: the Flower ServerApp, its strategy, and the fleet-server command."""
