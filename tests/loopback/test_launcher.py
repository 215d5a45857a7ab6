"""The loopback launcher without Flower: config strings, round timing, and stopping every process.

Fake `flower-superlink` / `flower-supernode` executables stand in for Flower's, each starting a
child that ignores SIGTERM, so stopping must reach whole process trees and escalate to SIGKILL.
"""

import math
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from loopback.demo import all_rounds_completed, format_table, round_rows
from loopback.launcher import Loopback, LoopbackError, RunOutcome, _round_walls, flower_name
from tests.process_tree import (
    TREE_SIZE,
    env,
    kill_all,
    start_launcher,
    survivors,
    wait_for_pids,
    watchers_of,
    write_fake_tree,
)
from ticket.config_text import toml_values

FAKE_SUPERLINK = """#!{python}
import socket, subprocess, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen()
subprocess.Popen([sys.executable, "-c", {stubborn!r}])
time.sleep(600)
"""
FAKE_SUPERNODE = """#!{python}
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {stubborn!r}])
time.sleep(600)
"""
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def _fake_bin(tmp_path: Path, supernode: str = FAKE_SUPERNODE) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("flower-superlink", FAKE_SUPERLINK), ("flower-supernode", supernode)):
        script = bin_dir / name
        script.write_text(text.format(python=sys.executable, stubborn=STUBBORN))
        script.chmod(0o755)
    return bin_dir


def test_config_values_are_toml() -> None:
    text = toml_values({"ticket-path": "/a b/t.ticket", "allow-unsigned": True, "n": 4, "lr": 0.5})
    assert text == 'ticket-path="/a b/t.ticket" allow-unsigned=true n=4 lr=0.5'


def test_a_round_lasts_until_the_next_one_starts() -> None:
    walls = _round_walls({"1": 10.0, "2": 25.0, "3": 37.0, "end": 50.0})
    assert walls == {1: 15.0, 2: 12.0, 3: 13.0}
    assert math.isnan(_round_walls({"1": 10.0})[1])  # the run never reached its end


def _log_line(server_round: int, **changes: object) -> dict[str, object]:
    line: dict[str, object] = {
        "round": server_round,
        "participants": [7, 8],
        "failures": {},
        "rejected": {"9": "CodecError: wrong round"},
        "bytes": {"up": {"7": 10, "8": 10, "9": 10}, "down": {"7": 20, "8": 20, "9": 20},
                  "up_total": 30, "down_total": 60},
        "train": {"loss": 0.4},
        "federated_eval": {"loss": 0.5, "accuracy": 0.75},
        "server_eval": {"loss": 0.45, "accuracy": 0.8, "auc": 0.9, "examples": 277},
    }  # fmt: skip
    return {**line, **changes}


def test_rounds_table_and_completion() -> None:
    outcome = RunOutcome(1, "finished:completed", 3.0, [_log_line(1)], {1: 2.5})
    rows = round_rows(outcome)
    assert rows[0]["participants"] == 2 and rows[0]["failures"] == 1
    assert rows[0]["bytes-up"] == 10 and rows[0]["bytes-down"] == 20  # per node
    assert rows[0]["server-auc"] == 0.9
    assert "0.750" in format_table(rows) and "0.900" in format_table(rows)
    assert all_rounds_completed(outcome, 1)
    assert not all_rounds_completed(outcome, 2)
    assert not all_rounds_completed(RunOutcome(1, "finished:failed", 3.0, [_log_line(1)]), 1)
    nobody = RunOutcome(1, "finished:completed", 3.0, [_log_line(1, participants=[])])
    assert not all_rounds_completed(nobody, 1)


def test_a_round_without_evaluation_shows_nan() -> None:
    line = _log_line(1, federated_eval=None, server_eval=None)
    row = round_rows(RunOutcome(1, "finished:completed", 3.0, [line]))[0]
    assert math.isnan(row["accuracy"]) and math.isnan(row["server-accuracy"])
    assert "nan" in format_table([row])


def test_flower_name_reads_a_script_and_skips_an_exited_child_a_zombie_included(
    tmp_path: Path,
) -> None:
    script = tmp_path / "flower-supernode"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    child = subprocess.Popen([sys.executable, str(script)])
    try:
        watched = psutil.Process(child.pid)
        deadline = time.monotonic() + 10
        while str(script) not in watched.cmdline():  # forked, not yet exec'd: pytest's cmdline
            assert time.monotonic() < deadline, "the child never ran its script"
            time.sleep(0.01)
        assert flower_name(watched) == "flower-supernode"
        child.kill()
        deadline = time.monotonic() + 10
        while watched.status() != psutil.STATUS_ZOMBIE:  # not reaped: Popen.wait not called
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert flower_name(watched) == ""
    finally:
        child.kill()
        child.wait()
    assert flower_name(watched) == ""  # reaped: gone


