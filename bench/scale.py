"""Fleet scale (issue 13): what the server's unmasking costs as the cohort grows, the bytes a
device sends and receives (dense, the ticket, secure aggregation with a fixed q or levels
chosen per round, a float16 / int8 downlink) with the accuracy each reaches, and round
throughput on the Simulation Engine against Flower's own FedAvg.

1. `unmask`: one secure round in process (pure layer, ticket/secagg, no Flower), k = 100,000
   values, n devices of which 10% are lost before masking (their masks come off with their
   neighbours' shares). Server CPU time (process time, one core) by phase: adding the masked
   vectors, building the unmask requests, taking the responses, and result() (rebuilding
   secrets, removing masks). `--code-root` imports `ticket` from another checkout instead,
   so an older commit is measured by the same script on the same machine.
2. `bytes`: MNIST, lenet-300-100, 100 virtual devices, 10 per round, on Flower's Simulation
   Engine (bench/comm.py's machinery: the project's ServerApp and ClientApp). Arms: the
   ticket (density 0.1) in plaintext float32, the dense network (density 1.0) in plaintext
   float32 (plain FedAvg), the ticket under secure aggregation with q = 16384 and with levels
   chosen per round for target errors 1e-3, 1e-2, 2e-2 and 3e-2; then, at the cheapest target
   whose last-10-round accuracy is within 1 pp of the float32 ticket's (`best_target`), the
   downlink in float16 and in int8. Uplink and downlink bytes per device per round as the
   round log counts them, final, best and last-10 server-side accuracy.
3. `throughput`: the project's ServerApp and ClientApp on Flower's Simulation Engine (Ray,
   2 workers), 10 / 100 / 1,000 devices per round out of 2,000 virtual devices (MNIST,
   2 shards each), secure aggregation off and on, 2 rounds each: round wall time, device
   updates per second, the server process's CPU time and RSS per round, and the growth
   exponent of round 2's wall time over n. `--anchor` adds, and `--anchor-only` runs alone,
   the anchor: Flower's own FedAvg with a dense lenet-300-100 torch ClientApp on the same
   partitions and schedule (bench/flower_anchor, an app directory of its own). Sizes may be
   run apart (`--per-round 1000`): a run replaces only the rows (system, size, secagg) it ran.

    python bench/scale.py unmask                              # this tree, n = 100 and 1000
    python bench/scale.py unmask --code-root /path/to/older/checkout --label "d92e2db"
    python bench/scale.py bytes --rounds 50                   # ~30 min on 2 shared cores
    python bench/scale.py throughput                          # ~20 min on 2 shared cores
    python bench/scale.py throughput --anchor-only            # Flower's FedAvg rows only

Results: bench/results/scale.{json,md}; each part keeps the command that made it, and a
rerun replaces only its own part (an unmask run only the rows of its label). Not measured
here yet (issue 13): 5,000 devices per round, accuracy at more than 10 devices per round,
and privacy at scale.
"""

import argparse
import dataclasses
import json
import os
import platform
import random
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import scale_privacy  # noqa: E402

RESULTS = ROOT / "bench" / "results"
COHORTS = (100, 1000)
LENGTH = 100_000
DROPPED = 0.1
TARGETS = (1e-3, 1e-2, 2e-2, 3e-2)
TOLERANCE_PP = 1.0  # about the round-to-round swing of the 2-shard split's accuracy


def unmask_round(n: int, *, seed: int) -> dict[str, Any]:
    """One secure round at cohort n: the server's CPU time by phase (clients untimed)."""
    import numpy as np

    from ticket import crypto, secagg

    params = secagg.SecAggParams(clip=0.25, levels=2**14)
    nodes = tuple(range(1, n + 1))
    rng = np.random.default_rng(seed)
    inputs = {u: np.clip(rng.normal(0, 0.05, LENGTH), -0.25, 0.25) for u in nodes}
    fleet_private, fleet_public = crypto.generate_signing_key()
    identity_keys = {u: crypto.generate_identity_key() for u in nodes}
    roster = {}
    for u, key in identity_keys.items():
        identity = crypto.identity_public_key(key)
        roster[u] = secagg.Enrolled(identity, secagg.certify(fleet_private, u, identity))
    trust = secagg.PeerTrust(fleet_public)
    server = secagg.ServerRound(run_id=1, round=2, params=params, length=LENGTH, roster=roster)
    secrets, states = {}, {}
    for u in nodes:
        advert, secrets[u] = secagg.advertise_keys(
            run_id=1, round=2, node_id=u, identity_key=identity_keys[u]
        )
        server.add_advert(u, advert)
    for u, bundle in server.key_bundles().items():
        shares, states[u] = secagg.distribute_shares(bundle, secrets[u], trust=trust)
        server.add_share_bundle(u, shares)
    lost = set(random.Random(seed).sample(nodes, int(DROPPED * n)))
    masked = {}
    for u, request in server.mask_requests().items():
        vector, states[u] = secagg.mask_input(
            request, states[u], inputs[u], rng=np.random.default_rng(u)
        )
        if u not in lost:
            masked[u] = vector
    names = ("add_masked_ms", "unmask_requests_ms", "responses_ms", "result_ms")
    phases = dict.fromkeys(names, 0.0)
    for u, vector in masked.items():
        started = time.process_time()
        server.add_masked_input(u, vector)
        phases["add_masked_ms"] += time.process_time() - started
    started = time.process_time()
    requests = server.unmask_requests()
    phases["unmask_requests_ms"] = time.process_time() - started
    replies = {}
    for u, request in requests.items():
        replies[u], states[u] = secagg.reveal_shares(request, states[u])
    for u, reply in replies.items():
        started = time.process_time()
        server.add_unmask_response(u, reply)
        phases["responses_ms"] += time.process_time() - started
    started = time.process_time()
    result = server.result()
    phases["result_ms"] = time.process_time() - started
    phases = {name: 1000 * seconds for name, seconds in phases.items()}
    # The sum itself, so two code versions can be checked to agree bit for bit.
    digest = int(result.total.astype(np.int64) @ np.arange(1, LENGTH + 1, dtype=np.int64))
    return {
        "n": n,
        "k": LENGTH,
        "dropped_before_mask": len(lost),
        "degree": params.degree(n),
        "modulus_bits": result.bits,
        **phases,
        "server_unmask_ms": sum(phases.values()),
        "sum_digest": digest,
    }


