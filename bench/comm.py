"""Federated training of a ticket vs dense FedAvg: accuracy per round and bytes on the wire.

Every run is a real Flower run of this project's ServerApp and ClientApp. The federated tasks
run through Flower's Simulation Engine (a simulation SuperLink started by loopback.launcher, Ray,
virtual nodes); `--loopback` also measures a real deployment (a SuperLink and 4 SuperNodes as
separate processes). Tickets come from `ticket find`, run here first.

Tasks (each compares the same seeds, nodes and rounds across arms):
  fed-heart     heart-uci, the 4 hospitals as 4 devices (natural non-IID split), all per round
  fed-mnist     mnist, 100 devices with 2 label-sorted shards each (FedAvg paper), 10 per round,
                lenet-300-100
  transfer      heart-uci: a ticket found on VA Long Beach only, trained by the other three
                hospitals, against a ticket found on all four and the dense network
Arms: dense (density 1.0, float32 both ways: plain FedAvg), ticket (density 0.1, float32), and
ticket-int8 (int8 uplink, float32 downlink). `--task fed-mnist-secagg` compares the ticket in
plaintext with the ticket under secure aggregation; `--task fed-mnist-dp` adds distributed
differential privacy (the ticket and the dense network at one noise multiplier, and epsilon).

    python bench/comm.py                     # all tasks plus the loopback deployment
    python bench/comm.py --task fed-heart --rounds 3 --no-loopback    # a quick look
    python bench/comm.py --task fed-heart --task transfer --no-loopback   # rerun two tasks

Results: bench/results/comm.{json,md} and comm_<task>.png, each part with the command that
made it. Tasks of the default set are merged into comm.json: rerunning some replaces only
those (and the loopback part only when it is rerun), so an hour-long fed-mnist result stays.
Other tasks (fed-mnist-secagg, fed-mnist-dp) go to comm_<task>.{json,md}.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/comm.py` from a checkout

from loopback.demo import heart_node_configs, round_rows, run_config  # noqa: E402
from loopback.launcher import Loopback, RunOutcome  # noqa: E402
from ticket.runconfig import (  # noqa: E402
    RunConfig,
    RunPlacement,
    SimulationSettings,
    TrainingSettings,
    to_run_config,
)

RESULTS = ROOT / "bench" / "results"
DEFAULT_TASKS = ("fed-heart", "fed-mnist", "transfer")  # what `--task all` runs
HEADER_BYTES = 48  # ticket.codec's fixed header, before any int8 scales


@dataclass(frozen=True)
class Arm:
    name: str
    ticket: str  # key into Task.tickets
    uplink: str = "float32"
    downlink: str = "float32"
    # ticket/runconfig.py TrainingSettings the arm changes, e.g. secure aggregation
    training: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    nodes: int  # virtual devices
    per_round: int  # sampled for training each round
    rounds: int
    target: float  # accuracy whose uplink cost is reported: one every arm reaches
    tickets: dict[str, list[str]]  # name -> `ticket find` arguments
    arms: tuple[Arm, ...]
    training: dict[str, Any]  # TrainingSettings: local epochs, batch size, lr, optimizer
    simulation: dict[str, Any] = field(default_factory=dict)  # SimulationSettings
    accuracy_from: str = "server"  # "server": pooled held-out rows; "federated": the nodes'


HEART_FIND = ["--model", "heart-mlp", "--data", "heart-uci", "--controls", "none"]
MNIST_FIND = [
    *("--model", "lenet-300-100", "--data", "mnist", "--controls", "none"),
    *("--rate", "0.5", "--epochs", "2"),  # IMP at 50% per level: 4 levels to 10%
]
DEFAULT_ARMS = (
    Arm("dense", "dense"),
    Arm("ticket", "ticket"),
    Arm("ticket-int8", "ticket", uplink="int8"),
)
SECURE = {"secagg": True, "secagg_clip": 1.0}
# Clip each device's update to L2 norm 0.5; a round is summed from at least 8 of its 10
# devices, so each adds sigma = z C / sqrt(8) and the sum carries z_eff = z sqrt(10 / 8).
DP = {"dp_clip_norm": 0.5, "min_replies": 8}
TASKS = {
    "fed-heart": Task(
        name="fed-heart",
        dataset="heart-uci",
        nodes=4,
        per_round=4,
        rounds=30,
        # Dense FedAvg peaks below 80% on this split (78.7% in 30 rounds): at 80% its cost to
        # target would be "-", so there is nothing to compare the ticket's against.
        target=0.77,
        tickets={
            "dense": [*HEART_FIND, "--target-density", "1.0"],
            "ticket": [*HEART_FIND, "--target-density", "0.1"],
        },
        arms=DEFAULT_ARMS,
        training={"local_epochs": 2, "batch_size": 32, "lr": 1e-3, "optimizer": "adam"},
        simulation={"sim_partition": "natural"},
    ),
    "fed-mnist": Task(
        name="fed-mnist",
        dataset="mnist",
        nodes=100,
        per_round=10,
        rounds=250,  # dense FedAvg does not reach 97% within 100 rounds of this split
        target=0.97,
        tickets={
            "dense": [*MNIST_FIND, "--target-density", "1.0"],
            "ticket": [*MNIST_FIND, "--target-density", "0.1"],
        },
        arms=DEFAULT_ARMS,
        # FedAvg's E=5, B=10 with plain SGD (McMahan et al. 2017).
        training={"local_epochs": 5, "batch_size": 10, "lr": 0.1, "optimizer": "sgd"},
        simulation={"sim_partition": "shards", "sim_partition_shards": 2},
    ),
    # Not in "all": secure aggregation against the plaintext ticket on the same task, so the
    # accuracy cost of masking (clipping, quantisation) shows on a 10k-row test set.
    "fed-mnist-secagg": Task(
        name="fed-mnist-secagg",
        dataset="mnist",
        nodes=100,
        per_round=10,
        rounds=100,
        target=0.97,
        tickets={"ticket": [*MNIST_FIND, "--target-density", "0.1"]},
        arms=(
            Arm("ticket", "ticket"),
            Arm("ticket-secagg", "ticket", training={"secagg": True, "secagg_clip": 1.0}),
        ),
        training={"local_epochs": 5, "batch_size": 10, "lr": 0.1, "optimizer": "sgd"},
        simulation={"sim_partition": "shards", "sim_partition_shards": 2},
    ),
    # Not in "all": distributed differential privacy on top of secure aggregation, the ticket
    # against the dense network at the same noise multiplier and clip. The noise a device adds
    # has norm ~ sigma sqrt(k) while its clipped update's norm is at most C, so at a fixed
    # epsilon the ticket's 10x fewer coordinates carry ~sqrt(10) times the signal per noise.
    "fed-mnist-dp": Task(
        name="fed-mnist-dp",
        dataset="mnist",
        nodes=100,
        per_round=10,
        rounds=100,
        target=0.90,
        tickets={
            "dense": [*MNIST_FIND, "--target-density", "1.0"],
            "ticket": [*MNIST_FIND, "--target-density", "0.1"],
        },
        arms=(
            Arm("ticket-secagg", "ticket", training=SECURE),
            Arm("ticket-dp z=0.3", "ticket", training={**SECURE, **DP, "dp_noise_multiplier": 0.3}),
            Arm("dense-dp z=0.3", "dense", training={**SECURE, **DP, "dp_noise_multiplier": 0.3}),
            Arm("ticket-dp z=1.0", "ticket", training={**SECURE, **DP, "dp_noise_multiplier": 1.0}),
        ),
        training={"local_epochs": 5, "batch_size": 10, "lr": 0.1, "optimizer": "sgd"},
        simulation={"sim_partition": "shards", "sim_partition_shards": 2},
    ),
    "transfer": Task(
        name="transfer",
        dataset="heart-uci",
        nodes=3,  # partitions 0-2 of the 4-hospital split: all but VA Long Beach
        per_round=3,
        rounds=30,
        target=0.77,  # as fed-heart's: dense and the VA-only ticket stay below 80%
        tickets={
            "dense": [*HEART_FIND, "--target-density", "1.0"],
            "all-sites": [*HEART_FIND, "--target-density", "0.1"],
            "va-only": [*HEART_FIND, "--target-density", "0.1", "--sites", "VA Long Beach"],
        },
        arms=(
            Arm("dense", "dense"),
            Arm("ticket (found on all 4)", "all-sites"),
            Arm("ticket (found on VA only)", "va-only"),
        ),
        training={"local_epochs": 2, "batch_size": 32, "lr": 1e-3, "optimizer": "adam"},
        simulation={"sim_partition": "natural", "sim_num_partitions": 4},
        accuracy_from="federated",  # the three training hospitals' own test rows
    ),
}


def find_tickets(task: Task, work: Path, seed: int) -> dict[str, dict[str, Any]]:
    """Run `ticket find` for each of the task's tickets; name -> {path, command, wall_s, ...}."""
    found = {}
    for name, arguments in task.tickets.items():
        out = work / "tickets" / f"{task.dataset}-{name}-seed{seed}.ticket"
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).parent / "ticket"),
            *("find", *arguments, "--seed", str(seed), "--out", str(out), "--quiet"),
        ]
        started = time.perf_counter()
        if not out.exists():
            subprocess.run(command, check=True, capture_output=True)
        report = json.loads(out.with_suffix(".json").read_text())
        found[name] = {
            "path": str(out),
            "command": shlex.join(["ticket", *command[1:]]),
            "find_wall_s": time.perf_counter() - started,
            "density": report["levels"][-1]["density"],
            "content_id": report["content_id"],
        }
    return found


