"""Hardening figures (issue 12): clean-up after a SIGKILLed launcher, and how fast oversized or
hostile inputs are refused.

1. Processes: a launcher (a Python process) starts process trees as ticketfleet's launchers do:
   Loopback (a fake SuperLink and two fake SuperNodes), the daemon's NodeSupervisor, the
   fleet-server's SuperLink spawn, and pytest holding a Loopback in a fixture. Each fake node
   starts a child in a session of its own (as the SuperLink starts its SuperExec) and a child
   in its group that starts a grandchild (as SuperExec starts a ClientApp). The launcher is
   killed with SIGKILL; the figure is the time until every process of every tree, and every
   watcher, is gone (zombies count as gone), and how many were left after 15 s. Also the cost
   of a watcher: the time `spawn` takes and the watcher's resident memory.
2. Inputs: a 60 MB and a 100,000-`[` daemon.yaml / server.yaml, a readings CSV over its size
   limit and one with an overlong record, a ticket file over its size limit and one with an
   oversized trailer, and an update message with 1 MiB of trailing bytes: the time to refuse
   each and the error (every one must be refused: the script fails otherwise).

    python bench/hardening_processes.py                # about a minute
    python bench/hardening_processes.py --repeats 5

Results: bench/results/hardening_processes.md, sections "Processes" and "Input limits".
"""

