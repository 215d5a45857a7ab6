"""Time to deploy a ticket to 4 devices on loopback, and the bytes sent per device.

Real processes: a SuperLink with TLS and node authentication, one `edge-daemon` per heart-uci
hospital (none holding the ticket yet), and `ticket deploy` as a user runs it. Repeated
`--repeats` times (each a fresh rollout run of the same ticket: devices re-verify and rewrite
it). Bytes per device are the bundle itself, the payload every device receives; Flower's own
framing is not counted.

    python bench/deploy.py        # about 2 minutes

Results: bench/results/deploy.{json,md}, with the command that made them.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/deploy.py` from a checkout

from loopback.devices import prepare_devices  # noqa: E402
from loopback.launcher import CONNECTION, Loopback, free_port  # noqa: E402
from tests.inprocess import signed_ticket  # noqa: E402
from ticket.data.heart import HEART_SITES  # noqa: E402
from ticket.tls import write_dev_pki  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-deploy"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    ticket, fleet_key = signed_ticket(args.work, density=0.1)
    port = free_port()
    tls = write_dev_pki(args.work / "pki", ["127.0.0.1"])
    devices = prepare_devices(
        args.work / "devices",
        hospitals=HEART_SITES,
        ticket=None,
        fleet_key=fleet_key,
        superlink=f"127.0.0.1:{port}",
        ports=[free_port() for _ in HEART_SITES],
        root_certificates=tls.ca_cert,
        node_auth=True,
    )
    command = [
        str(Path(sys.executable).parent / "ticket"),
        *("deploy", str(ticket), "--connection", CONNECTION, "--fleet-key", str(fleet_key)),
        *("--flwr-home", str(args.work / "loopback" / "cli")),
    ]
    runs = []
    loopback = Loopback.of_devices(
        args.work / "loopback", ROOT, devices, superlink_port=port, tls=tls
    )
    with loopback as fleet:
        fleet.wait_for_daemon_nodes(len(devices))
        for repeat in range(args.repeats):
            run_dir = args.work / f"deploy-{repeat}"
            started = time.perf_counter()
            result = subprocess.run(
                [*command, "--run-dir", str(run_dir)], capture_output=True, text=True, check=False
            )
            wall = time.perf_counter() - started
            outcome = json.loads((run_dir / "deploy.json").read_text())
            if result.returncode != 0 or not outcome["succeeded"]:
                sys.exit(f"deploy {repeat} failed:\n{result.stdout}\n{result.stderr}")
            runs.append({"wall_s": wall, "installed": len(outcome["nodes"])})
            print(f"deploy {repeat}: {wall:.1f} s, {len(outcome['nodes'])} devices", flush=True)
    walls = [run["wall_s"] for run in runs]
    document = {
        "command": shlex.join(["python", "bench/deploy.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "devices": len(devices),
        "bundle_bytes": ticket.stat().st_size,
        "runs": runs,
        "median_wall_s": statistics.median(walls),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        "# Deploying a ticket to 4 devices on loopback",
        "",
        f"Produced by: `{document['command']}` ({document['machine']}). TLS and node "
        "authentication on; one `edge-daemon` per heart-uci hospital.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| `ticket deploy` wall time, {len(runs)} runs (submit to every ack) | median "
        f"{document['median_wall_s']:.1f} s (min {min(walls):.1f}, max {max(walls):.1f}) |",
        f"| bytes sent per device (the signed bundle) | {document['bundle_bytes']:,} |",
        f"| devices installed per run | {', '.join(str(r['installed']) for r in runs)} |",
        "",
    ]
    (args.out / "deploy.md").write_text("\n".join(lines))
    print((args.out / "deploy.md").read_text())


if __name__ == "__main__":
    main()
