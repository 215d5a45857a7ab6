"""The three commands start without torch or Flower: `--help`, a usage error and the light
subcommands must not pay their multi-second import (bench/cli.py times them)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "flwr")


def _heavy_loaded(code: str) -> dict[str, bool]:
    # A fresh interpreter: this test process has torch loaded already (tests/conftest.py).
    script = f"{code}\nimport sys\nprint(' '.join(str(m in sys.modules) for m in {HEAVY!r}))"
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    flags = completed.stdout.split()[-len(HEAVY) :]
    return dict(zip(HEAVY, (flag == "True" for flag in flags), strict=True))


@pytest.mark.parametrize(
    "module",
    [
        "server.cli",
        "ticket_cli.cli",
        "edge_daemon.cli",
        "server.metrics",  # the scrape handler
        "server.api",  # what `ticket deploy` reads the ledger and the progress through
    ],
)
def test_importing_a_command_loads_neither_torch_nor_flower(module: str) -> None:
    assert _heavy_loaded(f"import {module}") == {"torch": False, "flwr": False}


@pytest.mark.parametrize("module", ["server.cli", "edge_daemon.cli"])
def test_building_the_parser_loads_neither(module: str) -> None:
    # `--help` and a usage error end in the parser.
    assert _heavy_loaded(f"import {module}\n{module}.build_parser()") == {
        "torch": False,
        "flwr": False,
    }
