"""Finding the ticket on the fleet: what each search method costs, and how good its ticket is.

For each task, seed and target density, every fleet search method (server/fleet_search.py:
fed-imp, fed-early-bird, fed-oneshot, fed-snip, synflow) runs inside the same dense ticket
(`ticket init`, W_0 from the seed), under secure aggregation unless --plaintext. Each found
ticket is then trained federated from its W_k for the same number of rounds, as are three
references: central IMP on the pooled rows (`ticket find --method imp`, the same W_0), the dense
network (plain FedAvg, no ticket), and the random-pruning control (a random mask with central
IMP's per-layer densities, W_0). Reported per row: the search's device uplink and downlink,
its rounds and the server's CPU time; after training, accuracy (and ROC-AUC for heart), and the
uplink bytes spent until the target accuracy was first reached.

The rounds are this project's ServerApp (run_search, run_training) and ClientApp code, over an
in-process Grid (tests/inprocess.py) that hands each message to the ClientApp in this process:
no SuperLink, no Ray. Flower's transport is thereby left out, so the bytes are the payloads the
strategies count (as on a real fleet) and the time is compute. With `--engine simulation` each
method's search and training (and dense FedAvg) run twice from the same dense ticket: in process
as above, and through Flower's Simulation Engine (a SuperLink with `--simulation`, Ray, one
virtual node per device, `flwr run` per run: tests/e2e/test_simulation.py's path), side by side
in bench/results/fleet_find_<task>_simulation.{json,md}; no central or random references there.
Real daemons run the same code in tests/e2e/test_fleet_find.py.

    python bench/fleet_find.py                          # fed-heart, 3 seeds, 4 densities
    python bench/fleet_find.py --task fed-mnist --seeds 1 --densities 0.2,0.05
    python bench/fleet_find.py --quick                  # one seed, two densities, a smoke run
    python bench/fleet_find.py --engine simulation --methods fed-oneshot,fed-snip

Results: bench/results/fleet_find_<task>.{json,md} with the command that made them. Each
finished seed's rows are also kept in bench/results/fleet_find_<task>_seeds/seed-N.json with
the settings they were made under; `--resume` reuses those whose settings match, and
`--new-seeds K` runs at most K seeds not yet kept, so a long task (fed-mnist: hours on two
cores) can be measured a seed per session:

    python bench/fleet_find.py --task fed-mnist --resume --new-seeds 1
"""

