"""`python -m deploy.demo`: federated training of a heart ticket across real Flower processes.

Finds a heart-uci ticket at density 0.1 with `ticket find` (or reuses OUT/heart.ticket), starts a
SuperLink and one SuperNode per hospital on loopback (deploy.loopback), trains for a few rounds,
prints a per-round table, and stops every process it started. Exit status 0 only when the run
completed every round with at least one participant.
"""

import argparse
import logging
import math
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.loopback import Loopback, LoopbackError, RunOutcome
from ticket.config_text import ConfigValue

HEART_SITES = 4  # heart-uci's natural partition: one partition per hospital
APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: the project's pyproject.toml


def heart_node_configs(
    ticket: Path, nodes: int, **extra: ConfigValue
) -> list[dict[str, ConfigValue]]:
    """Node configs for the first `nodes` heart-uci hospitals, one device each."""
    if not 1 <= nodes <= HEART_SITES:
        raise ValueError(f"heart-uci has {HEART_SITES} hospitals, asked for {nodes} nodes")
    return [
        {
            "ticket-path": str(ticket.resolve()),
            "allow-unsigned": True,
            "dataset": "heart-uci",
            "partition": "natural",
            "partition-id": index,
            "num-partitions": HEART_SITES,  # a property of the natural split, not of the fleet
            **extra,
        }
        for index in range(nodes)
    ]


def run_config(
    ticket: Path, *, run_dir: Path, rounds: int, nodes: int, **extra: ConfigValue
) -> dict[str, Any]:
    """Run config for heart-uci: checkpoints and the round log go to `run_dir`, the server
    scores the pooled held-out rows of all four hospitals every round."""
    return {
        "ticket-path": str(ticket.resolve()),
        "run-dir": str(run_dir.resolve()),
        "server-eval": "heart-uci",
        "allow-unsigned": True,
        "num-rounds": rounds,
        "min-nodes": nodes,
        **extra,
    }


def find_ticket(out: Path, *, density: float) -> Path:
    """OUT/heart.ticket, found with `ticket find` unless it is already there."""
    ticket = out / "heart.ticket"
    if ticket.exists():
        print(f"reusing {ticket}")
        return ticket
    from deploy.cli import main

    args = ["find", "--model", "heart-mlp", "--data", "heart-uci", "--quiet"]
    if main([*args, "--target-density", str(density), "--out", str(ticket)]) != 0:
        raise LoopbackError("ticket find failed")
    return ticket


def round_rows(outcome: RunOutcome) -> list[dict[str, Any]]:
    """One table row per line of the run's round log (server/run_log.py)."""
    rows = []
    for line in outcome.rounds:
        federated: Mapping[str, Any] = line.get("federated_eval") or {}
        server: Mapping[str, Any] = line.get("server_eval") or {}
        nodes = max(len(line["bytes"]["up"]), 1)
        rows.append(
            {
                "round": line["round"],
                "participants": len(line["participants"]),
                "failures": len(line["failures"]) + len(line["rejected"]),
                "train-loss": _number(line["train"].get("loss")),
                "accuracy": _number(federated.get("accuracy")),
                "server-accuracy": _number(server.get("accuracy")),
                "server-auc": _number(server.get("auc")),
                "bytes-up": line["bytes"]["up_total"] // nodes,
                "bytes-down": line["bytes"]["down_total"] // max(len(line["bytes"]["down"]), 1),
                "wall-s": outcome.round_wall_s.get(line["round"], math.nan),
            }
        )
    return rows


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy as the nodes measured it (federated) and on the pooled held-out rows (server)."""
    header = (
        f"{'round':>5} {'nodes':>5} {'fail':>4} {'train-loss':>10} {'fed acc':>7} "
        f"{'srv acc':>7} {'srv auc':>7} {'up B/node':>9} {'down B/node':>11} {'wall s':>6}"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{row['round']:>5} {row['participants']:>5} {row['failures']:>4} "
            f"{row['train-loss']:>10.4f} {row['accuracy']:>7.3f} {row['server-accuracy']:>7.3f} "
            f"{row['server-auc']:>7.3f} {row['bytes-up']:>9} {row['bytes-down']:>11} "
            f"{row['wall-s']:>6.1f}"
        )
    return "\n".join(lines)


def all_rounds_completed(outcome: RunOutcome, rounds: int) -> bool:
    rows = round_rows(outcome)
    return (
        outcome.completed
        and [row["round"] for row in rows] == list(range(1, rounds + 1))
        and all(row["participants"] > 0 for row in rows)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="default: demo-out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=HEART_SITES, help="hospitals (1-4)")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the run")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        ticket = find_ticket(out, density=args.density)
    except LoopbackError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    workdir = out / "loopback"
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh SuperLink database every demo
    nodes = heart_node_configs(ticket, args.nodes)
    config = run_config(
        ticket,
        run_dir=workdir / "run",
        rounds=args.rounds,
        nodes=args.nodes,
        **{"local-epochs": args.local_epochs},
    )
    print(f"starting a SuperLink and {args.nodes} SuperNodes on loopback (logs: {workdir}/logs)")
    # SIGTERM (e.g. from a supervisor or `timeout`) unwinds like Ctrl-C: the processes get stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Loopback(workdir, APP_DIR, nodes) as fleet:
            outcome = fleet.run(config, timeout_s=args.timeout)
    except LoopbackError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; every process was stopped", file=sys.stderr)
        return 130
    print(f"run {outcome.run_id}: {outcome.status} in {outcome.wall_s:.1f} s")
    print(format_table(round_rows(outcome)))
    run_dir = workdir / "run"
    print(f"round log {run_dir / 'rounds.jsonl'}  plot {run_dir / 'rounds.png'}")
    print("peak RSS (MB): " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in fleet.peak_rss.items()))
    left = fleet.alive()
    if left:
        print(f"demo: processes still alive: {left}", file=sys.stderr)
        return 1
    return 0 if all_rounds_completed(outcome, args.rounds) else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
