"""What fleet-server offers the other programs on its machine (the `ticket` command).

What crosses: where the operator's SuperLink is reached and what the fleet trusts
(`OperatorState`, read from server.yaml), the deployment ledger that records which ticket
is active, a rollout's progress file (acks as they arrive) and the enrolled devices' names.
Nothing else in server/ is imported from outside it (tests/test_layering.py), so
the server may reorganise its internals without breaking `ticket deploy`.
"""

from dataclasses import dataclass
from pathlib import Path

from server.config import ConfigError, load_config
from server.deployments import Deployment, DeploymentLedger, LedgerError
from server.enrolment import EnrolmentError, EnrolmentRecords
from server.rollout_progress import NO_DEVICE, PROGRESS_FILE, read_progress

__all__ = [
    "CONNECTION",
    "NO_DEVICE",
    "PROGRESS_FILE",
    "ConfigError",
    "Deployment",
    "DeploymentLedger",
    "LedgerError",
    "OperatorState",
    "device_names",
    "operator_state",
    "read_progress",
]

CONNECTION = "fleet"  # the [superlink.NAME] fleet-server writes into its own FLWR_HOME


@dataclass(frozen=True)
class OperatorState:
    """The parts of a fleet-server's state directory another program may use."""

    connection: str  # a [superlink.NAME] in flwr_home/config.toml
    flwr_home: Path  # FLWR_HOME of fleet-server's `flwr` CLI
    fleet_key: Path  # the PEM public key every ticket must be signed by
    ledger_dir: Path  # the deployment ledger (`DeploymentLedger(ledger_dir)`)
    nodes_file: Path  # the enrolment records (`device_names(nodes_file)`)


def operator_state(server_yaml: Path) -> OperatorState:
    """The operator's state as server.yaml places it; raises ConfigError naming file and key."""
    config = load_config(server_yaml)
    return OperatorState(
        connection=CONNECTION,
        flwr_home=config.paths.cli_home,
        fleet_key=config.fleet_public_key,
        ledger_dir=config.paths.deployments,
        nodes_file=config.paths.nodes_file,
    )


def device_names(nodes_file: Path) -> dict[int, str]:
    """Node id -> the name it was enrolled under (`fleet-server enroll --name`); raises
    LedgerError naming the file if the records are damaged."""
    try:
        return {entry.node_id: entry.name for entry in EnrolmentRecords(nodes_file).read()}
    except EnrolmentError as error:
        raise LedgerError(str(error)) from None