import argparse
import contextlib
import json
import platform
import random
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/fleet_find.py` from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import Context, Message  # noqa: E402

from bench.fleet_tasks import TASKS, Task, add_variant_options, variant_of  # noqa: E402
from edge_daemon import client_app  # noqa: E402
from loopback.launcher import Loopback  # noqa: E402
from server.fleet_search import FindSettings, run_search  # noqa: E402
from server.run_log import RunLog  # noqa: E402
from server.run_settings import ServerSettings  # noqa: E402
from server.server_app import run_training  # noqa: E402
from tests.inprocess import InProcessGrid, server_identity  # noqa: E402
from ticket import runconfig  # noqa: E402
from ticket.atomic import atomic_write_text  # noqa: E402
from ticket.bundle import Ticket, build_ticket, read_ticket, write_ticket  # noqa: E402
from ticket.manifest import Density, measure_density  # noqa: E402
from ticket.prune import random_mask_like  # noqa: E402
from ticket_cli.cli import main as ticket_main  # noqa: E402

RESULTS = ROOT / "bench" / "results"
METHODS = ("fed-imp", "fed-early-bird", "fed-oneshot", "fed-snip", "synflow")
# Each fed-mnist round trains 10 of 100 devices that hold two digits each, and the server's
# accuracy swings by tens of points from one round to the next: a mean over the last rounds
# compares two tickets better than the last round alone.
LAST_ROUNDS = 5
DENSE, CENTRAL, RANDOM = "dense FedAvg (no ticket)", "central IMP (pooled rows)", "random pruning"
IN_PROCESS, SIMULATION = "in-process", "Simulation Engine"
RUN_TIMEOUT_S = 1800.0  # one search or training run through the Simulation Engine


class TimedClient:
    """The ClientApp, with the CPU time it takes counted apart from the server's."""

    def __init__(self) -> None:
        self.cpu_s = 0.0

    def __call__(self, message: Message, context: Context) -> Message:
        start = time.process_time()
        try:
            return client_app.app(message, context)
        finally:
            self.cpu_s += time.process_time() - start


def base_config(task: Task, ticket: Path, run_dir: Path, secagg: bool) -> dict[str, Any]:
    return {
        "ticket-path": str(ticket),
        "run-dir": str(run_dir),
        "allow-unsigned": True,
        "fraction-evaluate": 0.0,
        "secagg": secagg,
        **task.sampling,
        **task.training,
    }


def search_config(  # noqa: PLR0917  # one bench cell's coordinates
    task: Task, dense: Path, work: Path, method: str, density: float, seed: int, secagg: bool
) -> tuple[dict[str, Any], Path]:
    """The run config of one search, and where it writes the ticket it finds."""
    out = work / f"{method}-{density}.ticket"
    config = {
        **base_config(task, dense, work / f"search-{method}-{density}", secagg),
        "mode": "find",
        "seed": seed,
        "search-method": method,
        "search-target-density": density,
        "search-out": str(out),
        "search-push-ticket": False,  # the nodes (in-process or virtual) read ticket-path
        **task.search,
    }
    return config, out


def search(  # noqa: PLR0917  # one bench cell's coordinates
    task: Task, dense: Path, work: Path, method: str, density: float, seed: int, secagg: bool
) -> tuple[Path, dict[str, Any]]:
    """One search in process; the found ticket's path and what the search cost."""
    config, out = search_config(task, dense, work, method, density, seed, secagg)
    client = TimedClient()
    grid = InProcessGrid(client, task.nodes(dense))
    random.seed(seed)
    began, start = time.monotonic(), time.process_time()
    with server_identity():
        run_search(grid, FindSettings.from_run(runconfig.parse(config)))
    server_cpu = time.process_time() - start - client.cpu_s
    return out, search_cost(out) | {
        "server_cpu_s": server_cpu,
        "search_wall_s": time.monotonic() - began,
    }


def search_cost(found_path: Path) -> dict[str, Any]:
    """What the found ticket's manifest says the search cost."""
    found = read_ticket(found_path, allow_unsigned=True)
    fleet = found.manifest.fleet
    assert fleet is not None
    return {
        "search_rounds": fleet.rounds,
        "search_levels": fleet.levels,
        "search_bytes_up": fleet.bytes_up,
        "search_bytes_down": fleet.bytes_down,
        "density": found.manifest.density.overall,
    }


def train_config(
    task: Task, ticket: Path, run_dir: Path, seed: int, secagg: bool
) -> dict[str, Any]:
    return {
        **base_config(task, ticket, run_dir, secagg),
        "num-rounds": task.train_rounds,
        "server-eval": task.dataset,
        "seed": seed,
    }


def train(task: Task, ticket: Path, run_dir: Path, seed: int, secagg: bool) -> dict[str, Any]:
    """Federated training of `ticket` from its weights, in process."""
    config = train_config(task, ticket, run_dir, seed, secagg)
    grid = InProcessGrid(client_app.app, task.nodes(ticket))
    random.seed(seed)
    began = time.monotonic()
    with server_identity():
        run_training(grid, ServerSettings.from_run_config(config))
    return scores(task, run_dir) | {"train_wall_s": time.monotonic() - began}


def scores(task: Task, run_dir: Path) -> dict[str, Any]:
    """A training run's last round's scores, its accuracy averaged over its last LAST_ROUNDS
    rounds, and the uplink spent until the target accuracy was first reached (None: never),
    from its round log."""
    lines = RunLog(run_dir / "rounds.jsonl").read()
    if len(lines) != task.train_rounds:
        raise RuntimeError(f"{run_dir}: {len(lines)} rounds logged, {task.train_rounds} asked")
    spent, reached = 0, None
    for line in lines:
        spent += int(line["bytes"]["up_total"])
        if reached is None and line["server_eval"]["accuracy"] >= task.target_accuracy:
            reached = spent
    final = lines[-1]["server_eval"]
    return {
        "accuracy": final["accuracy"],
        "accuracy_last": statistics.fmean(
            line["server_eval"]["accuracy"] for line in lines[-LAST_ROUNDS:]
        ),
        "auc": final.get("auc"),
        "train_bytes_up": spent,
        "bytes_to_target": reached,
    }


class SimulationEngine:
    """The same runs through Flower's Simulation Engine: a SuperLink started with
    `--simulation` (Ray backend, the path tests/e2e/test_simulation.py takes), `flwr run` per
    search or training run, and the task's virtual nodes taking its split from the sim-* keys.
    The ServerApp and ClientApps run in the SuperLink's processes, so only wall time is
    measured here, not the server's CPU time."""

    def __init__(self, task: Task, workdir: Path) -> None:
        self.task = task
        self.fleet = Loopback(workdir, ROOT, [], simulation=True, grace_s=5.0)
        self.federation = {"num-supernodes": task.virtual_nodes, "client-resources-num-cpus": 1}

    def __enter__(self) -> "SimulationEngine":
        self.fleet.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fleet.stop()

    def _run(self, config: dict[str, Any], what: str) -> float:
        outcome = self.fleet.run(
            {**config, **self.task.simulation},
            timeout_s=RUN_TIMEOUT_S,
            federation_config=self.federation,
        )
        if not outcome.completed:
            raise RuntimeError(
                f"Simulation Engine: {what} ended {outcome.status}; see {self.fleet.workdir}/logs"
            )
        return outcome.wall_s

    def search(  # noqa: PLR0917  # one bench cell's coordinates
        self, dense: Path, work: Path, method: str, density: float, seed: int, secagg: bool
    ) -> tuple[Path, dict[str, Any]]:
        config, out = search_config(self.task, dense, work, method, density, seed, secagg)
        wall = self._run(config, f"the {method} search at density {density}")
        return out, search_cost(out) | {"search_wall_s": wall}

    def train(self, ticket: Path, run_dir: Path, seed: int, secagg: bool) -> dict[str, Any]:
        config = train_config(self.task, ticket, run_dir, seed, secagg)
        wall = self._run(config, f"training {ticket.name}")
        return scores(self.task, run_dir) | {"train_wall_s": wall}


def central_ticket(task: Task, work: Path, density: float, seed: int, rate: float) -> Path:
    out = work / f"central-{density}.ticket"
    args = ["find", "--model", task.model, "--data", task.dataset, "--method", "imp",
            "--rate", str(rate), "--target-density", str(density), "--seed", str(seed),
            "--controls", "none", "--quiet", "--force", "--out", str(out)]  # fmt: skip
    if ticket_main(args) != 0:
        raise RuntimeError(f"ticket find failed for density {density}")
    return out


def random_control(central: Path, dense: Ticket, out: Path, seed: int) -> Path:
    """A random mask with central IMP's per-layer densities, on the dense ticket's W_0."""
    ticket = read_ticket(central, allow_unsigned=True)
    generator = torch.Generator().manual_seed(seed)
    masks = {n: torch.from_numpy(np.array(m)) for n, m in ticket.masks.items()}
    chosen = {n: m.numpy() for n, m in random_mask_like(masks, generator).items()}
    weights = {n: w * chosen[n] if n in chosen else w for n, w in dense.weights.items()}
    manifest = replace(
        ticket.manifest,
        density=Density.from_json(measure_density(chosen), at="density"),
        parent=dense.content_id,
    )
    write_ticket(out, build_ticket(manifest, chosen, weights))
    return out


def dense_ticket(task: Task, work: Path, seed: int) -> Path:
    """A fresh work directory and the dense ticket at W_0 of `seed` (`ticket init`)."""
    shutil.rmtree(work, ignore_errors=True)  # every run from scratch: nothing resumed
    work.mkdir(parents=True)
    dense_path = work / "dense.ticket"
    init = ["init", "--model", task.model, "--data", task.dataset, "--seed", str(seed),
            "--out", str(dense_path), "--force"]  # fmt: skip
    if ticket_main(init) != 0:
        raise RuntimeError("ticket init failed")
    return dense_path


def run_seed(  # noqa: PLR0917  # one bench cell's coordinates
    task: Task,
    work: Path,
    seed: int,
    densities: Sequence[float],
    methods: Sequence[str],
    secagg: bool,
) -> list[dict[str, Any]]:
    dense_path = dense_ticket(task, work, seed)
    dense = read_ticket(dense_path, allow_unsigned=True)
    rows = [
        {"arm": DENSE, "target": 1.0, "density": 1.0, "seed": seed,
         **train(task, dense_path, work / "train-dense", seed, secagg)},
    ]  # fmt: skip
    rate = float(task.search.get("search-rate", 0.2))
    for density in densities:
        central = central_ticket(task, work, density, seed, rate)
        rows.append(
            {"arm": CENTRAL, "target": density, "seed": seed,
             **train(task, central, work / f"train-central-{density}", seed, secagg)}
        )  # fmt: skip
        control = random_control(central, dense, work / f"random-{density}.ticket", seed)
        rows.append(
            {"arm": RANDOM, "target": density, "seed": seed,
             **train(task, control, work / f"train-random-{density}", seed, secagg)}
        )  # fmt: skip
        for method in methods:
            began = time.monotonic()
            path, cost = search(task, dense_path, work, method, density, seed, secagg)
            scored = train(task, path, work / f"train-{method}-{density}", seed, secagg)
            rows.append({"arm": method, "target": density, "seed": seed, **cost, **scored})
            _progress(seed, density, method, cost, scored, began)
    return rows


def run_seed_both_engines(  # noqa: PLR0917  # one bench cell's coordinates
    task: Task,
    engine: SimulationEngine,
    work: Path,
    seed: int,
    densities: Sequence[float],
    methods: Sequence[str],
    secagg: bool,
) -> list[dict[str, Any]]:
    """Dense FedAvg and each method's search and training, once in process and once through
    the Simulation Engine, from the same dense ticket with the same settings."""
    dense_path = dense_ticket(task, work, seed)
    rows = []
    for label, place in ((IN_PROCESS, work / "in-process"), (SIMULATION, work / "simulation")):
        place.mkdir()
        trained = engine.train if label == SIMULATION else partial(train, task)
        rows.append(
            {"arm": DENSE, "engine": label, "target": 1.0, "density": 1.0, "seed": seed,
             **trained(dense_path, place / "train-dense", seed, secagg)}
        )  # fmt: skip
        for density in densities:
            for method in methods:
                began = time.monotonic()
                if label == SIMULATION:
                    path, cost = engine.search(dense_path, place, method, density, seed, secagg)
                else:
                    path, cost = search(task, dense_path, place, method, density, seed, secagg)
                scored = trained(path, place / f"train-{method}-{density}", seed, secagg)
                rows.append(
                    {"arm": method, "engine": label, "target": density, "seed": seed,
                     **cost, **scored}
                )  # fmt: skip
                _progress(seed, density, f"{method} ({label})", cost, scored, began)
    return rows


def _progress(  # noqa: PLR0917  # one progress line's parts
    seed: int,
    density: float,
    arm: str,
    cost: dict[str, Any],
    scored: dict[str, Any],
    began: float,
) -> None:
    print(
        f"  seed {seed} density {density} {arm}: acc {scored['accuracy']:.3f} "
        f"search up {cost['search_bytes_up']:,} B in {cost['search_rounds']} rounds "
        f"({time.monotonic() - began:.0f} s)",
        flush=True,
    )


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread (population std) over seeds, per (arm, engine, target density)."""
    groups: dict[tuple[str, str | None, float], list[dict[str, Any]]] = {}
    for row in rows:  # by target density: a found ticket's own is the target up to rounding
        groups.setdefault((row["arm"], row.get("engine"), row["target"]), []).append(row)
    table = []
    for (arm, engine, density), group in groups.items():
        entry: dict[str, Any] = {"arm": arm, "target_density": density, "seeds": len(group)}
        if engine is not None:
            entry["engine"] = engine
        for key in ("accuracy", "accuracy_last", "auc", "search_bytes_up", "search_bytes_down",
                    "search_rounds", "server_cpu_s", "train_bytes_up", "bytes_to_target",
                    "search_wall_s", "train_wall_s"):  # fmt: skip
            values = [row[key] for row in group if row.get(key) is not None]
            if values:
                entry[key] = statistics.fmean(values)
                entry[key + "_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
            entry[key + "_n"] = len(values)
        table.append(entry)
    return table


def _keys(settings: dict[str, Any]) -> str:
    return ", ".join(f"`{key} = {value}`" for key, value in sorted(settings.items()))


def write_markdown(document: dict[str, Any], path: Path) -> None:
    task = document["task"]
    both = document.get("engine") == "simulation"
    lines = [
        f"# Fleet ticket search: {task}"
        + (", in process and through the Simulation Engine" if both else ""),
        "",
        f"Command: `{document['command']}`  ",
        f"Run {document['finished_at']} on {document['machine']}; {document['seeds']} seed(s); "
        f"secure aggregation {'on' if document['secagg'] else 'off'} for search and training; "
        f"{document['train_rounds']} federated training rounds per found ticket; target "
        f"accuracy {document['target_accuracy']}."
        + (
            f" Devices' rows split {document['partition']}, not the task's own split."
            if document.get("partition")
            else ""
        )
        + (
            f" Search keys: {_keys(document['search_settings'])}."
            if document.get("search_settings")
            else ""
        ),
        "",
        "Mean ± spread (population std) over seeds. Search bytes are over all devices and "
        "rounds of the search; `to target` is the training uplink until the server's pooled "
        "test accuracy first reached the target (n/a: not within the rounds; the count says "
        "in how many seeds it was reached). `accuracy` is after the last training round; "
        f"`last {LAST_ROUNDS}` is the mean over the last {LAST_ROUNDS} rounds, steadier where "
        "each round trains a different few devices (a count: in how many seeds it was "
        "recorded; seeds kept from before it was are left out).",
        "",
    ]
    if both:
        lines += [
            "Each row pair is one search and one training run from the same dense ticket with "
            "the same settings: once over the in-process grid (the ServerApp and ClientApp "
            "called in this process), once through Flower's Simulation Engine (a SuperLink "
            "with `--simulation`, Ray, one virtual node per device, `flwr run` per run). The "
            "wall times include the Simulation Engine's start and Flower's polling.",
            "",
            "| density | arm | engine | search rounds | search up (B) | search down (B) | "
            f"search wall (s) | train wall (s) | accuracy | last {LAST_ROUNDS} | ROC-AUC | "
            "to target (B) |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        lines += [
            "| density | arm | search rounds | search up (B) | search down (B) | "
            f"server CPU (s) | accuracy | last {LAST_ROUNDS} | ROC-AUC | to target (B) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    arms = [DENSE, CENTRAL, RANDOM, *METHODS]
    engines = [None, IN_PROCESS, SIMULATION]
    for entry in sorted(
        document["table"],
        key=lambda e: (
            -e["target_density"],
            arms.index(e["arm"]),
            engines.index(e.get("engine")),
        ),
    ):
        cell = _cells(entry)
        reached = entry.get("bytes_to_target_n", 0)
        to_target = cell("bytes_to_target", of_seeds=True) if reached else "n/a"
        costs = [cell("search_rounds", "{:.0f}"), cell("search_bytes_up"),
                 cell("search_bytes_down")]  # fmt: skip
        if both:
            costs = [entry["engine"], *costs, cell("search_wall_s", "{:.1f}"),
                     cell("train_wall_s", "{:.1f}")]  # fmt: skip
        else:
            costs.append(cell("server_cpu_s", "{:.2f}"))
        scored = [cell("accuracy", "{:.3f}"), cell("accuracy_last", "{:.3f}", of_seeds=True),
                  cell("auc", "{:.3f}"), to_target]  # fmt: skip
        lines.append(f"| {entry['target_density']:g} | {entry['arm']} | " +
                     " | ".join([*costs, *scored]) + " |")  # fmt: skip
    lines += ["", *document.get("notes", [])]
    path.write_text("\n".join(lines) + "\n")


def _cells(entry: dict[str, Any]) -> Callable[..., str]:
    """`cell(key, fmt)`: the entry's mean of `key` with its spread, "-" when absent; with
    `of_seeds`, followed by "(k/N)" when only k of its N seeds had a value."""

    def cell(key: str, fmt: str = "{:,.0f}", *, of_seeds: bool = False) -> str:
        if key not in entry:
            return "-"
        text = fmt.format(entry[key])
        spread = entry.get(key + "_std")
        text += f" ± {fmt.format(spread)}" if spread else ""
        had, seeds = entry.get(key + "_n", 0), entry["seeds"]
        return text + (f" ({had}/{seeds})" if of_seeds and had < seeds else "")

    return cell


@dataclass(frozen=True)
class SeedStore:
    """One JSON file per finished seed: its rows and the settings they were made under."""

    directory: Path
    settings: dict[str, Any]

    def load(self, seed: int) -> list[dict[str, Any]] | None:
        """The kept rows of `seed`, or None if there are none under these settings."""
        path = self.directory / f"seed-{seed}.json"
        if not path.exists():
            return None
        document = json.loads(path.read_text())
        if document.get("settings") != self.settings:
            print(f"{path}: made under other settings; running seed {seed} again")
            return None
        rows: list[dict[str, Any]] = document["rows"]
        return rows

    def save(self, seed: int, rows: list[dict[str, Any]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        document = {"settings": self.settings, "seed": seed, "rows": rows}
        atomic_write_text(
            self.directory / f"seed-{seed}.json", json.dumps(document, indent=2) + "\n"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_variant_options(parser)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--densities", default="0.2,0.1,0.05,0.02")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--plaintext", action="store_true", help="no secure aggregation")
    parser.add_argument("--quick", action="store_true", help="1 seed, densities 0.2 and 0.05")
    parser.add_argument(
        "--engine",
        choices=("inprocess", "simulation"),
        default="inprocess",
        help="simulation: run each method's search and training (and dense FedAvg) both in "
        "process and through Flower's Simulation Engine, side by side; no central or random "
        "references",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-fleet-find"))
    parser.add_argument(
        "--resume", action="store_true", help="reuse the seeds kept with the same settings"
    )
    parser.add_argument(
        "--new-seeds", type=int, default=None, help="run at most this many seeds not yet kept"
    )
    args = parser.parse_args(argv)
    task, variant = variant_of(parser, args)
    seeds = 1 if args.quick else args.seeds
    densities = [0.2, 0.05] if args.quick else [float(d) for d in args.densities.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        if method not in METHODS:
            parser.error(f"--methods: unknown method {method!r}")
    torch.set_num_threads(1)  # in-process nodes train one at a time; no thread contention
    suffix = ("_simulation" if args.engine == "simulation" else "") + (
        "_plaintext" if args.plaintext else ""
    )
    stem = RESULTS / f"fleet_find_{args.task}{suffix}{variant}"
    settings = {"task": args.task, "densities": densities, "methods": methods,
                "secagg": not args.plaintext, "engine": args.engine,
                "train_rounds": task.train_rounds}  # fmt: skip
    if task != TASKS[args.task]:  # a variant's seeds are kept only for the same variant
        settings |= {"search": task.search, "partition": args.partition}
    kept = SeedStore(Path(f"{stem}_seeds"), settings)
    by_seed = {seed: kept.load(seed) for seed in range(seeds)} if args.resume else {}
    to_run = [seed for seed in range(seeds) if by_seed.get(seed) is None]
    if args.new_seeds is not None:
        to_run = to_run[: max(0, args.new_seeds)]
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        engine = None  # one Simulation Engine for every seed run now, started only if any is
        if args.engine == "simulation" and to_run:
            engine = stack.enter_context(SimulationEngine(task, args.work / "simulation-engine"))
        for seed in to_run:
            if engine is not None:
                work = args.work / f"{args.task}-both" / f"seed-{seed}"
                made = run_seed_both_engines(
                    task, engine, work, seed, densities, methods, not args.plaintext
                )
            else:
                made = run_seed(task, args.work / args.task / f"seed-{seed}", seed, densities,
                                methods, not args.plaintext)  # fmt: skip
            kept.save(seed, made)
            by_seed[seed] = made
    rows = [row for seed in sorted(by_seed) if (got := by_seed[seed]) for row in got]
    seeds = sum(1 for got in by_seed.values() if got)
    document = {
        "task": args.task,
        "command": "python bench/fleet_find.py " + shlex.join(argv or sys.argv[1:]),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
        "seeds": seeds,
        "secagg": not args.plaintext,
        "engine": args.engine,
        "train_rounds": task.train_rounds,
        "target_accuracy": task.target_accuracy,
        "search_settings": task.search,
        "partition": args.partition,
        "wall_s": time.monotonic() - began,
        "rows": rows,
        "table": summarise(rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    write_markdown(document, Path(f"{stem}.md"))
    print(f"wrote {stem}.md ({document['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
