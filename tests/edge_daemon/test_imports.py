"""The idle daemon's modules load without torch (the issue's < 40 MB idle RSS depends on it)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IDLE_MODULES = [
    "edge_daemon.cli",
    "edge_daemon.daemon",
    "edge_daemon.supervisor",
    "edge_daemon.config",
    "edge_daemon.eligibility",
    "edge_daemon.paths",
    "edge_daemon.probe",
    "edge_daemon.readings",
    "edge_daemon.state",
]


def _loaded_after(code: str) -> set[str]:
    # A fresh interpreter: this test process has torch loaded already (tests/conftest.py).
    script = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(completed.stdout.split())


@pytest.mark.parametrize("module", IDLE_MODULES)
def test_importing_does_not_load_torch_or_numpy(module: str) -> None:
    loaded = _loaded_after(f"import {module}")

    assert module in loaded  # the probe itself works
    assert not {"torch", "numpy", "flwr"} & loaded


def test_opening_the_store_and_probing_do_not_load_torch(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\n"
        "from edge_daemon.readings import ReadingsStore\n"
        "from edge_daemon.probe import PsutilProbe\n"
        f"store = ReadingsStore(Path({str(tmp_path / 'r.sqlite3')!r}), retention_days=1)\n"
        "store.apply_retention(); store.count(); store.rows(); store.close()\n"
        "PsutilProbe(1.0).snapshot()\n"
    )
    assert "torch" not in _loaded_after(code)


def test_ingesting_readings_does_not_load_torch(tmp_path: Path) -> None:
    from tests.edge_daemon.test_readings import HEADER, ROWS

    readings = tmp_path / "readings.csv"
    readings.write_text("\n".join([HEADER, *ROWS]) + "\n")
    code = (
        "from pathlib import Path\n"
        "from edge_daemon.readings import ReadingsStore\n"
        f"store = ReadingsStore(Path({str(tmp_path / 'r.sqlite3')!r}))\n"
        f"assert store.ingest_csv(Path({str(readings)!r})).rows_added == {len(ROWS)}\n"
    )
    assert "torch" not in _loaded_after(code)


def test_the_idle_daemon_loop_never_loads_torch(tmp_path: Path) -> None:
    # The real loop for 3 s on an ineligible device (offline), real store and retention timer
    # included; then what the interpreter holds, by module and by mapped file.
    probe = tmp_path / "conditions.json"
    probe.write_text('{"on_power": true, "network": "offline"}')
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nfleet_key: {tmp_path / 'fleet.pub'}\n"
        "server:\n  address: 127.0.0.1:9092\n  insecure: true\n"
        "data:\n  retention_days: 30\n"
        f"eligibility:\n  probe_interval_s: 0.5\nprobe_file: {probe}\n"
    )
    code = (
        "import threading\n"
        "from edge_daemon.config import load_config\n"
        "from edge_daemon.daemon import run_daemon\n"
        "stop = threading.Event()\n"
        "threading.Timer(3.0, stop.set).start()\n"
        f"assert run_daemon(load_config({str(config)!r}), stop=stop) == 0\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('torch-mapped' if '/torch/' in maps else 'no-torch-mapped')\n"
    )

    loaded = _loaded_after(code)

    assert "edge_daemon.daemon" in loaded and "no-torch-mapped" in loaded
    assert not {"torch", "numpy", "flwr"} & loaded
    assert '"node_running": false' in (tmp_path / "state" / "status.json").read_text()


def test_the_clientapp_loads_without_torch() -> None:
    loaded = _loaded_after("import edge_daemon.client_app")

    assert "edge_daemon.client_app" in loaded and "ticket.numpy_mlp" in loaded
    assert "torch" not in loaded


def test_a_devices_train_evaluate_and_secure_round_never_load_torch(tmp_path: Path) -> None:
    # A ClientApp process per message in production; here one interpreter runs them all, so
    # torch stays out only if no handler's path imports it.
    from edge_daemon.readings import ReadingsStore
    from loopback.devices import hospital_csv
    from tests.inprocess import find_ticket

    ticket = find_ticket(tmp_path / "t.ticket", density=0.5)
    databases = []
    for hospital in ("Hungary", "Switzerland", "VA Long Beach"):
        database = tmp_path / f"{hospital}.sqlite3"
        with ReadingsStore(database) as store:
            store.ingest_csv(hospital_csv(hospital, tmp_path / f"{hospital}.csv", limit=40))
        databases.append(str(database))
    command = [sys.executable, "-m", "tests.edge_daemon.torchless_round", str(ticket), *databases]

    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(completed.stdout.splitlines()[-1])

    assert result["torch"] is False
    assert len(result["accuracies"]) == 3
    # The secure mean is the plain replies' weighted mean, up to quantisation (2 * clip / 2^14
    # per node); the training moved the weights by far more than that.
    assert result["secure_error"] < 1e-3 < result["largest_update"]
