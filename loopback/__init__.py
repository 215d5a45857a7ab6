"""Development harness: a real SuperLink and edge daemons on one machine (tests, bench, demo)."""
