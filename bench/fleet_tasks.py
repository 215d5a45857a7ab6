"""The tasks bench/fleet_find.py measures fleet searches on, and the variants of them that its
options make: --rounds-per-level, --search-key KEY=VALUE (another local schedule for the
search's rounds, say FedSGD) and --partition iid (the same rows split IID among the same
devices), each named by --variant or by its changes. To see what a variant would run before
running it:

    python bench/fleet_tasks.py --task fed-heart --rounds-per-level 20 --search-key optimizer=sgd
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/fleet_tasks.py` from a checkout

from ticket import runconfig, wire  # noqa: E402


@dataclass(frozen=True)
class Task:
    dataset: str
    model: str
    nodes: Callable[[Path], list[dict[str, Any]]]  # node configs for a ticket path
    sampling: dict[str, Any]  # fraction-train, min-nodes, ...
    training: dict[str, Any]  # local schedule of every round (search and training)
    train_rounds: int  # federated training rounds of every found ticket and reference
    target_accuracy: float  # "uplink to reach": the first round at or above it
    # search-* keys for every method, and training keys of the search's rounds
    search: dict[str, Any] = field(default_factory=dict)
    # --engine simulation: the sim-* keys that give the virtual nodes the same split as
    # `nodes`, and how many virtual nodes there are
    simulation: dict[str, Any] = field(default_factory=dict)
    virtual_nodes: int = 0


def _nodes(
    dataset: str, partition: str, count: int, options: dict[str, Any], ticket: Path
) -> list[dict[str, Any]]:
    """`count` in-process devices, each reading its part of `dataset` split by `partition`."""
    return [
        {
            wire.NODE_TICKET_PATH: str(ticket),
            wire.NODE_ALLOW_UNSIGNED: True,
            wire.NODE_SECAGG_ALLOW_UNCERTIFIED: True,
            wire.NODE_DATASET: dataset,
            wire.NODE_PARTITION: partition,
            **options,
            wire.NODE_PARTITION_ID: index,
            wire.NODE_NUM_PARTITIONS: count,
        }
        for index in range(count)
    ]


TASKS = {
    # The 4 heart-uci hospitals as 4 devices (natural split), all of them every round.
    "fed-heart": Task(
        dataset="heart-uci",
        model="heart-mlp",
        nodes=partial(_nodes, "heart-uci", "natural", 4, {}),
        sampling={"min-nodes": 4, "min-replies": 3},
        training={"local-epochs": 1, "batch-size": 32, "lr": 0.001},
        train_rounds=10,
        target_accuracy=0.78,
        # Central IMP trains 10 epochs per level on the pooled rows; a fleet level gets 3
        # rounds of 4 local epochs.
        search={"search-rounds-per-level": 3, "search-rate": 0.5, "local-epochs": 4},
        simulation={"sim-dataset": "heart-uci", "sim-partition": "natural"},
        virtual_nodes=4,
    ),
    # 100 devices with 2 label-sorted shards each (McMahan et al. 2017), 10 per round.
    "fed-mnist": Task(
        dataset="mnist",
        model="lenet-300-100",
        nodes=partial(_nodes, "mnist", "shards", 100, {wire.NODE_PARTITION_SHARDS: 2}),
        sampling={"min-nodes": 10, "min-replies": 8, "fraction-train": 0.1},
        training={"local-epochs": 1, "batch-size": 60, "lr": 0.0012},
        train_rounds=30,
        target_accuracy=0.85,
        search={"search-rounds-per-level": 3, "search-rate": 0.5},
        simulation={"sim-dataset": "mnist", "sim-partition": "shards", "sim-partition-shards": 2},
        virtual_nodes=100,
    ),
}


def with_iid_split(task: Task) -> Task:
    """The task with its rows split IID among the same devices: the same data, devices and
    schedule, without the heterogeneity of the task's own split."""
    own_nodes = task.nodes

    def nodes(ticket: Path) -> list[dict[str, Any]]:
        return [
            {key: value for key, value in node.items() if key != wire.NODE_PARTITION_SHARDS}
            | {wire.NODE_PARTITION: "iid"}
            for node in own_nodes(ticket)
        ]

    simulation = {k: v for k, v in task.simulation.items() if k != "sim-partition-shards"}
    return replace(task, nodes=nodes, simulation=simulation | {"sim-partition": "iid"})


