"""A development PKI for a fleet: a private CA and a SuperLink certificate, as files.

Production fleets bring their own CA; this makes TLS the default everywhere else (demos,
tests, benchmarks), so no path runs with `--insecure` only because certificates were missing.
"""

from dataclasses import dataclass
from pathlib import Path

from ticket.atomic import atomic_write_bytes
from ticket.crypto import generate_tls_ca, generate_tls_server_cert


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # what nodes and the `flwr` CLI trust (SuperNode --root-certificates)
    server_cert: Path  # SuperLink --ssl-certfile
    server_key: Path  # SuperLink --ssl-keyfile (mode 0600)

    def superlink_args(self) -> list[str]:
        return [
            *("--ssl-ca-certfile", str(self.ca_cert)),
            *("--ssl-certfile", str(self.server_cert)),
            *("--ssl-keyfile", str(self.server_key)),
        ]


def write_dev_pki(
    directory: Path, hosts: list[str], *, name: str = "ticketfleet dev CA"
) -> TlsFiles:
    """CA and server certificate for `hosts` under `directory` (reused when already there)."""
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    if all(path.exists() for path in (files.ca_cert, files.server_cert, files.server_key)):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = generate_tls_ca(name)
    server_key, server_cert = generate_tls_server_cert(ca_key, ca_cert, hosts)
    # The CA's key signs once and is not kept: a development CA cannot be used again.
    atomic_write_bytes(files.server_key, server_key, mode=0o600)
    atomic_write_bytes(files.server_cert, server_cert)
    atomic_write_bytes(files.ca_cert, ca_cert)
    return files
