"""What the device owner waits for: `predict` per row and for 10k rows, the local endpoint's
p50/p99, and the start-up of the owner's commands.

Real readings (heart-disease-uci's 920 rows, cycled to 10,000 without their label), a signed
heart ticket installed in a device's state directory as `edge-daemon tickets add` does, and a
kept global model (the ticket's packed W_k: latency does not depend on the values). Every
command is a fresh process (a console script is exactly `python -c "from MOD import main;
main()"`), so each figure includes the interpreter's start-up and every import it makes.

1. Start-up: `--help`, `status`, `schema`, `ingest` (10 readings), `predict` (1 reading), each
   `--repeats` times: median and fastest.
2. `predict`: 1 reading and 10,000 readings from a CSV file, `--repeats` times; the cost per
   row is the difference over the 9,999 extra rows.
3. The endpoint (`predict_socket: true`): the daemon's server on its Unix socket, `--requests`
   sequential POSTs of one reading each (p50, p99, max), then one POST of 1,000 readings.

    python bench/predict.py            # about 3 minutes on 2 cores

Results: bench/results/predict.{json,md}, with the command that made them.
"""

import argparse
import csv
import io
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/predict.py` from a checkout

RESULTS = ROOT / "bench" / "results"
LABEL = "num"  # heart-uci's label column, left out of the readings predicted


def command(*args: str) -> list[str]:
    """`edge-daemon ARGS` as its console script runs it, in this interpreter."""
    return [sys.executable, "-c", "from edge_daemon.cli import main; main()", *args]


def timed(argv: Sequence[str], repeats: int) -> dict[str, Any]:
    walls, codes = [], set()
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False, cwd=ROOT)
        walls.append(time.perf_counter() - started)
        codes.add(done.returncode)
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(argv[3:])} exited {done.returncode}: {done.stderr!r}")
    return {"median_s": statistics.median(walls), "fastest_s": min(walls), "runs": len(walls)}


def readings_csv(rows: Sequence[dict[str, str]], count: int, path: Path) -> Path:
    """`count` readings cycled from the real rows, without their label column."""
    names = [name for name in rows[0] if name != LABEL]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for index in range(count):
        writer.writerow(rows[index % len(rows)])
    path.write_text(buffer.getvalue())
    return path


def prepare(work: Path) -> tuple[Path, Path, list[dict[str, str]]]:
    """A device (daemon.yaml, state dir with the ticket installed and a kept model)."""
    from edge_daemon.cli import main as edge_daemon
    from edge_daemon.model_store import save_model
    from edge_daemon.paths import DaemonPaths
    from tests.inprocess import signed_ticket
    from ticket.bundle import load_ticket
    from ticket.data.heart import read_heart_rows
    from ticket.packing import PackLayout

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            ticket_path, fleet_key = signed_ticket(work, density=0.1)
        finally:
            sys.stdout = stdout
    probe = work / "conditions.json"
    probe.write_text('{"on_power": true, "network": "offline"}')
    config = work / "daemon.yaml"
    config.write_text(
        f"state_dir: {work / 'device'}\nfleet_key: {fleet_key}\n"
        f"server:\n  address: 127.0.0.1:9\n  insecure: true\nprobe_file: {probe}\n"
    )
    assert edge_daemon(["tickets", "add", "-c", str(config), str(ticket_path)]) == 0
    key = fleet_key.read_bytes()
    ticket = load_ticket(ticket_path, trusted_keys=[key], allow_unsigned=False)[0]
    save_model(
        DaemonPaths(work / "device").model_file,
        PackLayout.from_ticket(ticket).pack(ticket.weights),
        ticket_id=ticket.content_id,
        run_id=1,
        server_round=3,
        received_at=datetime.now(UTC),
    )
    return config, fleet_key, read_heart_rows()


def post(path: Path, readings: list[dict[str, str]]) -> tuple[float, int]:
    from edge_daemon.predict_server import UnixHTTPConnection

    body = json.dumps({"readings": readings}).encode()
    connection = UnixHTTPConnection(path)
    started = time.perf_counter()
    connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return time.perf_counter() - started, response.status


def endpoint(config: Path, rows: list[dict[str, str]], requests: int) -> dict[str, Any]:
    from edge_daemon.config import load_config
    from edge_daemon.predict_server import start_predict_server

    daemon = load_config(config)
    readings = [{k: v for k, v in row.items() if k != LABEL} for row in rows]
    server = start_predict_server(daemon.state_dir, daemon.fleet_key, daemon.data.schema)
    try:
        one = []
        for index in range(requests):
            wall, status = post(server.socket_path, [readings[index % len(readings)]])
            if status != 200:
                raise SystemExit(f"the endpoint answered {status}")
            one.append(wall)
        batch, status = post(server.socket_path, readings[:1000])
        if status != 200:
            raise SystemExit(f"the endpoint answered {status} to 1,000 readings")
    finally:
        server.close()
    one.sort()
    return {
        "requests": requests,
        "p50_s": statistics.median(one),
        "p99_s": one[min(len(one) - 1, round(0.99 * (len(one) - 1)))],
        "max_s": one[-1],
        "batch_1000_s": batch,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-predict"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--before", type=Path, help="an earlier predict.json, shown as 'before'")
    args = parser.parse_args(argv)
    config, _, rows = prepare(args.work)
    c = str(config)
    one = readings_csv(rows, 1, args.work / "one.csv")
    many = readings_csv(rows, 10_000, args.work / "many.csv")
    ten = readings_csv(rows, 10, args.work / "ten.csv")
    startup = {
        "edge-daemon --help": timed(command("--help"), args.repeats),
        "edge-daemon status -c Y": timed(command("status", "-c", c), args.repeats),
        "edge-daemon schema -c Y": timed(command("schema", "-c", c), args.repeats),
        "edge-daemon ingest -c Y (10 readings)": timed(
            command("ingest", "-c", c, str(ten)), args.repeats
        ),
        "edge-daemon predict -c Y (1 reading)": timed(
            command("predict", "-c", c, str(one)), args.repeats
        ),
    }
    ten_k = timed(command("predict", "-c", c, str(many)), args.repeats)
    first = startup["edge-daemon predict -c Y (1 reading)"]
    per_row = (ten_k["median_s"] - first["median_s"]) / 9_999
    document = {
        "command": shlex.join(["python", "bench/predict.py", *(argv or sys.argv[1:])]),
        "machine": (
            f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
        ),
        "startup": startup,
        "predict": {"one": first, "ten_thousand": ten_k, "per_row_s": per_row},
        "endpoint": endpoint(config, rows, args.requests),
    }
    if args.before is not None:
        before = json.loads(args.before.read_text())
        document["before"] = {key: before[key] for key in ("command", "predict", "endpoint")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predict.json").write_text(json.dumps(document, indent=2) + "\n")
    write_markdown(document, args.out / "predict.md")
    print((args.out / "predict.md").read_text())


def write_markdown(document: dict[str, Any], path: Path) -> None:
    startup, predict, served = document["startup"], document["predict"], document["endpoint"]
    lines = [
        "# Predicting on the device",
        "",
        f"Produced by: `{document['command']}` ({document['machine']}). Fresh processes, "
        "median / fastest wall time; readings are heart-disease-uci's real rows without their "
        "label, predicted with a kept global model of a 10% heart ticket.",
        "",
        "| command | median | fastest |",
        "|---|---:|---:|",
    ]
    for name, figure in startup.items():
        lines.append(f"| {name} | {figure['median_s']:.2f} s | {figure['fastest_s']:.2f} s |")
    ten_k = predict["ten_thousand"]
    lines += [
        f"| edge-daemon predict -c Y (10,000 readings) | {ten_k['median_s']:.2f} s "
        f"| {ten_k['fastest_s']:.2f} s |",
        "",
        f"`predict` per row beyond the first: {predict['per_row_s'] * 1e6:.1f} µs "
        "(reading, validating and encoding the CSV, the forward pass, writing the line).",
        "",
        f"Local endpoint (`predict_socket: true`), {served['requests']} sequential requests of "
        f"one reading: p50 {served['p50_s']:.3f} s, p99 {served['p99_s']:.3f} s, max "
        f"{served['max_s']:.3f} s; one request of 1,000 readings {served['batch_1000_s']:.3f} s. "
        "Each request runs in one short-lived worker process (the daemon itself never loads the "
        "network), so a request's latency is mostly that process's start-up.",
    ]
    if "before" in document:
        before = document["before"]
        lines += [
            "",
            f"Before (`{before['command']}`, predict on torch): `predict` of 1 reading "
            f"{before['predict']['one']['median_s']:.2f} s, of 10,000 "
            f"{before['predict']['ten_thousand']['median_s']:.2f} s; endpoint p50 "
            f"{before['endpoint']['p50_s']:.3f} s, p99 {before['endpoint']['p99_s']:.3f} s.",
        ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
