"""The idle daemon's modules load without torch (the issue's < 40 MB idle RSS depends on it)."""

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
