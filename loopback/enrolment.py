"""A loopback fleet enrolled the way `fleet-server enroll` enrols: every node key it registers
is recorded in a nodes.json with the fleet key's certificate of it, the roster the ServerApp
reads (run config `roster`) so that the edge daemons, which trust the fleet key, accept each
other's secure-aggregation keys (ticket/secagg/identity.py)."""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loopback.launcher import Loopback
from server.enrolment import Enrolment, EnrolmentRecords, read_node_key, secagg_certificate


@dataclass
class EnrolledLoopback(Loopback):
    """Loopback whose node registration also writes `roster` (default: workdir/nodes.json)."""

    fleet_signing_key: Path | None = None  # PEM Ed25519 private key; None: register only
    roster: Path | None = None

    @property
    def roster_path(self) -> Path:
        return self.roster or self.workdir / "nodes.json"

    def register_node(self, public_key: Path, *, name: str) -> None:
        node_id = self.cli.register_node(public_key, name=name)
        if self.fleet_signing_key is None:
            return
        line, fingerprint = read_node_key(public_key)
        certificate = secagg_certificate(self.fleet_signing_key.read_bytes(), node_id, line)
        enrolled_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.roster_path.parent.mkdir(parents=True, exist_ok=True)
        EnrolmentRecords(self.roster_path).add(
            Enrolment(node_id, name, fingerprint, line, enrolled_at, certificate)
        )
