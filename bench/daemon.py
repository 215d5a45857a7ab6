"""The edge daemon's footprint: idle memory and CPU, start-up latency, and a round's peak memory.

Everything runs for real on loopback, secured as a real fleet (and `make demo`) is: a SuperLink
with TLS and node authentication, `edge-daemon run` processes with enrolled node keys, the stock
flower-supernode each daemon starts, and the ClientApp it starts per message.

1. Idle: a daemon whose device is not eligible (its node stopped) for `--idle-s` seconds, once
   with the real sensors under the default policy (psutil, NetworkManager) and once with a probe
   file. Peak RSS of the daemon process and the CPU time it used, including that of the
   commands it ran and reaped (busctl or nmcli, reading NetworkManager's metered flag).
2. Becoming eligible: the probe file flips to eligible (with `on_after_s: 0`; the default policy
   adds its 120 s of hysteresis on top); seconds until the node logs its SuperNode id, i.e. it
   is registered with the SuperLink. Repeated `--repeats` times.
3. A round: 2 rounds of the heart ticket on 2 devices; the largest sum of RSS over one device's
   whole process tree (daemon, SuperNode, SuperExec, ClientApp) sampled every 0.1 s.

    python bench/daemon.py            # about 4 minutes

Results: bench/results/daemon.{json,md}, with the command that made them.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/daemon.py` from a checkout

from loopback.demo import run_config  # noqa: E402
from loopback.devices import ELIGIBLE, UNPLUGGED, Device, daemon_yaml, prepare_devices  # noqa: E402
from loopback.launcher import Loopback, free_port  # noqa: E402
from tests.inprocess import signed_ticket  # noqa: E402
from ticket.tls import write_dev_pki  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MB = 2**20


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> tuple[int, dict[str, int], int]:
    """Total RSS of a process tree now, its parts by command name, and the tree's PSS (each
    shared page divided among the processes sharing it: what the tree costs the device)."""
    parts: dict[str, int] = {}
    pss = 0
    for process in tree(pid):
        try:
            name = next(
                (Path(a).name for a in process.cmdline() if "flower-" in a or "flwr-" in a),
                "edge-daemon",
            )
            memory = process.memory_full_info()
            parts[name] = parts.get(name, 0) + memory.rss
            pss += memory.pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sum(parts.values()), parts, pss


ENTRY = "from flwr.supernode.cli import flwr_clientapp"  # what flwr-clientapp runs
IMPORTS = {  # what a flwr-clientapp process imports before and with our ClientApp
    "flwr-clientapp's own entry point (stock Flower)": ENTRY,
    "... and edge_daemon.client_app": f"{ENTRY}; import edge_daemon.client_app",
}


def import_rss() -> dict[str, float]:
    """Peak RSS of a fresh interpreter after each import line of IMPORTS, in MB (VmHWM: the
    child's ru_maxrss would carry this process's peak over the fork)."""
    found = {}
    for label, line in IMPORTS.items():
        code = (
            f"{line}\nfrom pathlib import Path\n"
            "print(next(l for l in Path('/proc/self/status').read_text().splitlines()"
            " if l.startswith('VmHWM:')).split()[1])"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
        found[label] = int(done.stdout.split()[-1]) * 1024 / MB
    return found


def daemon_pid(fleet: Loopback, index: int) -> int:
    return next(s.popen.pid for s in fleet.started if s.label == f"daemon-{index}")


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of the process and of the children it has reaped (each probe's busctl/nmcli)."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def measure_idle(fleet: Loopback, index: int, seconds: float) -> dict[str, float]:
    """Peak RSS and CPU use of one daemon process while its node stays stopped."""
    process = psutil.Process(daemon_pid(fleet, index))
    time.sleep(5.0)  # past start-up: imports done, first probes taken
    if fleet.node_pids(index):
        raise RuntimeError(f"daemon-{index} started its node: the device is not idle")
    before = cpu_seconds(process)
    peak = process.memory_info().rss
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.5)
    used = cpu_seconds(process) - before
    modules_torch = any("torch" in m.path for m in process.memory_maps())
    return {
        "seconds": seconds,
        "peak_rss_mb": peak / MB,
        "cpu_s": used,
        "cpu_percent": 100 * used / seconds,
        "torch_loaded": modules_torch,
    }


def measure_start(device: Device, fleet: Loopback, index: int) -> float:
    """Seconds from the probe file turning eligible to the node's SuperNode id in its log."""
    log = device.state_dir / "logs" / "supernode.log"
    seen = log.read_text().count("SuperNode ID:") if log.exists() else 0
    started = time.monotonic()
    device.set_conditions(ELIGIBLE)
    while time.monotonic() - started < 120:
        if log.exists() and log.read_text().count("SuperNode ID:") > seen:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{device.name}: node not connected within 120 s")


def wait_stopped(device: Device, fleet: Loopback, index: int) -> None:
    device.set_conditions(UNPLUGGED)
    deadline = time.monotonic() + 60
    while fleet.node_pids(index) and time.monotonic() < deadline:
        time.sleep(0.1)


