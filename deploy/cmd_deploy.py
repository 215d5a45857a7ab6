"""`ticket deploy`: push a signed ticket to the fleet's connected devices and report each one.

    ticket deploy FILE|ID --connection NAME --fleet-key PUB [--canary F] [--timeout S]
                  [--flwr-home DIR] [--run-dir DIR] [--registry DIR]

A Flower run of this project's app with run config `mode = "deploy"` (server/rollout.py):
every connected device verifies the bundle against the fleet key in its own daemon.yaml,
caches it and answers installed or rejected-with-reason; a silent one is offline. The command
prints one row per device and exits 0 only if every device installed the ticket. The run's
`deploy.json` is read from `--run-dir`, so run it on the SuperLink's machine (where
`fleet-server run` runs). `--connection` names a `[superlink.NAME]` entry in
`$FLWR_HOME/config.toml` (`--flwr-home`).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from deploy.exit_codes import ExitCode
from ticket.bundle import read_ticket
from ticket.config_text import ConfigValue, toml_values
from ticket.errors import TicketError

APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: the project's pyproject.toml


class DeployError(TicketError):
    """The rollout run could not be submitted or did not report."""


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="push a signed ticket to the fleet's devices",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("source", metavar="FILE|ID", help="a .ticket file or a registry id")
    parser.add_argument("--connection", required=True, help="[superlink.NAME] to submit to")
    parser.add_argument("--fleet-key", type=Path, required=True, help="the fleet's public key")
    parser.add_argument("--canary", type=float, default=0.0, help="fraction of devices first")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds devices have")
    parser.add_argument("--flwr-home", type=Path, help="FLWR_HOME holding the connection")
    parser.add_argument("--run-dir", type=Path, help="where deploy.json goes (default: temp)")
    parser.add_argument("--registry", type=Path, help="registry to resolve an ID from")
    parser.set_defaults(handler=run_deploy)


def run_deploy(args: argparse.Namespace) -> int:
    if not 0.0 <= args.canary <= 1.0:
        raise DeployError(f"--canary must be in [0, 1], got {args.canary}")
    run_dir = (args.run_dir or Path(tempfile.mkdtemp(prefix="ticket-deploy-"))).resolve()
    ticket_path = _resolve(args.source, args.registry, run_dir, args.fleet_key)
    # Checked here too, so a wrong file fails before any device is bothered.
    ticket = read_ticket(ticket_path, trusted_keys=[args.fleet_key.read_bytes()])
    outcome = run_dir / "deploy.json"
    outcome.unlink(missing_ok=True)
    config: dict[str, ConfigValue] = {
        "mode": "deploy",
        "ticket-path": str(ticket_path.resolve()),
        "run-dir": str(run_dir),
        "fleet-key": str(args.fleet_key.resolve()),
        "canary-fraction": float(args.canary),
        "round-timeout-s": float(args.timeout),
    }
    print(f"deploying {ticket.content_id[:12]} through {args.connection} ...", flush=True)
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    if args.flwr_home is not None:
        env["FLWR_HOME"] = str(args.flwr_home)
    flwr = Path(sys.executable).parent / "flwr"
    command = [str(flwr), "run", str(APP_DIR), args.connection, "--stream"]
    command += ["--run-config", toml_values(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if not outcome.exists():
        tail = (result.stdout + result.stderr)[-800:]
        raise DeployError(f"the rollout run left no {outcome.name}; flwr run said:\n{tail}")
    document: dict[str, Any] = json.loads(outcome.read_text())
    print(format_acks(document))
    return ExitCode.OK if document["succeeded"] else ExitCode.FAILURE


def format_acks(document: dict[str, Any]) -> str:
    lines = [f"{'node':>20}  {'status':<9} reason"]
    for node in document["nodes"]:
        mark = " (canary)" if node["canary"] else ""
        lines.append(f"{node['node_id']:>20}  {node['status']:<9} {node['reason']}{mark}")
    counts: dict[str, int] = {}
    for node in document["nodes"]:
        counts[node["status"]] = counts.get(node["status"], 0) + 1
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    verdict = "rollout succeeded" if document["succeeded"] else "rollout did NOT succeed"
    return "\n".join([*lines, f"{verdict}: {summary or 'no device connected'}"])


def _resolve(source: str, registry: Path | None, run_dir: Path, fleet_key: Path) -> Path:
    path = Path(source)
    if path.exists():
        return path
    from deploy.registry import TicketRegistry  # only when pulling from the registry

    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "deploy.ticket"
    with TicketRegistry(registry or _default_registry(), create=False) as store:
        store.pull(source, out, [fleet_key.read_bytes()], overwrite=True)
    return out


def _default_registry() -> Path:
    from deploy.cmd_registry import default_registry

    return default_registry(os.environ, Path.home())
