"""Round management on a real deployment: a round goal and deadline against waiting for all.

Loopback (loopback/launcher.py), secured as a real fleet is: a SuperLink with TLS and node
authentication, and 6 `edge-daemon run` processes, each supervising its own SuperNode, enrolled
with fleet-signed certificates (loopback/enrolment.py) and secure aggregation on. The devices
are 3 UCI heart hospitals (Cleveland, Hungary, VA Long Beach) with 2 devices each, each holding
its share of its hospital's training readings in its own readings store; the server scores the
pooled held-out rows of all four hospitals. Two faults, real and outside the product code:
device 1's node is frozen (SIGSTOP of its whole process group, SIGCONT `--stall-s` later) at
the start of every round, and device 5 is SIGKILLed, daemon and node, a few seconds into round
2 (it stays dead). The same seed, ticket and faults run twice:

- "wait for all": round-goal 0, every sampled node waited for, up to round-timeout-s;
- "goal": round-goal 4, round-overselect 1.5 (all 6 sampled), round-deadline-s D.

Per round: wall time (as the run's log stream shows it), how the round closed, late replies
discarded, participants; after the last round, the server's held-out accuracy.

    python bench/rounds.py --deadline-s 45   # ~11 min on 2 cores
    python bench/rounds.py --rounds 3 --name rounds_short

The deadline must exceed the devices' usual reply time (on a 2-core machine a trip to 6
SuperNodes, each starting a ClientApp process, takes several seconds): below it a secure round
closes with too few members to unmask and aborts.

Results: bench/results/rounds.{json,md}, with the command that made them.
"""

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/rounds.py` from a checkout

from loopback.demo import run_config  # noqa: E402
from loopback.devices import Device, prepare_devices  # noqa: E402
from loopback.enrolment import EnrolledLoopback  # noqa: E402
from loopback.launcher import Loopback, free_port  # noqa: E402
from tests.inprocess import signed_ticket  # noqa: E402
from ticket.tls import write_dev_pki  # noqa: E402

HOSPITALS = ("Cleveland", "Hungary", "VA Long Beach")
SHARDS = 2  # devices per hospital
DEVICES = len(HOSPITALS) * SHARDS
SLOW, KILLED = 1, 5  # device indices
RESULTS = ROOT / "bench" / "results"


def _tree(fleet: Loopback, index: int) -> list[psutil.Process]:
    """Device `index`'s node and everything under it (not its daemon)."""
    processes = []
    for pid in fleet.node_pids(index):
        with suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            processes += [root, *root.children(recursive=True)]
    return processes


class Faults:
    """The slow device's stall every round and the kill in round 2, from `on_round`."""

    def __init__(self, fleet: Loopback, stall_s: float, kill_after_s: float) -> None:
        self.fleet, self.stall_s, self.kill_after_s = fleet, stall_s, kill_after_s
        self.stopped: list[psutil.Process] = []
        self.threads: list[threading.Thread] = []
        self.events: list[str] = []
        self._lock = threading.Lock()

    def on_round(self, server_round: int) -> None:
        self._spawn(self._stall, server_round)
        if server_round == 2:
            self._spawn(self._kill, server_round)

    def _spawn(self, target: Any, server_round: int) -> None:
        thread = threading.Thread(target=target, args=(server_round,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _stall(self, server_round: int) -> None:
        with self._lock:
            processes = _tree(self.fleet, SLOW)
            for process in processes:
                with suppress(psutil.NoSuchProcess):
                    process.suspend()
            self.stopped = processes
        self.events.append(f"round {server_round}: device {SLOW} stopped for {self.stall_s} s")
        time.sleep(self.stall_s)
        self.resume()

    def _kill(self, server_round: int) -> None:
        time.sleep(self.kill_after_s)
        self.fleet.kill_device(KILLED)
        self.events.append(f"round {server_round}: device {KILLED} killed")

    def resume(self) -> None:
        with self._lock:
            for process in self.stopped:
                with suppress(psutil.NoSuchProcess):
                    process.resume()
            self.stopped = []


def devices_of(work: Path, ticket: Path, fleet_key: Path, port: int) -> list[Device]:
    """The six devices' directories, fresh: state, readings and the ticket installed."""
    shutil.rmtree(work / "devices", ignore_errors=True)
    return prepare_devices(
        work / "devices",
        hospitals=HOSPITALS,
        shards=SHARDS,
        ticket=ticket,
        fleet_key=fleet_key,
        superlink=f"127.0.0.1:{port}",
        ports=[free_port() for _ in range(DEVICES)],
        root_certificates=work / "pki" / "ca.crt",
        node_auth=True,
    )


def run_arm(
    work: Path, ticket: Path, fleet_key: Path, arm: str, args: argparse.Namespace
) -> dict[str, Any]:
    goal = {"round_goal": 4, "round_overselect": 1.5} if arm == "goal" else {"round_goal": 0}
    run_dir = work / f"run-{arm}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(work / "loopback", ignore_errors=True)
    port = free_port()
    tls = write_dev_pki(work / "pki", ["127.0.0.1", "localhost"])
    devices = devices_of(work, ticket, fleet_key, port)
    roster = work / "loopback" / "nodes.json"
    config = run_config(
        ticket,
        run_dir=run_dir,
        fleet_key=fleet_key,
        roster=roster,
        num_rounds=args.rounds,
        min_nodes=5,  # round 1 needs 5 online; the killed device leaves 5
        fraction_evaluate=0.0,  # the server scores the pooled held-out rows
        round_timeout_s=args.timeout_s,
        round_deadline_s=args.deadline_s,
        seed=args.seed,
        secagg=True,
        local_epochs=args.local_epochs,
        lr=args.lr,
        **goal,
    )
    began = time.monotonic()
    with EnrolledLoopback.of_devices(
        work / "loopback",
        ROOT,
        devices,
        superlink_port=port,
        tls=tls,
        fleet_signing_key=work / "fleet.key",
        roster=roster,
        grace_s=5.0,
    ) as fleet:
        fleet.wait_for_daemon_nodes(DEVICES)
        faults = Faults(fleet, args.stall_s, args.kill_after_s)
        try:
            outcome = fleet.run(
                config, timeout_s=args.rounds * args.timeout_s * 3 + 120, on_round=faults.on_round
            )
        finally:
            faults.resume()
    lines = outcome.rounds
    print(f"{arm}: {outcome.status}, {time.monotonic() - began:.0f} s", flush=True)
    return {
        "status": outcome.status,
        "run_wall_s": outcome.wall_s,
        "faults": faults.events,
        "rounds": [
            {
                "round": line["round"],
                "wall_s": outcome.round_wall_s.get(line["round"], math.nan),
                "trips_s": line.get("wall_s"),
                "closed": line.get("closed"),
                "participants": len(line["participants"]),
                "failures": len(line["failures"]),
                "late": line.get("late", []),
                "aborted": (line.get("secagg") or {}).get("aborted"),
                "accuracy": (line.get("server_eval") or {}).get("accuracy"),
            }
            for line in lines
        ],
        "final_accuracy": (lines[-1].get("server_eval") or {}).get("accuracy") if lines else None,
    }


def write_markdown(document: dict[str, Any], path: Path) -> None:
    args = document["args"]
    out = [
        "# Round management: a goal and a deadline against waiting for all",
        "",
        f"Produced by: `{document['command']}` ({document['machine']}, "
        f"{document['wall_s']:.0f} s).",
        "",
        f"Loopback, TLS and node authentication: a SuperLink and {DEVICES} edge daemons, each "
        "supervising its own SuperNode: "
        f"{', '.join(HOSPITALS)} with {SHARDS} devices each, every device holding its share of "
        "its hospital's training readings; "
        f"secure aggregation on, {args['rounds']} rounds, round-timeout-s {args['timeout_s']:g}, "
        f"{args.get('local_epochs', 1)} local epochs at lr {args.get('lr', 0.001):g}. "
        f"Device {SLOW}'s node is frozen (SIGSTOP of its process tree) for {args['stall_s']:g} s "
        f"at the start of every round; device {KILLED} (daemon and node) is SIGKILLed "
        f"{args['kill_after_s']:g} s into round 2. Goal arm: round-goal 4, "
        "round-overselect 1.5 (6 sampled), "
        f"round-deadline-s {args['deadline_s']:g}. Wall time per round is the run log "
        "stream's (round start to the next); 'trips' is the round's message trips as the "
        "round log records them.",
        "",
    ]
    for arm, title in (
        ("all", "Wait for all (round-goal 0)"),
        ("goal", "Goal 4, over-selection 1.5"),
    ):
        result = document["arms"][arm]
        out += [
            f"## {title}",
            "",
            f"Run {result['status']} in {result['run_wall_s']:.0f} s; final server accuracy "
            f"{_fmt(result['final_accuracy'], '.4f')}.",
            "",
            "| round | wall s | trips s | closed | participants | failures | late (node:round) "
            "| accuracy | aborted |",
            "|---:|---:|---:|---|---:|---:|---|---:|---|",
        ]
        for row in result["rounds"]:
            late = ", ".join(f"{entry['node'] % 10000}:{entry['round']}" for entry in row["late"])
            out.append(
                f"| {row['round']} | {_fmt(row['wall_s'], '.1f')} | {_fmt(row['trips_s'], '.1f')} "
                f"| {row['closed'] or '-'} | {row['participants']} | {row['failures']} "
                f"| {len(row['late'])} {('(' + late + ')') if late else ''} "
                f"| {_fmt(row['accuracy'], '.4f')} | {row['aborted'] or '-'} |"
            )
        out += ["", "Faults: " + "; ".join(result["faults"]), ""]
    summary = document["summary"]
    out += [
        "## Summary",
        "",
        "| arm | mean round wall s | total late replies | final accuracy |",
        "|---|---:|---:|---:|",
        *(
            f"| {arm} | {_fmt(row['mean_wall_s'], '.1f')} | {row['late']} "
            f"| {_fmt(row['final_accuracy'], '.4f')} |"
            for arm, row in summary.items()
        ),
        "",
        "(node ids in 'late' are shown mod 10000.)",
        "",
    ]
    path.write_text("\n".join(out))


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--deadline-s", type=float, default=20.0)
    parser.add_argument("--timeout-s", type=float, default=90.0)
    parser.add_argument("--stall-s", type=float, default=35.0)
    parser.add_argument("--kill-after-s", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-rounds"))
    parser.add_argument("--name", default="rounds", help="results: bench/results/NAME.{json,md}")
    args = parser.parse_args(argv)
    began = time.monotonic()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    ticket, fleet_key = signed_ticket(args.work, density=0.2)  # one ticket for both arms
    arms = {arm: run_arm(args.work, ticket, fleet_key, arm, args) for arm in ("all", "goal")}
    summary = {}
    for arm, result in arms.items():
        walls = [row["wall_s"] for row in result["rounds"] if not math.isnan(row["wall_s"])]
        summary[arm] = {
            "mean_wall_s": sum(walls) / len(walls) if walls else None,
            "late": sum(len(row["late"]) for row in result["rounds"]),
            "final_accuracy": result["final_accuracy"],
        }
    document = {
        "command": shlex.join(["python", "bench/rounds.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "wall_s": time.monotonic() - began,
        "args": {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()},
        "arms": arms,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(document, indent=2) + "\n")
    write_markdown(document, RESULTS / f"{args.name}.md")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
