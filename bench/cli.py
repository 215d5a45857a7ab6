"""Start-up wall time of the three commands: `--help`, a usage error, the light subcommands,
and a Prometheus scrape of `fleet-server run --metrics-port`.

Each figure is the median over `--repeats` fresh processes (a console script is exactly
`python -c "from MOD import main; main()"`), so it includes the interpreter's start-up and
every import the command makes. With `--before DIR` (a checkout of another commit, e.g.
`git archive e08e451 | tar -x -C DIR`) every command is timed in both trees, same state.

Two phases: the SuperLink down (the state only, `fleet-server init`), then up: `fleet-server run
-c server.yaml --metrics-port P` with no ticket active (it serves the fleet and waits), a
`run.json` naming a run id as after a submission, and then `nodes`, `status` and one HTTP GET
of /metrics at a time.

    python bench/cli.py --before /tmp/before-e08e451      # about 5 minutes on 2 cores

Results: bench/results/cli.md, with the command that made it.
"""

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/cli.py` from a checkout

RESULTS = ROOT / "bench" / "results"
SCRIPTS = {
    "fleet-server": "server.cli",
    "ticket": "ticket_cli.cli",
    "edge-daemon": "edge_daemon.cli",
}
RUN_ID = 4242  # what run.json names in the SuperLink-up phase: no such run on the SuperLink


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Tree:
    """A checkout whose packages the timed processes import (PYTHONPATH wins over the
    editable install's finder, which Python consults after sys.path)."""

    def __init__(self, label: str, root: Path) -> None:
        self.label, self.root = label, root.resolve()
        self.env = dict(os.environ, PYTHONPATH=str(self.root), FLWR_TELEMETRY_ENABLED="0")
        found = subprocess.run(
            [sys.executable, "-c", "import server; print(server.__file__)"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            cwd=self.root,  # `python -c` puts the working directory first on sys.path
        ).stdout.strip()
        if not found.startswith(str(self.root)):
            raise SystemExit(f"{label}: `server` resolves to {found}, not under {self.root}")

    def argv(self, command: Sequence[str]) -> list[str]:
        module = SCRIPTS[command[0]]
        code = f"import sys; from {module} import main; sys.exit(main())"
        return [sys.executable, "-c", code, *command[1:]]

    def time(self, command: Sequence[str]) -> tuple[float, int]:
        started = time.perf_counter()
        completed = subprocess.run(
            self.argv(command), env=self.env, capture_output=True, check=False, cwd=self.root
        )
        return time.perf_counter() - started, completed.returncode


Figure = tuple[float, float, set[int]]  # median s, min s, exit statuses seen


def figures(samples: Sequence[tuple[float, int]]) -> Figure:
    seconds = [s for s, _ in samples]
    return statistics.median(seconds), min(seconds), {code for _, code in samples}


def interleaved(repeats: int, trees: Sequence["Tree"], command: Sequence[str]) -> dict[str, Figure]:
    """Each repeat runs the command in every tree in turn, so load that comes and goes (the
    machine is shared) falls on both trees alike."""
    samples: dict[str, list[tuple[float, int]]] = {tree.label: [] for tree in trees}
    for _ in range(repeats):
        for tree in trees:
            samples[tree.label].append(tree.time(command))
    return {label: figures(taken) for label, taken in samples.items()}


def prepare(work: Path) -> dict[str, Path]:
    """server.yaml with its state (port: nothing listens), a daemon.yaml, a ticket."""
    from server.cli import main as fleet_server
    from tests.inprocess import find_ticket

    port = free_port()
    server_yaml = work / "server.yaml"
    server_yaml.write_text(
        f"state_dir: {work / 'state'}\nlisten: {{host: 127.0.0.1, port: {port}}}\n"
        "run: {ticket: null}\n"
    )
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            assert fleet_server(["init", "-c", str(server_yaml)]) == 0
            find_ticket(work / "t.ticket", density=0.5)
        finally:
            sys.stdout = stdout
    probe = work / "conditions.json"
    probe.write_text('{"on_power": true, "network": "offline"}')
    daemon_yaml = work / "daemon.yaml"
    daemon_yaml.write_text(
        f"state_dir: {work / 'device'}\nfleet_key: {work / 'state' / 'keys' / 'fleet.pub'}\n"
        f"server:\n  address: 127.0.0.1:{port}\n  insecure: true\nprobe_file: {probe}\n"
    )
    return {"server": server_yaml, "daemon": daemon_yaml, "ticket": work / "t.ticket"}


def down_commands(files: dict[str, Path], work: Path) -> list[tuple[str, list[str]]]:
    s, d, t = str(files["server"]), str(files["daemon"]), str(files["ticket"])
    return [
        ("fleet-server --help", ["fleet-server", "--help"]),
        ("fleet-server (usage error)", ["fleet-server", "no-such-command"]),
        ("fleet-server status -c X", ["fleet-server", "status", "-c", s]),
        ("fleet-server nodes -c X", ["fleet-server", "nodes", "-c", s]),
        ("fleet-server init (no server.yaml)", ["fleet-server", "init", "-c", str(work / "no")]),
        ("ticket --help", ["ticket", "--help"]),
        ("ticket (usage error)", ["ticket", "no-such-command"]),
        ("ticket deployments -c X", ["ticket", "deployments", "-c", s]),
        ("ticket inspect T", ["ticket", "inspect", t, "--allow-unsigned"]),
        ("ticket inspect T --json", ["ticket", "inspect", t, "--allow-unsigned", "--json"]),
        ("edge-daemon --help", ["edge-daemon", "--help"]),
        ("edge-daemon status -c Y", ["edge-daemon", "status", "-c", d]),
    ]


def scrape(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        response.read()
        return time.perf_counter() - started, response.status


def up_phase(tree: Tree, files: dict[str, Path], repeats: int) -> dict[str, Figure]:
    """`fleet-server run` of `tree` serving the fleet with metrics; the commands against it."""
    metrics_port = free_port()
    server_yaml = files["server"]
    log = open(server_yaml.parent / f"run-{tree.label}.log", "wb")  # noqa: SIM115
    run = subprocess.Popen(
        tree.argv(
            ["fleet-server", "run", "-c", str(server_yaml), "--metrics-port", str(metrics_port)]
        ),
        env=tree.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tree.root,  # `python -c` imports from its working directory first
    )
    state = server_yaml.parent / "state"
    try:
        deadline = time.monotonic() + 120
        # The metrics endpoint starts first; the commands need the SuperLink itself.
        while (
            b"SuperLink listening"
            not in (server_yaml.parent / f"run-{tree.label}.log").read_bytes()
        ):
            if run.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{tree.label}: fleet-server run did not come up; see {log.name}")
            time.sleep(0.2)
        # As after a submission: `status` and the scrape then ask the SuperLink for its state.
        (state / "run.json").write_text(json.dumps({"run_id": RUN_ID, "name": "bench"}))
        # A service that lists the nodes in the background (server/node_snapshot.py) has
        # written its first list within seconds; a tree without one never does.
        snapshot_deadline = time.monotonic() + 30
        while not (state / "nodes-online.json").exists() and time.monotonic() < snapshot_deadline:
            time.sleep(0.5)
        s = str(server_yaml)
        results = {
            "fleet-server nodes -c X (SuperLink up)": figures(
                [tree.time(["fleet-server", "nodes", "-c", s]) for _ in range(repeats)]
            ),
            "fleet-server nodes --live -c X (SuperLink up)": figures(
                [tree.time(["fleet-server", "nodes", "--live", "-c", s]) for _ in range(repeats)]
            ),
            "fleet-server status -c X (SuperLink up)": figures(
                [tree.time(["fleet-server", "status", "-c", s]) for _ in range(repeats)]
            ),
            "metrics scrape (one GET, SuperLink up)": figures(
                [scrape(metrics_port) for _ in range(repeats)]
            ),
        }
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=60)
        log.close()
        (state / "run.json").unlink(missing_ok=True)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", type=Path, help="a checkout to time beside this one")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    trees = ([Tree("before", args.before)] if args.before else []) + [Tree("after", ROOT)]
    table: dict[str, dict[str, Figure]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as name:
        work = Path(name)
        files = prepare(work)
        for label, command in down_commands(files, work):
            table[label] = interleaved(args.repeats, trees, command)
            for tree, figure in table[label].items():
                print(f"{label:<45} {tree:<7} {figure[0]:6.2f} s (min {figure[1]:.2f})")
        for tree in trees:  # one `fleet-server run` at a time: they share server.yaml
            for label, figure in up_phase(tree, files, args.repeats).items():
                table.setdefault(label, {})[tree.label] = figure
                print(f"{label:<45} {tree.label:<7} {figure[0]:6.2f} s (min {figure[1]:.2f})")
    write_results(table, [tree.label for tree in trees], args)


def write_results(
    table: dict[str, dict[str, Figure]], labels: list[str], args: argparse.Namespace
) -> None:
    command = "python bench/cli.py" + (
        f" --before {shlex.quote(str(args.before))}" if args.before else ""
    )
    command += f" --repeats {args.repeats}" if args.repeats != 5 else ""
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    lines = [
        "# Command start-up time",
        "",
        f"Produced by: `{command}` ({machine}). Wall time of {args.repeats} fresh processes "
        "each, from exec to exit (a scrape: one HTTP GET to the response's end), as median / "
        "fastest, the exit status in brackets; the two trees take turns. `before` is main at "
        "e08e451, `after` this tree. On a machine shared with other work the medians carry "
        "seconds of noise; the fastest run is the cost without it.",
        "",
        "| command | " + " | ".join(f"{label} (median / fastest)" for label in labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for label, by_tree in table.items():
        cells = []
        for tree in labels:
            median, fastest, codes = by_tree[tree]
            status = ", ".join(str(code) for code in sorted(codes))
            cells.append(f"{median:.2f} / {fastest:.2f} s ({status})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "With the SuperLink up, `before` runs the `flwr` CLI for `nodes` (`flwr supernode "
        "list`), for `status` (the run's state) and for every scrape, each a subprocess whose "
        "own start-up (it imports Flower) is nearly all of the time. In `after` the running "
        "service publishes what they show (service.json, and the node list it refreshes "
        "every 30 s in the background), so `nodes`, `status` and the scrape read files; "
        "`nodes --live` still asks the SuperLink and costs the `flwr` CLI's start-up (in "
        "`before` that option does not exist: exit 2).",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cli.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