def run_unmask(args: argparse.Namespace) -> dict[str, Any]:
    if args.code_root is not None:
        sys.path.insert(0, str(args.code_root.resolve()))
    else:
        sys.path.insert(0, str(ROOT))
    import ticket

    label = args.label or ("this tree" if args.code_root is None else str(args.code_root))
    rows = []
    for n in args.cohorts:
        row = unmask_round(n, seed=args.seed)
        row["code"] = label
        print(
            f"{label}: n={n:>5}: server {row['server_unmask_ms']:.0f} ms "
            f"(add {row['add_masked_ms']:.0f}, result {row['result_ms']:.0f})",
            flush=True,
        )
        rows.append(row)
    return {"label": label, "ticket_from": str(Path(ticket.__file__).parents[1]), "rows": rows}


def run_bytes(args: argparse.Namespace) -> dict[str, Any]:
    """Phase 1: dense float32, the float32 ticket, q = 16384 and the per-round targets.
    Phase 2: at the best target (best_target), the downlink in float16 and int8."""
    sys.path.insert(0, str(ROOT))
    from bench.comm import Arm, run_task
    from ticket.bundle import read_ticket

    secure = {"secagg": True, "secagg_clip": 1.0}  # bench/comm.py fed-mnist-secagg's clip
    task = dataclasses.replace(
        _bytes_task(args),
        arms=(
            Arm("ticket float32", "ticket"),  # first: run_task's "vs" reference
            Arm("dense float32", "dense"),
            Arm("ticket + secagg, q = 16384", "ticket", training=secure),
            *_target_arms("ticket + secagg", secure, args.targets),
        ),
    )
    result = run_task(task, args.work, args.rounds, args.seed)
    for arm in result["arms"]:
        arm["last10_accuracy"] = last_mean(arm["rounds"])
    reference = result["arms"][0]
    targets = {
        arm["arm"]["training"]["secagg_target_error"]: arm
        for arm in result["arms"]
        if "secagg_target_error" in arm["arm"]["training"]
    }
    best = best_target(
        {t: (a["last10_accuracy"], a["up_bytes_per_device"]) for t, a in targets.items()},
        reference=reference["last10_accuracy"],
        tolerance_pp=args.tolerance_pp,
    )
    result["best_target"] = {"target": best, "tolerance_pp": args.tolerance_pp}
    if best is not None:
        narrow = dataclasses.replace(
            task,
            arms=tuple(
                Arm(
                    f"ticket + secagg, target {best:g}, downlink {dtype}",
                    "ticket",
                    downlink=dtype,
                    training={**secure, "secagg_target_error": best},
                )
                for dtype in ("float16", "int8")
            ),
        )
        more = run_task(narrow, args.work, args.rounds, args.seed)
        for arm in more["arms"]:
            arm["last10_accuracy"] = last_mean(arm["rounds"])
        result["arms"] += more["arms"]
        result["simulation_peak_rss_mb_downlink"] = more["simulation_peak_rss_mb"]
    for arm in result["arms"]:  # against the float32 ticket, whichever phase ran it
        arm["uplink_vs_dense"] = arm["up_bytes_per_device"] / reference["up_bytes_per_device"]
        arm["final_vs_dense_pp"] = 100 * (arm["final_accuracy"] - reference["final_accuracy"])
    ticket = read_ticket(Path(result["arms"][0]["ticket"]["path"]), allow_unsigned=True)
    dense = sum(int(weights.size) for weights in ticket.weights.values())
    result["dense_float32_bytes"] = 48 + 4 * dense  # ticket.codec's header + the values
    for arm in result["arms"]:  # what the rounds used (the last round's; one cohort size)
        lines = _secagg_lines(args.work, arm)
        arm["levels"] = lines[-1].get("levels") if lines else None
        arm["bits"] = lines[-1].get("bits") if lines else None
    return result


def _target_arms(name: str, secure: dict[str, Any], targets: list[float]) -> tuple[Any, ...]:
    """One secure ticket arm per target error, named `name, target T`."""
    from bench.comm import Arm

    return tuple(
        Arm(
            f"{name}, target {target:g}",
            "ticket",
            training={**secure, "secagg_target_error": target},
        )
        for target in targets
    )


def _bytes_task(args: argparse.Namespace) -> Any:
    from bench.comm import MNIST_FIND, Task

    return Task(
        name="scale-bytes",
        dataset="mnist",
        nodes=100,
        per_round=10,
        rounds=args.rounds,
        target=0.97,
        tickets={
            "ticket": [*MNIST_FIND, "--target-density", "0.1"],
            "dense": [*MNIST_FIND, "--target-density", "1.0"],
        },
        arms=(),
        training={"local_epochs": 5, "batch_size": 10, "lr": 0.1, "optimizer": "sgd"},
        simulation={"sim_partition": "shards", "sim_partition_shards": 2},
    )