def test_every_started_process_and_its_children_are_stopped(tmp_path: Path) -> None:
    fleet = Loopback(
        tmp_path / "work", tmp_path, [{"partition-id": 0}, {"partition-id": 1}],
        bin_dir=_fake_bin(tmp_path), grace_s=1.0, sample_every_s=0.2,
    )  # fmt: skip
    with fleet:
        deadline = time.monotonic() + 30
        while len(fleet.seen) < 6 and time.monotonic() < deadline:  # 3 scripts, 3 children
            time.sleep(0.2)
    assert len(fleet.seen) >= 6
    assert fleet.alive() == []
    assert (tmp_path / "work" / "logs" / "supernode-1.log").exists()
    assert 'address = "127.0.0.1:' in (tmp_path / "work" / "cli" / "config.toml").read_text()


def test_an_exception_inside_the_block_still_stops_everything(tmp_path: Path) -> None:
    fleet = Loopback(tmp_path / "work", tmp_path, [{}], bin_dir=_fake_bin(tmp_path), grace_s=1.0)
    with pytest.raises(RuntimeError, match="boom"), fleet:
        raise RuntimeError("boom")
    assert fleet.seen and fleet.alive() == []


def test_a_process_that_dies_at_start_is_reported(tmp_path: Path) -> None:
    fleet = Loopback(
        tmp_path / "work", tmp_path, [{}],
        bin_dir=_fake_bin(tmp_path, supernode="#!{python}\nimport sys\nsys.exit(3)\n"),
        grace_s=1.0,
    )  # fmt: skip
    with fleet:
        deadline = time.monotonic() + 30
        while fleet.started[-1].popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(LoopbackError, match="supernode-0 exited with status 3"):
            fleet._check_alive()
    assert fleet.alive() == []


# Fakes whose trees are those of tests/process_tree.py; every process appends its pid to $TREE_PIDS.
TREE_SUPERLINK = """#!{python}
import os, socket, subprocess, sys, time
with open(os.environ["TREE_PIDS"], "a") as f:
    f.write(f"{{os.getpid()}}\\n")
port = int(sys.argv[sys.argv.index("--port") + 1])
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen()
subprocess.Popen([sys.executable, {tree!r}, os.environ["TREE_PIDS"]])
time.sleep(600)
"""
TREE_SUPERNODE = """#!{python}
import os, sys
os.execv(sys.executable, [sys.executable, {tree!r}, os.environ["TREE_PIDS"]])
"""
TREE_PROCESSES = 1 + 3 * TREE_SIZE  # the SuperLink, its tree, and two SuperNodes' trees
FLEET = """
from pathlib import Path
from loopback.launcher import Loopback
fleet = Loopback(Path({work!r}), Path({work!r}), [{{}}, {{}}], bin_dir=Path({bin!r}))
"""


def _tree_bin(tmp_path: Path) -> Path:
    tree = write_fake_tree(tmp_path)
    bin_dir = tmp_path / "tree-bin"
    bin_dir.mkdir()
    for name, text in (("flower-superlink", TREE_SUPERLINK), ("flower-supernode", TREE_SUPERNODE)):
        script = bin_dir / name
        script.write_text(text.format(python=sys.executable, tree=str(tree)))
        script.chmod(0o755)
    return bin_dir


def _fleet_code(tmp_path: Path) -> str:
    return FLEET.format(work=str(tmp_path / "work"), bin=str(_tree_bin(tmp_path)))


def test_a_launcher_killed_with_sigkill_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("TREE_PIDS", str(pids_file))
    launcher = start_launcher(
        _fleet_code(tmp_path) + "fleet.start()\nimport time; time.sleep(600)\n",
        tmp_path / "launcher.log",
    )
    tree: list[int] = []
    try:
        tree = wait_for_pids(pids_file, TREE_PROCESSES, timeout_s=60)
        watchers = watchers_of(tree)
        assert len(watchers) == 3

        launcher.kill()
        launcher.wait(timeout=10)

        assert survivors([*tree, *watchers]) == []
    finally:
        launcher.kill()
        kill_all(tree)


def test_a_fixtures_processes_die_with_a_killed_pytest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("TREE_PIDS", str(pids_file))
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_fleet.py").write_text(
        "import time\n"
        "import pytest\n" + _fleet_code(tmp_path) + "@pytest.fixture\n"
        "def running():\n"
        "    with fleet:\n"
        "        yield fleet\n"
        "def test_held_up(running):\n"
        "    time.sleep(600)  # as a hung round, until the CI kills pytest\n"
    )
    with (tmp_path / "pytest.log").open("wb") as log:
        pytest_run = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
            cwd=suite, env=env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    tree: list[int] = []
    try:
        tree = wait_for_pids(pids_file, TREE_PROCESSES, timeout_s=60)
        watchers = watchers_of(tree)

        pytest_run.kill()  # no fixture teardown runs
        pytest_run.wait(timeout=10)

        assert survivors([*tree, *watchers]) == []
    finally:
        pytest_run.kill()
        kill_all(tree)
