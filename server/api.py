"""What fleet-server offers the other programs on its machine (the `ticket` command).

Two things cross: where the operator's SuperLink is reached and what the fleet trusts
(`OperatorState`, read from server.yaml), and the deployment ledger that records which ticket
is active. Nothing else in server/ is imported from outside it (tests/test_layering.py), so
the server may reorganise its internals without breaking `ticket deploy`.
"""

from dataclasses import dataclass
from pathlib import Path

from server.config import ConfigError, load_config
from server.deployments import Deployment, DeploymentLedger, LedgerError

__all__ = [
    "CONNECTION",
    "ConfigError",
    "Deployment",
    "DeploymentLedger",
    "LedgerError",
    "OperatorState",
    "operator_state",
]

CONNECTION = "fleet"  # the [superlink.NAME] fleet-server writes into its own FLWR_HOME


@dataclass(frozen=True)
class OperatorState:
    """The parts of a fleet-server's state directory another program may use."""

    connection: str  # a [superlink.NAME] in flwr_home/config.toml
    flwr_home: Path  # FLWR_HOME of fleet-server's `flwr` CLI
    fleet_key: Path  # the PEM public key every ticket must be signed by
    ledger_dir: Path  # the deployment ledger (`DeploymentLedger(ledger_dir)`)


def operator_state(server_yaml: Path) -> OperatorState:
    """The operator's state as server.yaml places it; raises ConfigError naming file and key."""
    config = load_config(server_yaml)
    return OperatorState(
        connection=CONNECTION,
        flwr_home=config.paths.cli_home,
        fleet_key=config.fleet_public_key,
        ledger_dir=config.paths.deployments,
    )