def run_arm(
    fleet: Loopback, task: Task, arm: Arm, ticket: Path, *, work: Path, rounds: int, seed: int
) -> dict[str, Any]:
    run_dir = work / "runs" / task.name / arm.name.replace(" ", "_").replace("/", "_")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resumed one
    training = {
        "allow_unsigned": True,
        "num_rounds": rounds,
        "fraction_train": task.per_round / task.nodes,
        "fraction_evaluate": 1.0 if task.accuracy_from == "federated" else 0.0,
        "min_nodes": task.per_round,
        "server_eval": task.dataset if task.accuracy_from == "server" else None,
        "uplink_dtype": arm.uplink,
        "downlink_dtype": arm.downlink,
        "seed": seed,
        **task.training,
        **arm.training,
    }
    simulation = {"sim_dataset": task.dataset, "sim_partition_seed": seed, **task.simulation}
    run = RunConfig(
        placement=RunPlacement(ticket_path=ticket, run_dir=run_dir),
        training=TrainingSettings(**training),
        simulation=SimulationSettings(**simulation),
    )
    config = to_run_config(run)
    federation = {"num-supernodes": task.nodes, "client-resources-num-cpus": 1}
    outcome = fleet.run(config, timeout_s=6 * 3600, federation_config=federation)
    if not outcome.completed:
        sys.exit(f"{task.name}/{arm.name}: run {outcome.run_id} ended {outcome.status}")
    return summarise(task, arm, outcome)


