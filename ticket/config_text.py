"""Flower's `--run-config` / `--node-config` text: `key=value` pairs with TOML values."""

import json
from collections.abc import Mapping

ConfigValue = bool | float | int | str


def toml_values(values: Mapping[str, ConfigValue]) -> str:
    """`key=value` pairs as `--run-config` / `--node-config` take them (strings quoted)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)  # a TOML basic string for paths and names
        else:
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)