# Run-config keys the bench sets itself for each row; --search-key may not change them.
ROW_KEYS = frozenset({"mode", "ticket-path", "run-dir", "seed", "allow-unsigned", "secagg",
                      "search-method", "search-target-density", "search-out",
                      "search-push-ticket"})  # fmt: skip


def search_key(parser: argparse.ArgumentParser, text: str) -> tuple[str, Any]:
    """--search-key KEY=VALUE: VALUE read as JSON (1, 0.5, true), else kept as text (sgd)."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        parser.error(f"--search-key: expected KEY=VALUE, got {text!r}")
    known = runconfig.keys()
    if key not in known:
        parser.error(f"--search-key: {key} is not a run-config key")
    if key in ROW_KEYS:
        parser.error(f"--search-key: {key} is set by the bench for each row (see --methods, ...)")
    if not all(c.isalnum() or c in "._-" for c in value):  # it becomes part of a file name
        parser.error(f"--search-key: {key}'s value may hold letters, digits, '.', '_' and '-'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def variant_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Task, str]:
    """The task as --rounds-per-level, --search-key and --partition change it, and the suffix
    of its results ("" for the task itself; --variant names it, else the changes do)."""
    task, suffix = TASKS[args.task], ""
    if args.rounds_per_level is not None:
        if args.rounds_per_level < 1:
            parser.error("--rounds-per-level must be >= 1")
        search = {**task.search, "search-rounds-per-level": args.rounds_per_level}
        task, suffix = replace(task, search=search), f"_rpl{args.rounds_per_level}"
    overrides = dict(search_key(parser, text) for text in args.search_key)
    task = replace(task, search={**task.search, **overrides})
    suffix += "".join(f"_{key}{value}" for key, value in overrides.items())
    if args.partition == "iid":
        task, suffix = with_iid_split(task), suffix + "_iid"
    return task, (f"_{args.variant}" if args.variant else suffix)


def add_variant_options(parser: argparse.ArgumentParser) -> None:
    """--task and the options that make a variant of it (read back by `variant_of`)."""
    parser.add_argument("--task", choices=sorted(TASKS), default="fed-heart")
    parser.add_argument(
        "--rounds-per-level",
        type=int,
        help="override the task's search rounds per level (results get an _rplN suffix)",
    )
    parser.add_argument(
        "--search-key",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a run-config key of the search's rounds, e.g. local-epochs=1 or "
        "optimizer=sgd (repeatable; results get a _KEYVALUE suffix per key)",
    )
    parser.add_argument(
        "--variant",
        help="name the results _NAME in place of the suffix made from the keys changed",
    )
    parser.add_argument(
        "--partition",
        choices=("iid",),
        help="split the task's rows IID among its devices in place of its own split (results "
        "get an _iid suffix): how much of a gap to central IMP the split's heterogeneity makes",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Print the keys a task (or a variant of it) runs its searches with, and where its
    results go: a check before an hour of `bench/fleet_find.py`."""
    parser = argparse.ArgumentParser(
        description=main.__doc__.split("\n")[0] if main.__doc__ else ""
    )
    add_variant_options(parser)
    args = parser.parse_args(argv)
    task, suffix = variant_of(parser, args)
    print(f"results   bench/results/fleet_find_{args.task}{suffix}.md")
    print(f"devices   {len(task.nodes(Path('dense.ticket')))}, {_pairs(task.sampling)}")
    print(f"training  {_pairs(task.training)}, {task.train_rounds} rounds")
    print(f"search    {_pairs(task.search)}")


def _pairs(keys: dict[str, Any]) -> str:
    return ", ".join(f"{key} = {value}" for key, value in sorted(keys.items()))


if __name__ == "__main__":
    main()
