"""Where fleet-server keeps its files: every path under the state directory comes from here."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerPaths:
    """The layout of one fleet-server state directory (mode 0700, made by `fleet-server init`)."""

    state_dir: Path

    @property
    def pki_dir(self) -> Path:
        """The development CA and server certificate `init` writes (tls: not configured)."""
        return self.state_dir / "pki"

    @property
    def keys_dir(self) -> Path:
        """The fleet signing key pair `init` writes (fleet_key: not configured)."""
        return self.state_dir / "keys"

    @property
    def superlink_home(self) -> Path:
        """The SuperLink's FLWR_HOME and working directory."""
        return self.state_dir / "superlink"

    @property
    def database(self) -> Path:
        """The SuperLink's `--database`: registered nodes and runs survive a restart."""
        return self.superlink_home / "state.db"

    @property
    def cli_home(self) -> Path:
        """FLWR_HOME of the `flwr` CLI: config.toml with the connection to our SuperLink."""
        return self.state_dir / "cli"

    @property
    def app_dir(self) -> Path:
        """The Flower app `run` submits: a pyproject.toml written from ticket/runconfig.py."""
        return self.state_dir / "app"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def run_dir(self, name: str) -> Path:
        """Checkpoints, rounds.jsonl and rounds.png of the run `name`; a re-run resumes it."""
        return self.state_dir / "runs" / name

    @property
    def deployments(self) -> Path:
        """The deployment ledger (server/deployments.py): the active ticket, every rollout."""
        return self.state_dir / "deployments"

    @property
    def pid_file(self) -> Path:
        """The running `fleet-server run` and its SuperLink (JSON); found stale after a kill."""
        return self.state_dir / "fleet-server.pid"

    @property
    def lock_file(self) -> Path:
        """Held by the one `fleet-server run` that uses this state directory."""
        return self.state_dir / "fleet-server.lock"

    @property
    def run_file(self) -> Path:
        """The training run last submitted (JSON: run id, run name, submitted_at)."""
        return self.state_dir / "run.json"

    @property
    def jobs_dir(self) -> Path:
        """Fleet searches queued for the running service (server/search_jobs.py)."""
        return self.state_dir / "jobs"

    @property
    def nodes_snapshot(self) -> Path:
        """The nodes as the running service last listed them (server/node_snapshot.py)."""
        return self.state_dir / "nodes-online.json"

    @property
    def service_file(self) -> Path:
        """What the running `fleet-server run` does (server/service_state.py; JSON)."""
        return self.state_dir / "service.json"

    @property
    def nodes_file(self) -> Path:
        """Enrolment records (JSON): name, key fingerprint, node id, enrolled_at per node."""
        return self.state_dir / "nodes.json"