def summarise(task: Task, arm: Arm, outcome: RunOutcome) -> dict[str, Any]:
    """Per-round accuracy and bytes per device, and the uplink spent until the target."""
    rounds = []
    uplink_total = 0
    reached = None
    for line in outcome.rounds:
        up, down = line["bytes"]["up"], line["bytes"]["down"]
        uplink_total += line["bytes"]["up_total"]
        metrics = line["server_eval"] if task.accuracy_from == "server" else line["federated_eval"]
        accuracy = None if metrics is None else metrics["accuracy"]
        rounds.append(
            {
                "round": line["round"],
                "accuracy": accuracy,
                "auc": None if metrics is None else metrics.get("auc"),
                "participants": len(line["participants"]),
                "failures": len(line["failures"]) + len(line["rejected"]),
                "up_bytes_per_device": max(up.values()) if up else 0,
                "down_bytes_per_device": max(down.values()) if down else 0,
                "uplink_bytes_so_far": uplink_total,
            }
        )
        if reached is None and accuracy is not None and accuracy >= task.target:
            reached = {"round": line["round"], "uplink_bytes": uplink_total}
    last = rounds[-1]
    privacy = (outcome.rounds[-1].get("secagg") or {}).get("dp") if outcome.rounds else None
    return {
        "privacy": privacy,  # the run's epsilon and its last round's z_eff, under DP
        "arm": asdict(arm),
        "run_wall_s": outcome.wall_s,
        "rounds": rounds,
        "final_accuracy": last["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in rounds if r["accuracy"] is not None),
        "up_bytes_per_device": last["up_bytes_per_device"],
        "down_bytes_per_device": last["down_bytes_per_device"],
        "target": task.target,
        "reached_target": reached,
    }


def run_task(task: Task, work: Path, rounds: int, seed: int) -> dict[str, Any]:
    tickets = find_tickets(task, work, seed)
    arms = []
    with Loopback(work / "sim" / task.name, ROOT, [], simulation=True) as fleet:
        for arm in task.arms:
            print(f"{task.name}: {arm.name} ({rounds} rounds)", flush=True)
            ticket = Path(tickets[arm.ticket]["path"])
            result = run_arm(fleet, task, arm, ticket, work=work, rounds=rounds, seed=seed)
            result["ticket"] = tickets[arm.ticket]
            arms.append(result)
        peak = dict(fleet.peak_rss)
    dense_up = arms[0]["up_bytes_per_device"]
    for arm in arms:
        arm["uplink_vs_dense"] = arm["up_bytes_per_device"] / dense_up
        arm["final_vs_dense_pp"] = 100 * (arm["final_accuracy"] - arms[0]["final_accuracy"])
    return {
        "task": asdict(task),
        "rounds": rounds,
        "arms": arms,
        "simulation_peak_rss_mb": {k: v / 2**20 for k, v in sorted(peak.items())},
    }


def run_loopback(work: Path, rounds: int, seed: int) -> dict[str, Any]:
    """The heart ticket on a real deployment: 4 SuperNodes, round wall time, peak RSS."""
    task = TASKS["fed-heart"]
    ticket = Path(find_tickets(task, work, seed)["ticket"]["path"])
    run_dir = work / "loopback-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(work / "loopback", ignore_errors=True)
    config = run_config(
        ticket, run_dir=run_dir, num_rounds=rounds, min_nodes=4, seed=seed, **task.training
    )
    with Loopback(work / "loopback", ROOT, heart_node_configs(ticket, 4)) as fleet:
        outcome = fleet.run(config, timeout_s=1800)
        peak = dict(fleet.peak_rss)
    if not outcome.completed:
        sys.exit(f"loopback: run {outcome.run_id} ended {outcome.status}")
    rows = round_rows(outcome)
    return {
        "rounds": rows,
        "round_wall_s": [row["wall-s"] for row in rows],
        "run_wall_s": outcome.wall_s,
        "peak_rss_mb": {k: v / 2**20 for k, v in sorted(peak.items())},
    }


def write_markdown(document: dict[str, Any], path: Path) -> None:
    parts = [*document["tasks"], *([document["loopback"]] if document.get("loopback") else [])]
    made_by = {_provenance(part, document) for part in parts}
    lines = ["# Federated ticket vs dense FedAvg: accuracy and bytes", ""]
    if len(made_by) == 1:
        [(command, machine)] = made_by
        lines += [f"Produced by: `{command}` ({machine}).", ""]
    else:
        lines += ["Each section names the command that produced it.", ""]
    for result in document["tasks"]:
        task = result["task"]
        lines += [f"## {task['name']}", ""]
        reference = result["arms"][0]["arm"]["name"]  # what the "vs" columns compare with
        if len(made_by) > 1:
            command, machine = _provenance(result, document)
            lines += [f"Produced by: `{command}` ({machine}).", ""]
        lines += [
            f"{task['dataset']}, {task['nodes']} devices, {task['per_round']} per round, "
            f"{result['rounds']} rounds; local training {json.dumps(task['training'])}; "
            f"accuracy: {task['accuracy_from']} evaluation; target {100 * task['target']:.0f}%.",
            "",
            f"| arm | density | final acc | best acc | vs {reference} (pp) | up B/device/round "
            f"| down B/device/round | up vs {reference} | rounds to target "
            "| uplink bytes to target | run wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in result["arms"]:
            reached = arm["reached_target"]
            to_target = f"{reached['uplink_bytes']:,}" if reached else "-"
            lines.append(
                f"| {arm['arm']['name']} | {arm['ticket']['density']:.3f} "
                f"| {100 * arm['final_accuracy']:.2f} | {100 * arm['best_accuracy']:.2f} "
                f"| {arm['final_vs_dense_pp']:+.2f} | {arm['up_bytes_per_device']:,} "
                f"| {arm['down_bytes_per_device']:,} | {arm['uplink_vs_dense']:.4f} "
                f"| {reached['round'] if reached else 'not reached'} "
                f"| {to_target} "
                f"| {arm['run_wall_s']:.0f} |"
            )
        lines.append("")
        if task["accuracy_from"] == "federated":
            lines += [
                "Down counts every instruction a device gets in a round: the train one and, "
                "for federated evaluation, the evaluate one (the global values again).",
                "",
            ]
        private = [arm for arm in result["arms"] if arm.get("privacy")]
        if private:
            lines += [
                "Differential privacy (epsilon of the whole run at its delta; the sum's noise "
                "multiplier z_eff; no amplification by sampling claimed):",
                "",
                "| arm | epsilon | delta | z_eff per round | clip norm | final acc |",
                "|---|---|---|---|---|---|",
            ]
            for arm in private:
                dp = arm["privacy"]
                lines.append(
                    f"| {arm['arm']['name']} | {dp['epsilon']:.3g} | {dp['delta']:g} "
                    f"| {dp['noise_multiplier']:.3f} | {dp['clip_norm']} "
                    f"| {100 * arm['final_accuracy']:.2f} |"
                )
            lines.append("")
        note = int8_note(result["arms"])
        if note:
            lines += [note, ""]
        lines += [f"![{task['name']}](comm_{task['name']}.png)", ""]
        lines += ["Tickets:", ""] + [
            f"    {arm['ticket']['command']}" for arm in _unique_tickets(result["arms"])
        ]
        lines.append("")
    if document.get("loopback"):
        loop = document["loopback"]
        walls = ", ".join(f"{w:.1f}" for w in loop["round_wall_s"])
        lines += ["## Real deployment on loopback (fed-heart ticket, 4 SuperNodes)", ""]
        if len(made_by) > 1:
            command, machine = _provenance(loop, document)
            lines += [f"Produced by: `{command}` ({machine}).", ""]
        lines += [
            f"Round wall times (s): {walls}; whole run {loop['run_wall_s']:.0f} s.",
            "",
            "| process | peak RSS (MB) |",
            "|---|---|",
        ]
        lines += [f"| {name} | {mb:.0f} |" for name, mb in loop["peak_rss_mb"].items()]
        lines.append("")
    path.write_text("\n".join(lines))


def int8_note(arms: Sequence[dict[str, Any]]) -> str:
    """Why the int8 uplink is more than density / 4 of dense, from the recorded byte counts.

    Float32 messages are 48 + 4n bytes and int8 ones 48 + 4s + n (s segments, one float32
    scale each: ticket/codec.py), so the dense, ticket and ticket-int8 uplinks give N, n, s.
    The density counts weights only and biases stay dense, so n = d (N - B) + B gives the
    number of biases B. Empty unless the task has those three arms.
    """
    by_name = {arm["arm"]["name"]: arm for arm in arms}
    if not {"dense", "ticket", "ticket-int8"} <= by_name.keys():
        return ""
    dense, ticket, int8 = (by_name[name] for name in ("dense", "ticket", "ticket-int8"))
    dense_bytes, int8_bytes = dense["up_bytes_per_device"], int8["up_bytes_per_device"]
    total = (dense_bytes - HEADER_BYTES) // 4  # N: dense values
    kept = (ticket["up_bytes_per_device"] - HEADER_BYTES) // 4  # n: the ticket's values
    overhead = int8_bytes - kept  # header + 4s
    segments = (overhead - HEADER_BYTES) // 4
    density = ticket["ticket"]["density"]
    biases = round((kept - density * total) / (1 - density))
    weights = kept - biases  # = density * (N - B)
    parts = (weights / dense_bytes, biases / dense_bytes, overhead / dense_bytes)
    return (
        f"Why int8 is {int8['uplink_vs_dense']:.4f}x dense and not density / 4 = "
        f"{density / 4:.4f}x: an int8 update is {HEADER_BYTES} header bytes + 4 x {segments} "
        f"per-segment float32 scales + {kept:,} one-byte values = {int8_bytes:,} bytes, dense "
        f"float32 is {HEADER_BYTES} + 4 x {total:,} = {dense_bytes:,}. The density counts "
        f"weights only; the {biases:,} biases travel whole. So {weights:,} kept weights give "
        f"{parts[0]:.5f}, the biases {parts[1]:.5f}, and header and scales ({overhead} bytes, "
        f"{100 * overhead / int8_bytes:.1f}% of the message) {parts[2]:.5f}: "
        f"{sum(parts):.5f} in all."
    )


def _provenance(part: dict[str, Any], document: dict[str, Any]) -> tuple[str, str]:
    """(command, machine) that produced a task or the loopback part.

    Results written before parts carried their own fall back to the document's.
    """
    source = part if "command" in part else document
    return source["command"], source["machine"]


def merge_results(earlier: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """`earlier`'s parts, with those in `fresh` replacing them; each keeps its own provenance."""
    old = {
        "command": earlier.get("command"),
        "machine": earlier.get("machine"),
    }
    tasks = {result["task"]["name"]: {**old, **result} for result in earlier.get("tasks", [])}
    tasks.update({result["task"]["name"]: result for result in fresh["tasks"]})
    order = [*DEFAULT_TASKS, *sorted(tasks.keys() - set(DEFAULT_TASKS))]
    loopback = fresh["loopback"]
    if loopback is None and earlier.get("loopback"):
        loopback = {**old, **earlier["loopback"]}
    return {
        "tasks": [tasks[name] for name in order if name in tasks],
        "loopback": loopback,
    }


def _unique_tickets(arms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for arm in arms:
        seen.setdefault(arm["ticket"]["content_id"], arm)
    return list(seen.values())


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(13, 4.5))
    for arm in result["arms"]:
        rounds = [r for r in arm["rounds"] if r["accuracy"] is not None]
        accuracy = [100 * r["accuracy"] for r in rounds]
        by_round.plot([r["round"] for r in rounds], accuracy, label=arm["arm"]["name"])
        by_bytes.plot(
            [r["uplink_bytes_so_far"] for r in rounds], accuracy, label=arm["arm"]["name"]
        )
    target = 100 * result["task"]["target"]
    for axis in (by_round, by_bytes):
        axis.axhline(target, color="grey", linestyle=":", linewidth=1)
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    by_round.set_xlabel("round")
    by_bytes.set_xlabel("uplink bytes, all devices, cumulative")
    by_bytes.set_xscale("log")
    figure.suptitle(f"{result['task']['name']}: dense FedAvg vs ticket")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--task",
        action="append",
        choices=[*TASKS, "all"],
        help="a task to run; repeat for several (default: all)",
    )
    parser.add_argument("--rounds", type=int, help="override every task's number of rounds")
    parser.add_argument("--loopback-rounds", type=int, default=3)
    parser.add_argument("--no-loopback", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-comm"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = list(dict.fromkeys(args.task or ["all"]))
    if "all" in names:
        names = list(DEFAULT_TASKS)
    # The default set shares comm.{json,md}; any other task gets files of its own.
    is_default = set(names) <= set(DEFAULT_TASKS)
    stem = "comm" if is_default else "_".join(["comm", *names])
    # Ray runs one virtual node per core; torch inside each must not also use every core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # SIGTERM unwinds like Ctrl-C, so every `with Loopback` block stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    made_by = {
        "command": shlex.join(["python", "bench/comm.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
    }
    started = time.perf_counter()
    results = [
        {
            **run_task(TASKS[name], args.work, args.rounds or TASKS[name].rounds, args.seed),
            **made_by,
        }
        for name in names
    ]
    loopback = (
        None
        if args.no_loopback
        else {**run_loopback(args.work, args.loopback_rounds, args.seed), **made_by}
    )
    print(f"ran in {time.perf_counter() - started:.0f} s", flush=True)
    document: dict[str, Any] = {"tasks": results, "loopback": loopback}
    json_path = args.out / f"{stem}.json"
    if is_default and json_path.exists():
        document = merge_results(json.loads(json_path.read_text()), document)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    for result in results:
        plot(result, args.out / f"comm_{result['task']['name']}.png")
    write_markdown(document, args.out / f"{stem}.md")
    print((args.out / f"{stem}.md").read_text())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    main()
