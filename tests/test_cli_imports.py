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


@pytest.mark.parametrize("module", ["server.cli", "ticket_cli.cli", "edge_daemon.cli"])
@pytest.mark.parametrize("argv", [["--help"], [], ["no-such-command"]])
def test_help_and_usage_errors_load_neither(module: str, argv: list[str]) -> None:
    code = f"import {module}\ntry:\n    {module}.main({argv!r})\nexcept SystemExit:\n    pass"
    assert _heavy_loaded(code) == {"torch": False, "flwr": False}


@pytest.mark.parametrize("command", ["init", "status", "nodes", "missing"])
def test_fleet_servers_light_commands_load_neither(command: str, tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    # Port 9 (discard) on loopback: no SuperLink answers, as on a stopped server.
    config.write_text("state_dir: state\nlisten: {host: 127.0.0.1, port: 9}\nrun: {ticket: t}\n")
    from server.cli import main

    assert main(["init", "-c", str(config)]) == 0  # its state: keys, certificates
    argv = ["status", "-c", str(tmp_path / "none.yaml")] if command == "missing" else [command]
    argv += [] if command == "missing" else ["-c", str(config)]
    code = f"import server.cli\nassert server.cli.main({argv!r}) in (0, 3)"
    assert _heavy_loaded(code) == {"torch": False, "flwr": False}


def test_ticket_deployments_loads_neither(tmp_path: Path) -> None:
    # It reads the ledger only; deploying (the ticket format) is what needs torch.
    argv = ["deployments", "--ledger", str(tmp_path)]
    code = f"import ticket_cli.cli\nassert ticket_cli.cli.main({argv!r}) == 0"
    assert _heavy_loaded(code) == {"torch": False, "flwr": False}