def run_bytes_clip(args: argparse.Namespace, recorded: dict[str, Any]) -> list[dict[str, Any]]:
    """`bytes --clip C`: secure arms at clip C for each of --targets, on the task of the
    recorded bytes run, compared with its float32 ticket; the arms to add to its table."""
    sys.path.insert(0, str(ROOT))
    from bench.comm import run_task

    if recorded.get("rounds") != args.rounds:
        raise SystemExit(
            f"bytes --clip: the recorded bytes run has {recorded.get('rounds')} rounds; "
            f"run with --rounds {recorded.get('rounds')} so the arms compare"
        )
    reference = next(a for a in recorded["arms"] if a["arm"]["name"] == "ticket float32")
    secure = {"secagg": True, "secagg_clip": args.clip}
    task = dataclasses.replace(
        _bytes_task(args),
        arms=_target_arms(f"ticket + secagg, clip {args.clip:g}", secure, args.targets),
    )
    result = run_task(task, args.work, args.rounds, args.seed)
    for arm in result["arms"]:
        arm["last10_accuracy"] = last_mean(arm["rounds"])
        arm["uplink_vs_dense"] = arm["up_bytes_per_device"] / reference["up_bytes_per_device"]
        arm["final_vs_dense_pp"] = 100 * (arm["final_accuracy"] - reference["final_accuracy"])
        lines = _secagg_lines(args.work, arm)
        arm["levels"] = lines[-1].get("levels") if lines else None
        arm["bits"] = lines[-1].get("bits") if lines else None
    return list(result["arms"])


def last_mean(rounds: list[dict[str, Any]], count: int = 10) -> float:
    """Mean server accuracy over the last `count` rounds that have one."""
    scored = [r["accuracy"] for r in rounds if r["accuracy"] is not None][-count:]
    if not scored:
        raise ValueError("no round has a server accuracy")
    return sum(scored) / len(scored)


def best_target(
    arms: dict[float, tuple[float, int]], *, reference: float, tolerance_pp: float
) -> float | None:
    """Of target error -> (accuracy, uplink bytes), the target with the fewest bytes whose
    accuracy is at most `tolerance_pp` points below `reference` (ties: the smaller target);
    None when none is."""
    close = [
        (up, target)
        for target, (accuracy, up) in arms.items()
        if 100 * (reference - accuracy) <= tolerance_pp
    ]
    return min(close)[1] if close else None


POPULATION = 2000
PER_ROUND = (10, 100, 1000)


PROJECT = "ticketfleet"  # the project's ServerApp and ClientApp, the ticket at density 0.1
ANCHOR = "flower-fedavg"  # Flower's FedAvg, dense lenet-300-100 (bench/flower_anchor)
ANCHOR_APP = ROOT / "bench" / "flower_anchor"
SYSTEM_NAMES = {PROJECT: "ticketfleet (ticket 0.1)", ANCHOR: "Flower FedAvg (dense)"}


def population_task(name: str, population: int, rounds: int, training: dict[str, Any]) -> Any:
    """A bench/comm.py Task for `population` MNIST devices (2 label-sorted shards each) and
    the lenet-300-100 ticket at density 0.1: the task the throughput and privacy parts share
    (its ticket is found once and cached in the work directory)."""
    from bench.comm import MNIST_FIND, Task

    return Task(
        name=name,
        dataset="mnist",
        nodes=population,
        per_round=0,
        rounds=rounds,
        target=0.0,
        tickets={"ticket": [*MNIST_FIND, "--target-density", "0.1"]},
        arms=(),
        training=training,
        simulation={"sim_partition": "shards", "sim_partition_shards": 2},
    )


def population_run(ticket: Path | None, run_dir: Path, training: Any, seed: int) -> dict[str, Any]:
    """The run config of one run of `training` on population_task's virtual devices."""
    from ticket.runconfig import RunConfig, RunPlacement, SimulationSettings, to_run_config

    run = RunConfig(
        placement=RunPlacement(ticket_path=ticket, run_dir=run_dir),
        training=training,
        simulation=SimulationSettings(
            sim_dataset="mnist",
            sim_partition="shards",
            sim_partition_shards=2,
            sim_partition_seed=seed,
        ),
    )
    return dict(to_run_config(run))


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Round wall time and device updates per second on the Simulation Engine, secure
    aggregation on and off, at each cohort size out of a population of POPULATION; with
    `--anchor`, Flower's FedAvg on the dense network too (`--anchor-only`: that alone)."""
    sys.path.insert(0, str(ROOT))
    from bench.comm import find_tickets
    from loopback.launcher import Loopback
    from ticket.runconfig import TrainingSettings

    training = {"local_epochs": 1, "batch_size": 10, "lr": 0.1, "optimizer": "sgd"}
    task = population_task("scale-throughput", args.population, args.rounds, training)
    federation = {"num-supernodes": args.population, "client-resources-num-cpus": 1}

    def config(n: int, run_dir: Path, ticket: Path | None, secure: bool) -> dict[str, Any]:
        settings = TrainingSettings(
            allow_unsigned=True,
            num_rounds=args.rounds,
            fraction_train=n / args.population,
            fraction_evaluate=0.0,
            min_nodes=n,
            seed=args.seed,
            **({"secagg": True, "secagg_clip": 1.0} if secure else {}),
            **training,
        )
        return population_run(ticket, run_dir, settings, args.seed)

    rows = []
    if not args.anchor_only:
        ticket = Path(find_tickets(task, args.work, args.seed)["ticket"]["path"])
        with Loopback(args.work / "sim" / task.name, ROOT, [], simulation=True) as fleet:
            for n in args.per_round:
                for secure in (False, True):
                    arm = f"n{n}-{'secagg' if secure else 'plain'}"
                    run_dir = args.work / "runs" / task.name / arm
                    shutil.rmtree(run_dir, ignore_errors=True)
                    row = _throughput_row(
                        fleet, config(n, run_dir, ticket, secure), run_dir, args, federation
                    )
                    row.update(per_round=n, secagg=secure, system=PROJECT)
                    rows.append(row)
                    print(f"throughput: {arm}: {json.dumps(row)}", flush=True)
                    if row["status"] != "finished:completed":
                        break
    if args.anchor or args.anchor_only:
        keys = anchor_keys(ANCHOR_APP / "pyproject.toml")
        with Loopback(
            args.work / "sim" / f"{task.name}-anchor", ANCHOR_APP, [], simulation=True
        ) as fleet:
            for n in args.per_round:
                run_dir = args.work / "runs" / task.name / f"n{n}-anchor"
                shutil.rmtree(run_dir, ignore_errors=True)
                full = config(n, run_dir, None, False)
                row = _throughput_row(
                    fleet, {key: full[key] for key in keys}, run_dir, args, federation
                )
                row.update(per_round=n, secagg=False, system=ANCHOR)
                rows.append(row)
                print(f"throughput: n{n}-anchor: {json.dumps(row)}", flush=True)
                if row["status"] != "finished:completed":
                    break
    return {"population": args.population, "training": task.training, "rows": rows}


