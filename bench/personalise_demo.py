"""Personal vs global accuracy on each hospital's own held-out readings after `make demo`.

Runs the demo as `make demo` does (`python -m loopback.demo`: the ticket found on the fleet,
rolled out and trained for 3 rounds on four hospital daemons under secure aggregation; the
server then pushes the final model), which ends with every device running `edge-daemon
personalise` on that final model. This script records what the devices wrote
(OUT/personalise.json: each device's record, as `edge-daemon personalise --json` prints it) and
the run's own rounds.

    python bench/personalise_demo.py          # about 7 minutes on 2 cores

Results: bench/results/personalise_demo.{json,md}, with the command that made them. For the
same comparison over 5 seeds and three kinds of global model, see bench/personalise.py.
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-demo"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    demo = subprocess.run(
        [sys.executable, "-m", "loopback.demo", "--out", str(args.work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if demo.returncode != 0:
        raise SystemExit(f"the demo failed ({demo.returncode}):\n{demo.stdout}\n{demo.stderr}")
    records = json.loads((args.work / "personalise.json").read_text())
    rounds = [
        json.loads(line)
        for line in (args.work / "loopback" / "run" / "rounds.jsonl").read_text().splitlines()
    ]
    document = {
        "command": shlex.join(["python", "bench/personalise_demo.py", *(argv or sys.argv[1:])]),
        "machine": (
            f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
        ),
        "wall_s": time.monotonic() - started,
        "server_accuracy": [(line.get("server_eval") or {}).get("accuracy") for line in rounds],
        "devices": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "personalise_demo.json").write_text(json.dumps(document, indent=2) + "\n")
    write_markdown(document, args.out / "personalise_demo.md")
    print((args.out / "personalise_demo.md").read_text())


def write_markdown(document: dict[str, Any], path: Path) -> None:
    accuracy = ", ".join(f"{a:.3f}" for a in document["server_accuracy"] if a is not None)
    lines = [
        "# Personalisation after the 3-round demo run",
        "",
        f"Produced by: `{document['command']}` ({document['machine']}, "
        f"{document['wall_s']:.0f} s, the whole demo included).",
        "",
        f"The demo's training run: server accuracy by round {accuracy} (held-out rows of all "
        "four hospitals). Each device then fine-tuned the final global model on its own "
        "labelled readings (daemon.yaml defaults: `layers: last`, 20 epochs) and scored both "
        "models on its held-out readings (every 5th labelled one), as `edge-daemon status` "
        "shows them. One run, one seed: with 15 to 45 held-out rows a device's figure moves by "
        "several points between runs; bench/personalise.py has the 5-seed comparison on the "
        "hospitals' test rows.",
        "",
        "| hospital | train / held-out rows | global | personal | predict uses | why |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, record in document["devices"].items():
        lines.append(
            f"| {name} | {record['train_rows']} / {record['held_out_rows']} "
            f"| {_percent(record['global_accuracy'])} | {_percent(record['personal_accuracy'])} "
            f"| {'personal' if record['used'] else 'global'} | {record['why']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