def sample_round_peak(pid: int, stop: threading.Event, out: dict[str, Any]) -> None:
    while not stop.wait(0.1):
        total, parts, pss = tree_rss(pid)
        if total > out.get("total", 0):
            out.update(total=total, parts=parts)
        out["pss"] = max(out.get("pss", 0), pss)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-daemon"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--before", type=Path, help="an earlier daemon.json: its round figures as 'before'"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    ticket, fleet_key = signed_ticket(args.work, density=0.1)
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    tls = write_dev_pki(args.work / "pki", ["127.0.0.1", "localhost"])  # as loopback/demo.py
    devices = prepare_devices(
        args.work / "devices",
        hospitals=("Cleveland", "Hungary"),
        ticket=ticket,
        fleet_key=fleet_key,
        superlink=superlink,
        ports=[free_port(), free_port()],
        root_certificates=tls.ca_cert,
        node_auth=True,
    )
    for device in devices:
        device.set_conditions(UNPLUGGED)
    # A third daemon on the real sensors and the default policy (this machine: not eligible).
    sensors = args.work / "sensors"
    sensors.mkdir()
    (sensors / "daemon.yaml").write_text(
        daemon_yaml(
            sensors,
            superlink=superlink,
            fleet_key=fleet_key.resolve(),
            node_port=free_port(),
            probe_file=None,
            root_certificates=tls.ca_cert,  # its node never starts here: no key to enroll
        )
    )
    configs = [device.config for device in devices] + [sensors / "daemon.yaml"]
    result: dict[str, Any] = {}
    fleet = Loopback(
        args.work / "loopback",
        ROOT,
        [],
        daemon_configs=configs,
        superlink_port=port,
        tls=tls,
        node_auth=True,
        node_keys=[device.public_key for device in devices],
    )
    with fleet:
        print(f"idle for {args.idle_s:.0f} s ...", flush=True)
        idle: dict[str, Any] = {}
        threads = [
            threading.Thread(
                target=lambda i=i, k=k: idle.__setitem__(k, measure_idle(fleet, i, args.idle_s))
            )
            for i, k in ((2, "sensors"), (0, "probe_file"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result["idle"] = idle
        print("eligible -> connected ...", flush=True)
        starts = []
        for _ in range(args.repeats):
            starts.append(measure_start(devices[0], fleet, 0))
            wait_stopped(devices[0], fleet, 0)
        result["eligible_to_connected_s"] = starts
        print("a round ...", flush=True)
        for device in devices:
            device.set_conditions(ELIGIBLE)
        while not all(fleet.node_pids(i) for i in range(2)):
            time.sleep(0.2)
        peak: dict[str, Any] = {}
        stop = threading.Event()
        sampler = threading.Thread(
            target=sample_round_peak, args=(daemon_pid(fleet, 0), stop, peak)
        )
        sampler.start()
        config = run_config(
            ticket,
            run_dir=args.work / "run",
            fleet_key=fleet_key,
            num_rounds=2,
            min_nodes=2,
        )
        outcome = fleet.run(config, timeout_s=600)
        stop.set()
        sampler.join()
        if not outcome.completed:
            sys.exit(f"the round run ended {outcome.status}")
        result["round"] = {
            "device_tree_peak_rss_mb": peak["total"] / MB,
            "device_tree_peak_pss_mb": peak["pss"] / MB,
            "parts_at_peak_mb": {k: v / MB for k, v in sorted(peak["parts"].items())},
            "run_wall_s": outcome.wall_s,
        }
        result["status_after"] = devices[0].status()
    result["import_rss_mb"] = import_rss()
    document = {
        "command": shlex.join(["python", "bench/daemon.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        **result,
    }
    if args.before is not None:
        before = json.loads(args.before.read_text())
        document["before"] = {"command": before["command"], "round": before["round"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "daemon.json").write_text(json.dumps(document, indent=2) + "\n")
    write_markdown(document, args.out / "daemon.md")
    print((args.out / "daemon.md").read_text())


def write_markdown(document: dict[str, Any], path: Path) -> None:
    idle, starts, round_ = document["idle"], document["eligible_to_connected_s"], document["round"]
    lines = [
        "# edge-daemon footprint",
        "",
        f"Produced by: `{document['command']}` ({document['machine']}).",
        "",
        "The SuperLink serves TLS and admits only enrolled nodes (node authentication), as in "
        "`make demo`. Idle CPU includes the commands the daemon ran and reaped (busctl or nmcli "
        "for NetworkManager's metered flag).",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for name, label in (("sensors", "real sensors, default policy"), ("probe_file", "probe file")):
        run = idle[name]
        lines += [
            f"| idle RSS of the daemon, node stopped ({label}) | {run['peak_rss_mb']:.1f} MB |",
            f"| idle CPU over {run['seconds']:.0f} s ({label}) | {run['cpu_s']:.2f} s "
            f"({run['cpu_percent']:.2f}% of one core) |",
            f"| torch loaded while idle ({label}) | {run['torch_loaded']} |",
        ]
    lines += [
        f"| eligible to connected (`on_after_s: 0`), {len(starts)} runs | "
        f"median {statistics.median(starts):.2f} s (min {min(starts):.2f}, "
        f"max {max(starts):.2f}) |",
        f"| peak RSS of one device's process tree during a round | "
        f"{round_['device_tree_peak_rss_mb']:.0f} MB |",
        f"| peak PSS of that tree (shared pages split among its processes) | "
        f"{round_['device_tree_peak_pss_mb']:.0f} MB |",
        "",
        "At that peak: " + _parts(round_) + ".",
        "",
    ]
    if "before" in document:
        before = document["before"]["round"]
        lines += [
            f"Before (`{document['before']['command']}`, the torch ClientApp): peak RSS of the "
            f"tree {before['device_tree_peak_rss_mb']:.0f} MB; at that peak: {_parts(before)}.",
            "",
        ]
    lines += ["Where a ClientApp's memory goes (peak RSS of a fresh interpreter after the import):"]
    lines += [f"- {label}: {mb:.0f} MB" for label, mb in document["import_rss_mb"].items()]
    lines.append("")
    path.write_text("\n".join(lines))


def _parts(round_: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.0f} MB" for k, v in round_["parts_at_peak_mb"].items())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    main()