import argparse
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/hardening_processes.py` from a checkout

from edge_daemon import config as daemon_config  # noqa: E402
from edge_daemon.readings import SCHEMAS, CsvLimits, IngestError, read_csv  # noqa: E402
from server import config as server_config  # noqa: E402
from tests.process_tree import (  # noqa: E402  # the tests' fake node and its checks
    FAKE_TREE,
    TREE_SIZE,
    is_alive,
    wait_for_pids,
    watchers_of,
)
from ticket import bundle, codec, process_guard  # noqa: E402
from ticket.errors import TicketError  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "hardening_processes.md"
FAKE_SUPERLINK = """#!{python}
import os, socket, subprocess, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen()
with open(os.environ["TREE_PIDS"], "a") as f:
    f.write(f"{{os.getpid()}}\\n")
subprocess.Popen([sys.executable, {tree!r}, os.environ["TREE_PIDS"]])
time.sleep(600)
"""
FAKE_SUPERNODE = """#!{python}
import os, sys
os.execv(sys.executable, [sys.executable, {tree!r}, os.environ["TREE_PIDS"]])
"""
LOOPBACK = """
from pathlib import Path
from loopback.launcher import Loopback
fleet = Loopback(Path({work!r}), Path({work!r}), [{{}}, {{}}], bin_dir=Path({bin!r}))
"""


# -- processes -------------------------------------------------------------------------------


def _fake_bin(work: Path) -> tuple[Path, Path]:
    tree = work / "fake_tree.py"
    tree.write_text(FAKE_TREE)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for name, text in (("flower-superlink", FAKE_SUPERLINK), ("flower-supernode", FAKE_SUPERNODE)):
        script = bin_dir / name
        script.write_text(text.format(python=sys.executable, tree=str(tree)))
        script.chmod(0o755)
    return tree, bin_dir


def _launchers(work: Path) -> dict[str, tuple[list[str], int]]:
    """label -> (the launcher's command, how many tree processes it starts)."""
    tree, bin_dir = _fake_bin(work)
    loopback = LOOPBACK.format(work=str(work / "loopback"), bin=str(bin_dir))
    node = f"[sys.executable, {str(tree)!r}, os.environ['TREE_PIDS']]"
    suite = work / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_fleet.py").write_text(
        "import time\nimport pytest\n" + loopback + "@pytest.fixture\n"
        "def running():\n    with fleet:\n        yield fleet\n"
        "def test_held_up(running):\n    time.sleep(600)\n"
    )
    python = [sys.executable, "-c"]
    return {
        "Loopback (SuperLink + 2 SuperNodes)": (
            [*python, loopback + "fleet.start()\nimport time; time.sleep(600)\n"],
            1 + 3 * TREE_SIZE,
        ),
        "edge-daemon's NodeSupervisor": (
            [
                *python,
                "import os, sys, time\nfrom pathlib import Path\n"
                "from edge_daemon.config import SupervisorConfig\n"
                "from edge_daemon.supervisor import NodeSupervisor\n"
                f"n = NodeSupervisor({node}, {{}}, Path({str(work / 'node.log')!r}),"
                " SupervisorConfig())\n"
                "n.want(True); n.tick(0.0); time.sleep(600)\n",
            ],
            TREE_SIZE,
        ),
        "fleet-server's SuperLink spawn": (
            [
                *python,
                "import os, sys, time\nfrom pathlib import Path\n"
                "from server.superlink import spawn\n"
                f"spawn({node}, log_path=Path({str(work / 'sl.log')!r}), env=os.environ,"
                f" cwd=Path({str(work)!r}))\ntime.sleep(600)\n",
            ],
            TREE_SIZE,
        ),
        "pytest holding a Loopback fixture": (
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
            1 + 3 * TREE_SIZE,
        ),
    }


def kill_once(command: list[str], count: int, work: Path) -> tuple[int, float, int]:
    """(processes in the trees and watchers, seconds until all were gone, how many were left)."""
    pids_file = work / f"pids-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TREE_PIDS": str(pids_file)}
    launcher = subprocess.Popen(
        command, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    tree: list[int] = []
    try:
        tree = wait_for_pids(pids_file, count, timeout_s=60.0)
        time.sleep(0.5)  # the watchers' first look at the trees
        everything = [*tree, *watchers_of(tree)]
        launcher.kill()
        killed_at = time.monotonic()
        launcher.wait()
        deadline = killed_at + 15.0
        while any(is_alive(pid) for pid in everything) and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.monotonic() - killed_at
        return len(everything), took, sum(is_alive(pid) for pid in everything)
    finally:
        launcher.kill()
        for pid in tree:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


def watcher_cost(repeats: int) -> tuple[float, float]:
    """(median ms `spawn` takes beyond a plain Popen, a watcher's RSS in MiB)."""
    extra_ms, rss = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        plain = subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(5)"])
        plain_s = time.perf_counter() - began
        began = time.perf_counter()
        watched = process_guard.spawn([sys.executable, "-S", "-c", "import time; time.sleep(5)"])
        watched_s = time.perf_counter() - began
        extra_ms.append(1000 * (watched_s - plain_s))
        watcher = psutil.Process(watchers_of([watched.pid])[0])
        rss.append(watcher.memory_info().rss / 2**20)
        for popen in (plain, watched):
            popen.kill()
            popen.wait()
    return statistics.median(extra_ms), statistics.median(rss)


# -- inputs ----------------------------------------------------------------------------------


def _refused(
    action: Callable[[], object], errors: tuple[type[Exception], ...]
) -> tuple[float, str]:
    began = time.perf_counter()
    try:
        action()
    except errors as error:
        return time.perf_counter() - began, str(error)
    raise SystemExit(f"accepted wrongly: {action}")


def input_rows(work: Path) -> list[tuple[str, str, float, str]]:
    """(input, size, seconds to refuse, the error) per hostile input."""
    rows = []
    big_yaml = work / "big.yaml"
    with big_yaml.open("w") as out:  # a real 60 MB file, as an operator's mistake would be
        line = "# " + "x" * 97 + "\n"
        out.write(line * (60_000_000 // len(line)))
    brackets = work / "brackets.yaml"
    brackets.write_text("[" * 100_000)
    for name, load, error in (
        ("daemon.yaml", daemon_config.load_config, daemon_config.ConfigError),
        ("server.yaml", server_config.load_config, server_config.ConfigError),
    ):
        for path, size in ((big_yaml, "60 MB"), (brackets, "100,000 `[`")):
            took, message = _refused(lambda p=path, f=load: f(p), (error,))
            rows.append((name, size, took, message))
    schema = SCHEMAS["heart-uci"]()
    big_csv = work / "readings.csv"
    with big_csv.open("wb") as out:  # sparse: the size is refused before a byte is read
        out.truncate(CsvLimits().max_bytes + 1)
    rows.append(
        (
            "readings CSV",
            "64 MiB + 1 B",
            *_refused(lambda: read_csv(big_csv, schema), (IngestError,)),
        )
    )
    long_csv = work / "long.csv"
    long_csv.write_text("age," + "x," * 5_000_000 + "\n")  # short fields: the record's limit
    rows.append(
        (
            "readings CSV",
            "one 10 MB record",
            *_refused(lambda: read_csv(long_csv, schema), (IngestError,)),
        )
    )
    big_ticket = work / "big.ticket"
    with big_ticket.open("wb") as out:
        out.write(bundle.MAGIC)
        out.truncate(100_000_000)
    rows.append(
        ("ticket file", "100 MB", *_refused(lambda: bundle.read_ticket(big_ticket), (TicketError,)))
    )
    huge = bundle.MAGIC + struct.pack("<HI", 1, 0) + struct.pack("<I", 70_000) + b"[" * 70_000
    rows.append(
        (
            "ticket trailer",
            "70,000 `[`",
            *_refused(lambda: bundle.decode_ticket(huge), (TicketError,)),
        )
    )
    ticket_id = "0" * 64
    message = codec.encode_vector(
        np.full(1000, 0.5, dtype=np.float32),
        kind=codec.Kind.UPDATE,
        ticket_id=ticket_id,
        round=1,
        dtype="float32",
    )
    padded = message + bytes(1 << 20)
    decode = lambda: codec.decode_vector(  # noqa: E731
        padded, kind=codec.Kind.UPDATE, ticket_id=ticket_id, round=1, length=1000
    )
    rows.append(("update message", "1,000 values + 1 MiB", *_refused(decode, (codec.CodecError,))))
    return rows


# -- report ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    command = "python bench/hardening_processes.py" + (
        f" --repeats {args.repeats}" if args.repeats != 3 else ""
    )
    with tempfile.TemporaryDirectory(prefix="hardening-") as temporary:
        work = Path(temporary)
        process_rows = []
        for label, (launcher, count) in _launchers(work).items():
            runs = [kill_once(launcher, count, work) for _ in range(args.repeats)]
            process_rows.append(
                (
                    label,
                    runs[0][0],
                    statistics.median(r[1] for r in runs),
                    max(r[1] for r in runs),
                    sum(r[2] for r in runs),
                )
            )
        extra_ms, rss_mib = watcher_cost(args.repeats)
        inputs = input_rows(work)
    lines = [
        "# Hardening (issue 12)",
        "",
        f"Made by `{command}` on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}); {args.repeats} runs each.",
        "",
        "## Processes: SIGKILL of the launcher (issue12-procs)",
        "",
        "Every process tree is started by `ticket.process_guard.spawn`: its own process group,",
        "and a watcher that kills the tree once the launcher is gone. Processes: the trees'",
        "(each fake node with a child in its own session, as the SuperLink's SuperExec, and a",
        "grouped child with a grandchild) plus one watcher per tree.",
        "",
        "| launcher killed with -9 | processes | all gone after (median) | (max) "
        "| left after 15 s |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, count, median_s, max_s, left in process_rows:
        lines.append(
            f"| {label} | {count} | {median_s * 1000:.0f} ms | {max_s * 1000:.0f} ms | {left} |"
        )
    lines += [
        "",
        f"A watcher costs {extra_ms:.0f} ms per `spawn` (beyond a plain Popen) and "
        f"{rss_mib:.1f} MiB of resident memory while its tree runs.",
        "",
        "## Input limits (issue12-procs)",
        "",
        "| input | size | refused in | error |",
        "|---|---|---:|---|",
    ]
    for name, size, took, message in inputs:
        shown = message.replace(str(ROOT), ".").replace("|", "\\|")
        shown = shown if len(shown) <= 140 else shown[:137] + "..."
        lines.append(f"| {name} | {size} | {took * 1000:.1f} ms | {_short_paths(shown)} |")
    lines.append("")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {RESULTS}", file=sys.stderr)


def _short_paths(text: str) -> str:
    """Temporary directories out of the error texts: the file's name is what matters."""
    parts = []
    for word in text.split(" "):
        parts.append(
            Path(word.rstrip(":")).name + (":" if word.endswith(":") else "")
            if "/" in word
            else word
        )
    return " ".join(parts)


if __name__ == "__main__":
    if not process_guard.is_supported():
        raise SystemExit("bench/hardening_processes.py needs Linux (/proc)")
    main()
