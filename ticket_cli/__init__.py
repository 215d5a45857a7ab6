"""The ML engineer's `ticket` command: find, inspect, sign, publish and deploy tickets."""
