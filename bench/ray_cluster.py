"""Does a Simulation Engine run join a Ray cluster it did not start? (issue 13, docs/scale.md)

Starts a two-node Ray cluster on this one machine (`ray start --head` and `ray start --address`,
one CPU each, in a private `--temp-dir` so no other Ray user on the machine finds it), then:

0. (control) runs the app below without RAY_ADDRESS: it must start a Ray of its own;
1. runs the project's ServerApp and ClientApp on Flower's Simulation Engine
   (`flower-superlink --simulation`, Loopback) with RAY_ADDRESS set to the head, 2 rounds of
   4 virtual hospitals (heart-uci), and records which Ray node's raylet each ClientAppActor
   process ran under, and whether the run's own process tree started a Ray of its own;
2. submits the same run with `init-args-num-cpus=1` in the federation config, which Flower
   passes to `ray.init` and Ray refuses when it connects to an existing cluster;
3. asks Flower's `--federation-config` parser for an `init-args-address` key.

It stops every process it started (the Ray processes by pid) and fails unless the control
started its own Ray and used none of ours, run 1 completed on actors of both Ray nodes with no
Ray of its own, run 2 failed with Ray's refusal and the parser refused the key.

    python bench/ray_cluster.py                       # about 2 minutes on 2 shared cores

Results: bench/results/ray_cluster.md.
"""

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/ray_cluster.py` from a checkout

RESULTS = ROOT / "bench" / "results" / "ray_cluster.md"
BIN = Path(sys.executable).parent
RAY_DAEMONS = ("gcs_server", "raylet")
REFUSAL = "When connecting to an existing cluster, num_cpus and num_gpus must not be provided"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RayCluster:
    """A head and one worker node started with Ray's CLI, each in a session of its own."""

    def __init__(self, temp_dir: Path, port: int) -> None:
        self.temp_dir, self.port = temp_dir, port
        self.blocks: list[subprocess.Popen[bytes]] = []
        self.pids: set[int] = set()
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        self.env = env

    def start(self) -> str:
        head = [
            *(str(BIN / "ray"), "start", "--head", "--block", "--port", str(self.port)),
            *("--num-cpus", "1", "--temp-dir", str(self.temp_dir)),
            *("--include-dashboard=false", "--disable-usage-stats"),
        ]
        self._spawn(head, "head")
        address = self._wait_for_address()
        worker = [str(BIN / "ray"), "start", "--address", address, "--block", "--num-cpus", "1"]
        self._spawn(worker, "worker")
        self._wait_for_nodes(address, 2)
        return address

    def _spawn(self, command: list[str], label: str) -> None:
        log = (self.temp_dir.parent / f"ray-{label}.log").open("wb")
        self.blocks.append(
            subprocess.Popen(
                ["nice", "-n", "10", *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        )

    def _wait_for_address(self) -> str:
        address_file = self.temp_dir / "ray_current_cluster"  # written by `ray start --head`
        deadline = time.monotonic() + 120
        while not address_file.exists():
            if time.monotonic() > deadline or self.blocks[0].poll() is not None:
                raise RuntimeError(f"ray start --head did not come up; see {self.temp_dir}")
            time.sleep(0.5)
        return address_file.read_text().strip()

    def _wait_for_nodes(self, address: str, count: int) -> None:
        probe = (
            f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive'])); ray.shutdown()"
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = subprocess.run(
                [sys.executable, "-c", probe],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1.0)
        raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes")

    def raylets(self) -> dict[int, str]:
        """raylet pid -> "head" / "worker" (the `ray start` it belongs to)."""
        found = {}
        for label, block in zip(("head", "worker"), self.blocks, strict=False):
            for child in self._tree(block.pid):
                if child.name() == "raylet":
                    found[child.pid] = label
        return found

    def _tree(self, pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.pids.update(process.pid for process in tree)
        return tree

    def stop(self) -> list[int]:
        """SIGTERM each `ray start --block` group, SIGKILL what is left; the pids still alive."""
        for block in self.blocks:
            self._tree(block.pid)
        for block in self.blocks:
            with suppress(ProcessLookupError):
                os.killpg(block.pid, signal.SIGTERM)
        for block in self.blocks:
            try:
                block.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(block.pid, signal.SIGKILL)
                block.wait(timeout=5)
        leftovers = []
        for pid in self.pids:
            try:
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE:
                    process.kill()
                    leftovers.append(process)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=5)
        return [process.pid for process in leftovers if process.is_running()]


class ActorWatch:
    """Every 0.3 s: the ClientAppActor processes and the raylet each one runs under, and any
    Ray daemon inside the Loopback's own process trees (a Ray the run started for itself).

    Actors under neither of our raylets are "elsewhere": the control run's own Ray, or on a
    shared machine other people's simulations; they are counted, not checked."""

    def __init__(self, cluster: RayCluster, fleet: Any) -> None:
        self.cluster, self.fleet = cluster, fleet
        self.actors: dict[int, str] = {}  # actor pid -> "head" / "worker" / "elsewhere"
        self.own_ray: set[str] = set()  # names of Ray daemons seen in the Loopback's trees
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "ActorWatch":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            raylets = self.cluster.raylets()
            for process in psutil.process_iter(["name", "ppid", "cmdline"]):
                cmdline = process.info["cmdline"] or []
                if cmdline[:1] and cmdline[0].startswith("ray::ClientAppActor"):
                    node = raylets.get(process.info["ppid"], "elsewhere")
                    self.actors.setdefault(process.pid, node)
            for started in self.fleet.started:
                try:
                    tree = psutil.Process(started.popen.pid).children(recursive=True)
                    self.own_ray.update(
                        name for child in tree if (name := child.name()) in RAY_DAEMONS
                    )
                except psutil.NoSuchProcess:
                    continue
            self._stop.wait(0.3)


def run_config(work: Path, name: str) -> dict[str, Any]:
    from tests.inprocess import find_ticket
    from ticket.runconfig import (
        RunConfig,
        RunPlacement,
        SimulationSettings,
        TrainingSettings,
        to_run_config,
    )

    ticket = work / "heart.ticket"
    if not ticket.exists():
        find_ticket(ticket, density=0.1)
    run = RunConfig(
        placement=RunPlacement(ticket_path=ticket, run_dir=work / name),
        training=TrainingSettings(
            allow_unsigned=True, num_rounds=2, min_nodes=4, fraction_evaluate=0.0
        ),
        simulation=SimulationSettings(
            sim_dataset="heart-uci", sim_partition="natural", sim_num_partitions=4
        ),
    )
    return dict(to_run_config(run))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rc-"))  # short: Ray's socket paths
    temp_dir = work / "ray"
    temp_dir.mkdir(parents=True, exist_ok=True)

    from flwr.supercore.utils import simulation_config_from_json

    from loopback.launcher import Loopback

    findings: dict[str, Any] = {}
    cluster = RayCluster(temp_dir, free_port())
    try:
        address = cluster.start()
        federation = {"num-supernodes": 4, "client-resources-num-cpus": 1}
        # The control: no RAY_ADDRESS, and the cluster's address file is in its own temp dir,
        # so the run starts a Ray of its own and none of its actors run on our nodes.
        control_fleet = Loopback(work / "control", ROOT, [], simulation=True, grace_s=5.0)
        with control_fleet, ActorWatch(cluster, control_fleet) as watch:
            control = control_fleet.run(
                run_config(work, "control"), timeout_s=600.0, federation_config=federation
            )
        findings["control"] = control
        findings["control_own_ray"] = sorted(watch.own_ray)
        findings["control_actors"] = dict(watch.actors)
        os.environ["RAY_ADDRESS"] = address  # inherited: SuperLink -> SuperExec -> simulation
        with Loopback(work / "sim", ROOT, [], simulation=True, grace_s=5.0) as fleet:
            with ActorWatch(cluster, fleet) as watch:
                joined = fleet.run(
                    run_config(work, "joined"), timeout_s=600.0, federation_config=federation
                )
            findings["own_ray"] = sorted(watch.own_ray)
            findings["joined"] = joined
            findings["actors"] = dict(watch.actors)
            refused = fleet.run(
                run_config(work, "refused"),
                timeout_s=300.0,
                federation_config={**federation, "init-args-num-cpus": 1},
            )
            findings["refused"] = refused
            log = (work / "sim" / "logs" / f"flwr-run-{fleet.attempts}.log").read_text()
            findings["refusal_logged"] = REFUSAL in log
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        findings["ray_leftovers"] = cluster.stop()
    try:
        simulation_config_from_json({"num_supernodes": 4, "init_args_address": address})
        findings["address_key"] = "accepted"
    except ValueError as error:
        findings["address_key"] = str(error)

    ok = report(findings)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def tally(actors: dict[int, str]) -> dict[str, int]:
    """How many actor processes ran under each Ray node ("head", "worker", "elsewhere")."""
    counts: dict[str, int] = {}
    for node in actors.values():
        counts[node] = counts.get(node, 0) + 1
    return counts


def report(found: dict[str, Any]) -> bool:
    joined, refused, control = found["joined"], found["refused"], found["control"]
    per_node, control_per_node = tally(found["actors"]), tally(found["control_actors"])
    checks = {
        "control (no RAY_ADDRESS) completed": control.completed,
        "control started a Ray of its own": bool(found["control_own_ray"]),
        "control used none of our Ray nodes": not {"head", "worker"} & set(control_per_node),
        "run 1 completed": joined.completed,
        "run 1 started no Ray of its own": not found["own_ray"],
        "run 1's actors ran on both Ray nodes": {"head", "worker"} <= set(per_node),
        "run 2 failed": not refused.completed,
        "run 2's log has Ray's refusal": found["refusal_logged"],
        "init-args-address refused": found["address_key"] != "accepted",
        "no Ray process left": not found["ray_leftovers"],
    }
    rounds = [(line["round"], len(line["participants"])) for line in joined.rounds]
    lines = [
        "# A Simulation Engine run on a Ray cluster it did not start",
        "",
        f"Produced by: `python bench/ray_cluster.py` ({os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}); what it checks and why: "
        "[docs/scale.md](../../docs/scale.md#the-simulation-engine-on-a-ray-cluster).",
        "",
        "A two-node Ray cluster on this one machine (`ray start --head --num-cpus 1 --temp-dir "
        "DIR` and `ray start --address HEAD --num-cpus 1`), then `flower-superlink --simulation` "
        "(loopback.Loopback) started with `RAY_ADDRESS=HEAD` in its environment, 4 virtual "
        "hospitals (heart-uci), `client-resources-num-cpus=1`, 2 rounds; first a control run "
        "without RAY_ADDRESS.",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {name} | {'yes' if passed else 'NO'} |" for name, passed in checks.items()),
        "",
        f"- Control, `flower-superlink --simulation` without RAY_ADDRESS: `{control.status}`; "
        f"Ray daemons in its own process tree: {found['control_own_ray'] or 'none'}; "
        f"ClientAppActor processes per Ray node: {dict(sorted(control_per_node.items()))}.",
        f"- Run 1, with RAY_ADDRESS: `{joined.status}` in {joined.wall_s:.1f} s; rounds "
        f"(round, participants): "
        f"{rounds}; ClientAppActor processes seen per Ray node: "
        f"{dict(sorted(per_node.items()))} (elsewhere: under a raylet not ours, i.e. another "
        "user's Ray on this shared machine or the control's own, still exiting); "
        "Ray daemons in the run's own process tree: "
        f"{found['own_ray'] or 'none'}.",
        f"- Run 2 (`init-args-num-cpus=1` added): `{refused.status}`; its log has "
        f'"{REFUSAL}": {"yes" if found["refusal_logged"] else "no"}.',
        f"- `--federation-config 'init-args-address=...'`: {found['address_key']}.",
        f"- Ray processes left after the stop: {found['ray_leftovers'] or 'none'}.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.write_text(text)
    print(text)
    return all(checks.values())


if __name__ == "__main__":
    raise SystemExit(main())