def anchor_keys(pyproject: Path) -> list[str]:
    """The run-config keys the anchor app declares (a subset of ticket/runconfig.py's):
    `flwr run --run-config` drops a key the app does not declare."""
    import tomllib

    from ticket.runconfig import keys

    table = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    unknown = sorted(set(table) - set(keys()))
    if unknown:
        raise ValueError(f"{pyproject}: [tool.flwr.app.config] {unknown[0]}: not a run-config key")
    return sorted(table)


def _throughput_row(
    fleet: Any,
    run_config: dict[str, Any],
    run_dir: Path,
    args: argparse.Namespace,
    federation: dict[str, Any],
) -> dict[str, Any]:
    """One run of `args.rounds` rounds: its status, each round's wall, server CPU and RSS."""
    import psutil

    from loopback.launcher import flower_name

    server = _ServerSampler(fleet, flower_name, psutil, run_dir / "rounds.jsonl")
    server.start()
    try:
        outcome = fleet.run(
            run_config,
            timeout_s=args.timeout,
            federation_config=federation,
            on_round=server.mark,
        )
    finally:
        server.stop()
    per_round_cpu = server.round_cpu()
    return {
        "status": outcome.status,
        "run_wall_s": outcome.wall_s,
        "rounds": [
            {
                "round": line["round"],
                "wall_s": line["wall_s"],
                "participants": len(line["participants"]),
                "failures": len(line["failures"]) + len(line["rejected"]),
                "round_trips": line.get("round_trips"),
                "server_cpu_s": per_round_cpu.get(line["round"]),
                "server_rss_mb": server.rss_at.get(line["round"], 0) / 2**20,
                "up_bytes_per_device": max(line["bytes"]["up"].values(), default=0),
                "down_bytes_per_device": max(line["bytes"]["down"].values(), default=0),
            }
            for line in outcome.rounds
        ],
        "server_cpu_s": server.cpu_s,
        "server_peak_rss_mb": server.peak_rss / 2**20,
        "clientapp_cpu_s": server.worker_cpu_s,
    }


