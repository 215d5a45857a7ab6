"""Every file the daemon keeps under its state directory, named in one place."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DaemonPaths:
    state_dir: Path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        """Held by the one `edge-daemon run` that uses this state directory."""
        return self.state_dir / "daemon.lock"

    @property
    def readings_db(self) -> Path:
        return self.state_dir / "readings.sqlite3"

    @property
    def model_file(self) -> Path:
        """The latest global model the server sent (edge_daemon/model_store.py)."""
        return self.state_dir / "model" / "latest.model"

    @property
    def personal_model_file(self) -> Path:
        """This device's fine-tuned copy of a global model (edge_daemon/personalise.py)."""
        return self.state_dir / "model" / "personal.model"

    @property
    def personal_record_file(self) -> Path:
        """What the last personalisation found and whether `predict` uses its model."""
        return self.state_dir / "model" / "personal.json"

    @property
    def tickets_dir(self) -> Path:
        return self.state_dir / "tickets"

    @property
    def flwr_home(self) -> Path:
        """The node's own FLWR_HOME, so it never shares ~/.flwr with anything else."""
        return self.state_dir / "flwr"

    @property
    def status_file(self) -> Path:
        """The running daemon's eligibility and node state, for `edge-daemon status`."""
        return self.state_dir / "status.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"
