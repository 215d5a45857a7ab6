"""A launcher killed with SIGKILL mid-run leaves no Flower process behind: the SuperLink, its
SuperExec (in a session of its own) and ServerApp, the SuperNodes with their SuperExecs and
ClientApps, and `flwr run`, all real, on loopback."""

import contextlib
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.process_tree import env, survivors, wait_for_pids, watchers_of

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = """
from pathlib import Path
from loopback.demo import heart_node_configs, run_config
from loopback.launcher import Loopback
from tests.inprocess import find_ticket

work = Path({work!r})
ticket = find_ticket(work / "heart.ticket", density=0.1)
fleet = Loopback(work / "loopback", Path({root!r}), heart_node_configs(ticket, 2), grace_s=5.0)
config = run_config(ticket, run_dir=work / "run", num_rounds=100, min_nodes=2,
                    round_timeout_s=60.0, fraction_evaluate=0.0)

def mark(server_round: int) -> None:
    if server_round == 2:  # mid-run: the ServerApp runs, ClientApps come and go
        (work / "mark").write_text("0\\n")

fleet.start()
fleet.run(config, timeout_s=600.0, on_round=mark)
"""


@pytest.mark.slow
def test_a_launcher_killed_mid_run_leaves_no_flower_process(tmp_path: Path) -> None:
    code = LAUNCHER.format(work=str(tmp_path), root=str(ROOT))
    with (tmp_path / "launcher.log").open("wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env(), stdout=log, stderr=log
        )
    tree: list[int] = []
    try:
        wait_for_pids(tmp_path / "mark", 1, timeout_s=400)
        processes = psutil.Process(launcher.pid).children(recursive=True)
        tree = [process.pid for process in processes]
        names = " ".join(_command(process) for process in processes)
        assert "flower-superexec" in names and "flwr-serverapp" in names, names
        watchers = watchers_of(tree)
        assert len(watchers) >= 4  # SuperLink, 2 SuperNodes, flwr run

        launcher.kill()
        launcher.wait(timeout=10)

        assert survivors([*tree, *watchers], timeout_s=30) == []
    finally:
        launcher.kill()
        for pid in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


def _command(process: psutil.Process) -> str:
    """A process's program and first argument; "" for one that has exited (a zombie too)."""
    try:
        return " ".join(process.cmdline()[:2])
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""