class _ServerSampler:
    """Every 0.5 s: the ServerApp process's CPU time and RSS, and the Ray workers' CPU."""

    def __init__(self, fleet: Any, flower_name: Any, psutil: Any, round_log: Path) -> None:
        import threading

        self.fleet, self.flower_name, self.psutil = fleet, flower_name, psutil
        self.round_log = round_log  # a round's line appears there once it is finished
        self.ends: dict[int, float] = {}  # round -> server CPU s when its line appeared
        self.cpu: dict[int, float] = {}
        self.workers: dict[int, float] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

        self.marks: dict[int, float] = {}  # round -> server CPU s when it started
        self.rss_at: dict[int, int] = {}  # round -> peak server RSS while it ran
        self._round: int | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def mark(self, server_round: int) -> None:
        """Round `server_round` starts (Loopback.run's on_round)."""
        self._sample()
        self.marks[server_round] = self.cpu_s
        self._round = server_round

    def round_cpu(self) -> dict[int, float]:
        """Server CPU s per round: from its `[ROUND k/N]` line to its run-log line (sampled
        every 0.5 s; without one, to the next round's start or the end of the run)."""
        starts = sorted(self.marks.items())
        nexts = [cpu for _, cpu in starts[1:]] + [self.cpu_s]
        return {
            r: self.ends.get(r, later) - start
            for (r, start), later in zip(starts, nexts, strict=True)
        }

    def _logged(self) -> None:
        if self.round_log.exists():
            for text in self.round_log.read_text().splitlines():
                try:
                    finished = int(json.loads(text)["round"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line still being written
                self.ends.setdefault(finished, self.cpu_s)

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    @property
    def worker_cpu_s(self) -> float:
        return sum(self.workers.values())

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()
            self._logged()

    def _sample(self) -> None:
        for started in self.fleet.started:
            try:
                root = self.psutil.Process(started.popen.pid)
                tree = [root, *root.children(recursive=True)]
            except self.psutil.NoSuchProcess:
                continue
            for process in tree:
                try:
                    name = self.flower_name(process)
                    times = process.cpu_times()
                    cpu = times.user + times.system
                    if name in ("flwr-serverapp", "flwr-simulation"):
                        self.cpu[process.pid] = cpu
                        rss = process.memory_info().rss
                        self.peak_rss = max(self.peak_rss, rss)
                        if self._round is not None:
                            at = self.rss_at.get(self._round, 0)
                            self.rss_at[self._round] = max(at, rss)
                    elif "ClientAppActor" in " ".join(process.cmdline()[:1]):
                        self.workers[process.pid] = cpu
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    continue


def throughput_key(row: dict[str, Any]) -> tuple[str, int, bool]:
    """What a throughput row measured: (system, devices per round, secure aggregation); rows
    from before the anchor have no system and are the project's."""
    return (row.get("system", PROJECT), row["per_round"], row["secagg"])


def growth_exponent(points: list[tuple[int, float]]) -> float | None:
    """The least-squares slope of log(cost) over log(n): cost ~ n^slope."""
    import numpy as np

    if len({n for n, _ in points}) < 2:
        return None
    x = np.log([n for n, _ in points])
    y = np.log([cost for _, cost in points])
    return float(np.polyfit(x, y, 1)[0])


def _throughput_markdown(runs: list[dict[str, Any]]) -> list[str]:
    rows = sorted(
        ((run, row) for run in runs for row in run["rows"]),
        key=lambda pair: (
            pair[1]["per_round"],
            throughput_key(pair[1])[0] != PROJECT,
            pair[1]["secagg"],
        ),
    )
    first = runs[0]
    lines = [
        "## Throughput on the Simulation Engine: 10, 100, 1,000 devices per round",
        "",
        *(f"- `{run['command']}` ({run['machine']}{_load(run)})" for run in runs),
        "",
        f"Flower's Simulation Engine (Ray; 2 workers, client-resources-num-cpus = 1) runs the "
        f"project's ServerApp and ClientApp; a population of {first['population']:,} virtual "
        "devices (MNIST, 2 label-sorted shards each: 30 training rows), the lenet-300-100 "
        f"ticket at density 0.1, local training {json.dumps(first['training'])}; no "
        "evaluation. Each run has 2 rounds: round 1 also starts the workers (torch import, "
        "MNIST load) and, under secure aggregation, runs the two-trip key setup, so the "
        "steady state is round 2. Wall = the round's message trips as the round log counts "
        "them; updates/s = devices aggregated / round 2 wall; server = the flwr-simulation "
        "process, which holds the ServerApp and the engine's message routing (Flower's "
        "in-memory LinkState) together. Server CPU per round: from the round's "
        '`[ROUND k/N]` line to its run-log line (both seen at 0.5 s steps, so "-" for a '
        "round under 2 s; round 1 includes the "
        "workers' start and the key setup); the run's total also holds Ray's start, the "
        "final model's push to all 2,000 virtual nodes and the shutdown. Workers CPU = the "
        "Ray ClientApp workers over the whole run.",
        "",
        "Flower FedAvg (dense) rows, the anchor: Flower's own `FedAvg` "
        "(flwr.serverapp.strategy, unchanged but for a run-log line per round) with a dense "
        "lenet-300-100 ClientApp in torch (one thread per worker, as the project's numpy "
        "ClientApp), bench/flower_anchor, on the same partitions, schedule and engine "
        "settings, float32 ArrayRecords both ways; its wall is from configure_train's start "
        "(sampling included) to aggregate_train's end, one trip a round. It differs from the "
        "project's rows in more than Flower's code: the network is dense (10x the ticket's "
        "values on the wire and in training), the ClientApp trains with torch where the "
        "project's uses numpy and also reads and verifies the ticket per message, and the "
        "anchor pushes no final model to the population at the end of its run (its run "
        "totals lack that).",
        "",
        "| devices/round | system | secagg | status | round 1 wall s | round 2 wall s "
        "| updates/s (round 2) | server CPU s, round 1 | server CPU s, round 2 "
        "| server RSS MB, peak | trips, round 2 | up B/device | down B/device "
        "| server CPU s, run | workers CPU s, run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in rows:
        by_round = {line["round"]: line for line in row["rounds"]}
        one, two = by_round.get(1), by_round.get(2)
        wall = two["wall_s"] if two else None
        # The round's start is read from the log stream every 0.5 s, its end sampled every
        # 0.5 s: a round under 2 s has no meaningful share of its own.
        cpu = two.get("server_cpu_s") if two and two["wall_s"] >= 2.0 else None
        trips = (two.get("round_trips") or {}) if two else {}
        system = SYSTEM_NAMES[throughput_key(row)[0]]
        last = row["rounds"][-1] if row["rounds"] else {}
        lines.append(
            f"| {row['per_round']:,} | {system} | {'on' if row['secagg'] else 'off'} "
            f"| {row['status']} | {one['wall_s']:.1f} | {_num(wall)} "
            f"| {_num(two['participants'] / wall if two and wall else None)} "
            f"| {_num(one.get('server_cpu_s'))} | {_num(cpu)} "
            f"| {row['server_peak_rss_mb']:.0f} "
            f"| {trips.get('total', '-')} | {_bytes(last.get('up_bytes_per_device'))} "
            f"| {_bytes(last.get('down_bytes_per_device'))} | {row['server_cpu_s']:.0f} "
            f"| {row['clientapp_cpu_s']:.0f} |"
            if one
            else f"| {row['per_round']:,} | {system} | {'on' if row['secagg'] else 'off'} "
            f"| {row['status']} | - | - | - | - | - | - | - | - | - | - | - |"
        )
    lines.append("")
    for system, secure in ((PROJECT, False), (PROJECT, True), (ANCHOR, False)):
        points = [
            (row["per_round"], line["wall_s"])
            for _, row in rows
            if throughput_key(row)[0] == system and row["secagg"] is secure
            for line in row["rounds"]
            if line["round"] == 2
        ]
        slope = growth_exponent(points)
        if slope is not None:
            sizes = ", ".join(f"{n:,}" for n, _ in points)
            lines.append(
                f"- {SYSTEM_NAMES[system]}: round 2 wall grows as n^{slope:.2f} over n = "
                f"{sizes}, secure aggregation {'on' if secure else 'off'} (least squares on "
                "log-log)."
            )
    lines += ["", *PER_MESSAGE_NOTES, ""]
    return lines


# Measured by hand, not by this script (commands in each item); kept with the table because
# they say where a round's time goes.
PER_MESSAGE_NOTES = [
    "Where the time goes (measured separately; 2 cores shared with other jobs):",
    "",
    "- The anchor beside the project in one run (`python bench/scale.py throughput --anchor "
    "--out bench/results/scale-side-by-side`, bench/results/scale-side-by-side/scale.md; "
    "load average 7.6 at its start; another job's Simulation Engine run shared the 2 "
    "cores from its 1,000-device rows to its end, the anchor's included): round 2 wall at "
    "10 / 100 / 1,000 devices "
    "was 0.3 / 4.8 / 31.3 s for the project in plaintext, 0.8 / 5.8 / 85.1 s under secure "
    "aggregation and 0.5 / 3.4 / 31.9 s for Flower's FedAvg on the dense network. At 1,000 "
    "the project's plaintext round and Flower's FedAvg take the same time although FedAvg "
    "moves 10x the bytes and trains 10x the weights: the engine's message routing sets the "
    "pace (the profile below). Flower's FedAvg peaks at 2.5 GB of server RSS against the "
    "project's 0.75 GB (a thousand dense ArrayRecords of 1.07 MB). The table's rows come "
    "from runs hours apart at different loads: read speed against the anchor from the one "
    "run, not across rows here.",
    "- The server side dominates, and it is Flower's engine, not the ServerApp: "
    "`py-spy record --pid <flwr-simulation> --duration 40 --rate 20 --format raw` during "
    "round 2 at 1,000 devices (plaintext) put 669 of 974 samples (69%) in "
    "`vce_api.add_messages_to_queue`, which asks the in-memory LinkState "
    "`get_message_ins(node_id, limit=1)` for each of the 2,000 virtual nodes every 0.1 s, "
    "and each call scans every stored message (`_check_stored_messages` per message): "
    "O(population x messages in flight) per sweep. The project's ServerApp (strategy, "
    "secure aggregation, run log) took 115 samples (12%). Under secure aggregation "
    "(30 s of round 2 at 1,000): 524 of 690 samples (76%) in that scan, 77 (11%) in the "
    "ServerApp, most of those waiting in Flower's grid. (Those profiles come from earlier "
    "runs of the same code than the table's, on a busier machine: 60.8 s and 72.0 s for "
    "round 2 at 1,000.)",
    "- The ClientApp's own cost per message, in process (`edge_daemon.client_app.app` on "
    "an MNIST train instruction for a virtual node of the 2,000-way split, 10 messages, "
    "cProfile): ~12-16 ms, of which reading and verifying the ticket ~8 ms, training 30 "
    "rows ~3.6 ms. Over the whole 1,000-device runs (2 rounds, worker start included) "
    "the 2 workers used 45 s of CPU in plaintext and 124 s under secure aggregation "
    "(4 trips in round 1, 2 in round 2), against the server process's 108 s and 196 s "
    "(the `workers CPU s` and `server CPU s, run` columns).",
    "- Fixed in the ClientApp for the engine: each worker ran numpy's OpenBLAS with a "
    "thread per core; with 2 workers on 2 busy cores a (10 x 784) @ (784 x 300) product "
    "took 49 ms with 2 threads against 0.64 ms with 1 (`OPENBLAS_NUM_THREADS=1|2`, 200 "
    "products, measured while other jobs ran; on an idle machine both are < 0.5 ms). A "
    "virtual node now runs BLAS on one thread (threadpoolctl). The dataset's 2,000-way "
    "split (~50-150 ms) was made again for every message; it is now made once per worker. "
    "Round 2 at 10 devices took 0.64 s before and 0.43 s after (plaintext), 0.96 s and "
    "0.76 s (secure), in runs minutes apart; later runs of the same code took 0.7 s and "
    "then 0.5 s (the table) for both: the machine's load moves these more than the fix "
    "does, so no speed-up is claimed from them. Secure aggregation's state already stays in the "
    "virtual node's Context across messages (edge_daemon/secagg_client.py StateStore), and "
    "the ClientApp builds no torch model (numpy only).",
    "- Not here: 5,000 devices per round, and more than 2 rounds per size.",
]


def _load(run: dict[str, Any]) -> str:
    """The 1-minute load average when the run started, for runs that recorded it."""
    load = run.get("load_at_start")
    return "" if load is None else f"; load average {load:.1f} at its start"


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _secagg_lines(work: Path, arm: dict[str, Any]) -> list[dict[str, Any]]:
    """The `secagg` part of each round line of an arm's run log (none in plaintext)."""
    name = arm["arm"]["name"].replace(" ", "_").replace("/", "_")
    log = work / "runs" / "scale-bytes" / name / "rounds.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [line["secagg"] for line in lines if line.get("secagg")]


def _bytes_markdown(result: dict[str, Any]) -> list[str]:
    dense = result["dense_float32_bytes"]
    task = result["task"]
    arms = result["arms"]
    by_name = {arm["arm"]["name"]: arm for arm in arms}
    ticket = by_name["ticket float32"]
    measured = by_name.get("dense float32")
    dense_down = measured["down_bytes_per_device"] if measured else dense
    best = result.get("best_target") or {}
    lines = [
        "## Bytes per device: dense float32, the ticket, secure aggregation, a smaller downlink",
        "",
        f"Produced by: `{result['command']}` ({result['machine']}{_load(result)}).",
        *_added_by(arms),
        "",
        f"{task['dataset']}, {task['nodes']} devices, {task['per_round']} per round, "
        f"{result['rounds']} rounds, lenet-300-100 (the ticket at density 0.1; dense float32: "
        f"density 1.0, plain FedAvg on the same ServerApp and ClientApp); local training "
        f"{json.dumps(task['training'])}; accuracy on the 10k test rows (server). Dense "
        f"float32 uplink: {dense:,} B per device per round (header + every value).",
        "",
        "| arm | downlink | levels | bits | final acc | best acc | mean acc, last 10 "
        "| final vs float32 ticket (pp) | last 10 vs float32 ticket (pp) "
        "| last 10 vs dense float32 (pp) | up B/device/round | up vs dense float32 "
        "| down B/device/round | down vs dense float32 | run wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        last = arm.get("last10_accuracy", last_mean(arm["rounds"]))
        versus_dense = (
            f"{100 * (last - measured.get('last10_accuracy', last_mean(measured['rounds']))):+.2f}"
            if measured
            else "-"
        )
        lines.append(
            f"| {arm['arm']['name']} | {arm['arm']['downlink']} | {arm['levels'] or '-'} "
            f"| {arm['bits'] or '-'} "
            f"| {100 * arm['final_accuracy']:.2f} | {100 * arm['best_accuracy']:.2f} "
            f"| {100 * last:.2f} | {arm['final_vs_dense_pp']:+.2f} "
            f"| {100 * (last - ticket.get('last10_accuracy', last_mean(ticket['rounds']))):+.2f} "
            f"| {versus_dense} | {arm['up_bytes_per_device']:,} "
            f"| 1/{dense / arm['up_bytes_per_device']:.1f} "
            f"| {arm['down_bytes_per_device']:,} "
            f"| 1/{dense_down / arm['down_bytes_per_device']:.1f} | {arm['run_wall_s']:.0f} |"
        )
    lines += [
        "",
        "Up = the update (under secure aggregation the masked vector plus the protocol's own "
        "messages: key advert, shares, unmask response) as the round log counts it; down = the "
        "global values in the downlink dtype plus, under secure aggregation, the protocol's "
        "requests. Under secure aggregation the server keeps the exact float32 global for "
        "aggregation (server/secagg_round.py: `self._global` is the float32 copy, the new "
        "global is it plus the mean delta) and each device's delta is taken against the "
        "global as it decoded it (edge_daemon/client_app.py train_secure), so a float16 or "
        "int8 downlink costs only what the device trains from, and the error does not "
        "accumulate in the server's copy. Two label-sorted shards per device make the "
        "accuracy swing by about a point from round to round: read the last-10 mean beside "
        "the final one. Levels and bits are what the rounds used (every round had the same "
        "cohort size, so the same choice). Dense float32 converges more slowly on this split "
        "than the ticket (bench/results/comm.md, fed-mnist: 97% at round 133), so after a few "
        "dozen rounds a comparison against dense favours the ticket arms; the one against the "
        "float32 ticket is the stricter.",
        "",
    ]
    lines += _goal_lines(arms, dense, measured, ticket)
    if "target" in best:
        chosen = best["target"]
        lines += [
            f"The downlink arms ran at target {chosen:g}: "
            if chosen is not None
            else "No target was close enough for the downlink arms: ",
            "",
        ]
        lines[-2] += (
            "the per-round target with the fewest uplink bytes whose last-10 mean accuracy is "
            f"at most {best['tolerance_pp']:g} pp below the float32 ticket's (chosen by the run "
            "from its own first phase, `best_target`)."
        )
    return lines


def _added_by(arms: list[dict[str, Any]]) -> list[str]:
    """One line per later command that added arms to the table (`bytes --clip`)."""
    commands = sorted({arm["command"] for arm in arms if arm.get("command")})
    return [
        f"Arms added later by `{command}` (the same task, rounds and seed): "
        + ", ".join(arm["arm"]["name"] for arm in arms if arm.get("command") == command)
        + "."
        for command in commands
    ]


def _goal_lines(
    arms: list[dict[str, Any]],
    dense: int,
    measured: dict[str, Any] | None,
    ticket: dict[str, Any],
) -> list[str]:
    """The issue's uplink goal (at most 1/40 of dense float32 at equal accuracy), read off
    the secure arms: which reach 1/40, and at what accuracy against the float32 ticket and
    dense float32 (last-10 means)."""
    secure = [arm for arm in arms if arm["arm"]["training"].get("secagg")]
    if not secure:
        return []

    def versus(arm: dict[str, Any]) -> str:
        last = last_mean(arm["rounds"])
        text = f"{100 * (last - last_mean(ticket['rounds'])):+.2f} pp against the float32 ticket"
        if measured is not None:
            text += f", {100 * (last - last_mean(measured['rounds'])):+.2f} pp against dense"
        return f"last-10 accuracy {100 * last:.2f}% ({text})"

    reaching = [arm for arm in secure if 40 * arm["up_bytes_per_device"] <= dense]
    closest = min(
        (arm for arm in secure if arm not in reaching),
        key=lambda arm: arm["up_bytes_per_device"],
        default=None,
    )
    lines = ["Against the uplink goal (at most 1/40 of dense float32 at equal accuracy):", ""]
    for arm in reaching:
        lines.append(
            f"- reaches 1/40: {arm['arm']['name']}, 1/{dense / arm['up_bytes_per_device']:.1f}, "
            f"{versus(arm)}"
        )
    if not reaching:
        lines.append("- no secure arm reaches 1/40 of dense float32")
    if closest is not None:
        lines.append(
            f"- the cheapest short of it: {closest['arm']['name']}, "
            f"1/{dense / closest['up_bytes_per_device']:.1f}, {versus(closest)}"
        )
    return [*lines, ""]


def write_markdown(document: dict[str, Any], path: Path) -> None:
    lines = [
        "# Fleet scale (issue 13): measurements",
        "",
        "Not here yet: 5,000 devices per round (issue 13 asks for it only if it fits; not "
        "run). Accuracy at 1,000 devices per round is in the privacy section, with and "
        "without noise."
        + (
            " The uplink goal, at most 1/40 of dense float32 at equal accuracy, is read off "
            "the bytes table at its end."
            if document.get("bytes")
            else ""
        ),
        "",
    ]
    unmask = document.get("unmask")
    if unmask:
        lines += [
            "## Server unmasking against the cohort size",
            "",
            f"One secure round in process (ticket/secagg), k = {LENGTH:,} values, 10% of the "
            "devices lost before masking; server CPU time (process time, one core, on 2 cores "
            "shared with other jobs) by phase. A row whose code is a commit ran this script "
            "with `--code-root` on a checkout of it (`git worktree add --detach DIR COMMIT`). "
            "Equal sum digests: both code versions give the same sum, bit for bit.",
            "",
        ]
        for run in unmask["runs"]:
            lines += [f"- `{run['command']}` ({run['machine']})"]
        lines += [
            "",
            "| code | n | degree | bits | add masked ms | unmask requests ms | responses ms "
            "| result ms | server total ms | sum digest |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in unmask["runs"]:
            for row in run["rows"]:
                lines.append(
                    f"| {row['code']} | {row['n']} | {row['degree']} | {row['modulus_bits']} "
                    f"| {row['add_masked_ms']:.0f} | {row['unmask_requests_ms']:.0f} "
                    f"| {row['responses_ms']:.0f} | {row['result_ms']:.0f} "
                    f"| {row['server_unmask_ms']:.0f} | {row['sum_digest'] % 10**12:012d} |"
                )
        lines.append("")
    throughput = document.get("throughput")
    if throughput:
        lines += _throughput_markdown(throughput["runs"])
    result = document.get("bytes")
    if result:
        lines += _bytes_markdown(result)
    if document.get("privacy"):
        lines += scale_privacy.markdown(document["privacy"])
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    unmask = parts.add_parser("unmask", help="server unmasking CPU time against n")
    unmask.add_argument("--cohorts", type=int, nargs="+", default=list(COHORTS))
    unmask.add_argument("--code-root", type=Path, help="import ticket from this checkout")
    unmask.add_argument("--label", help='rows are named by this (default "this tree")')
    byte_part = parts.add_parser("bytes", help="MNIST bytes per device and accuracy")
    byte_part.add_argument("--rounds", type=int, default=50)
    byte_part.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    byte_part.add_argument(
        "--tolerance-pp",
        type=float,
        default=TOLERANCE_PP,
        help="the downlink arms run at the cheapest target this close to the float32 ticket",
    )
    byte_part.add_argument(
        "--clip",
        type=float,
        help="only secure arms at this secagg-clip for each of --targets, added to the "
        "recorded bytes table (the recorded run's float32 ticket is the reference)",
    )
    byte_part.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-scale"))
    through = parts.add_parser("throughput", help="Simulation Engine updates per second")
    through.add_argument("--per-round", type=int, nargs="+", default=list(PER_ROUND))
    through.add_argument("--population", type=int, default=POPULATION)
    through.add_argument("--rounds", type=int, default=2)
    through.add_argument("--timeout", type=float, default=3600.0)
    through.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-scale"))
    through.add_argument(
        "--anchor", action="store_true", help="also Flower's FedAvg on the dense network"
    )
    through.add_argument(
        "--anchor-only", action="store_true", help="only Flower's FedAvg; keep the other rows"
    )
    private = parts.add_parser("privacy", help="epsilon and accuracy at 1,000 per round")
    private.add_argument("--rounds", type=int, default=10)
    private.add_argument("--population", type=int, default=scale_privacy.POPULATION)
    private.add_argument("--per-round", type=int, default=scale_privacy.PER_ROUND)
    private.add_argument("--noise", type=float, nargs="+", default=list(scale_privacy.NOISE))
    private.add_argument("--timeout", type=float, default=7200.0)
    private.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-privacy"))
    for part in (unmask, byte_part, through, private):
        part.add_argument("--seed", type=int, default=0)
        part.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    made_by = {
        "command": shlex.join(["python", "bench/scale.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}",
        # Other jobs share the cores: what they left shows in every wall and CPU time.
        "load_at_start": os.getloadavg()[0],
    }
    json_path = args.out / "scale.json"
    document = json.loads(json_path.read_text()) if json_path.exists() else {}
    started = time.perf_counter()
    if args.part == "unmask":
        run = {**run_unmask(args), **made_by}
        runs = [r for r in document.get("unmask", {}).get("runs", []) if r["label"] != run["label"]]
        document["unmask"] = {"runs": [*runs, run]}
    elif args.part == "throughput":
        run = {**run_throughput(args), **made_by}
        # A later run replaces the earlier rows of the sizes it ran, and only those.
        fresh = {throughput_key(row) for row in run["rows"]}
        runs = []
        for earlier in document.get("throughput", {}).get("runs", []):
            kept = [r for r in earlier["rows"] if throughput_key(r) not in fresh]
            if kept:
                runs.append({**earlier, "rows": kept})
        document["throughput"] = {"runs": [*runs, run]}
    elif args.part == "privacy":
        document["privacy"] = {**scale_privacy.run_privacy(args), **made_by}
    elif args.clip is not None:  # added to the recorded run's table, each arm its command
        recorded = document.get("bytes")
        if not recorded:
            raise SystemExit("bytes --clip adds to a recorded bytes run: run `bytes` first")
        added = run_bytes_clip(args, recorded)
        names = {arm["arm"]["name"] for arm in added}
        kept = [arm for arm in recorded["arms"] if arm["arm"]["name"] not in names]
        for arm in added:
            arm["command"] = made_by["command"]
        recorded["arms"] = [*kept, *added]
    else:
        document["bytes"] = {**run_bytes(args), **made_by}
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    write_markdown(document, args.out / "scale.md")


if __name__ == "__main__":
    main()
