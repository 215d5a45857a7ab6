"""Durable daemon state: round trip, fresh start, corrupt files reported, atomic locked writes."""

import json
import multiprocessing
import os
import signal
import stat
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_daemon import state as state_module
from edge_daemon.paths import DaemonPaths
from edge_daemon.state import DaemonState, StateError, load_state, save_state, update_state
from ticket import process_guard

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2025, 6, 1, 23, 15, tzinfo=timezone(timedelta(hours=2)))


def test_a_missing_file_is_a_fresh_state(tmp_path: Path) -> None:
    assert load_state(tmp_path / "state.json") == DaemonState()


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = (
        DaemonState()
        .with_round(at=AT, bytes_sent=1200, metrics={"train-loss": 0.5, "num-examples": 40})
        .with_round(at=AT + timedelta(hours=1), bytes_sent=800, metrics={"train-loss": 0.25})
        .with_ticket("sha256:aa")
        .with_ticket("sha256:bb")
        .with_ticket("sha256:aa")
    )

    save_state(path, state)
    loaded = load_state(path)

    assert loaded == state
    assert loaded.rounds_joined == 2
    assert loaded.bytes_sent == 2000
    assert loaded.last_participation == AT + timedelta(hours=1)
    assert loaded.last_metrics == {"train-loss": 0.25}
    assert loaded.ticket_ids == ("sha256:aa", "sha256:bb")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_diverged_loss_is_stored_as_null_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = DaemonState().with_round(at=AT, bytes_sent=0, metrics={"train-loss": float("nan")})

    save_state(path, state)

    assert json.loads(path.read_text())["last_metrics"] == {"train-loss": None}
    assert load_state(path).last_metrics == {"train-loss": None}


def test_rounds_need_an_aware_time_and_non_negative_bytes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DaemonState().with_round(at=datetime(2025, 1, 1), bytes_sent=0, metrics={})
    with pytest.raises(ValueError, match="bytes_sent"):
        DaemonState().with_round(at=AT, bytes_sent=-1, metrics={})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"rounds_joined": ', "Expecting value"),
        ("[]", "exactly the keys"),
        ("", "Expecting value"),
    ],
)
def test_a_corrupt_file_is_reported_with_its_path(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)

    with pytest.raises(StateError, match=reason) as caught:
        load_state(path)

    assert str(path) in str(caught.value)
    assert "move it aside" in str(caught.value)
    assert path.read_text() == text  # never silently replaced


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("version", 3, "this daemon reads 1 and 2"),
        ("bytes_received", -5, "bytes_received"),
        ("last_round", {"run_id": 1, "round": "3", "ticket_id": "x"}, "last_round"),
        ("format", "other", "format"),
        ("rounds_joined", -1, "rounds_joined"),
        ("bytes_sent", 1.5, "bytes_sent"),
        ("last_participation", "2025-06-01T23:15:00", "timezone"),
        ("last_participation", "yesterday", "last_participation"),
        ("last_metrics", {"loss": "low"}, "last_metrics"),
        ("ticket_ids", [1], "ticket_ids"),
    ],
)
def test_each_ill_typed_key_is_named(tmp_path: Path, key: str, value: object, reason: str) -> None:
    path = tmp_path / "state.json"
    data = DaemonState().with_round(at=AT, bytes_sent=1, metrics={"loss": 1.0}).to_json()
    data[key] = value
    path.write_text(json.dumps(data))

    with pytest.raises(StateError, match=reason):
        load_state(path)


def test_a_crash_mid_write_leaves_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    before = DaemonState().with_round(at=AT, bytes_sent=10, metrics={})
    save_state(path, before)

    def crash(*_: object) -> None:
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        save_state(path, before.with_round(at=AT, bytes_sent=99, metrics={}))
    monkeypatch.undo()

    assert load_state(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no stray temp file


def _add_rounds(path: Path, count: int) -> None:
    for _ in range(count):
        update_state(path, lambda s: s.with_round(at=datetime.now(UTC), bytes_sent=1, metrics={}))


def test_concurrent_updates_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_rounds, args=(path, 25)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert [worker.exitcode for worker in workers] == [0, 0]
    final = load_state(path)
    assert (final.rounds_joined, final.bytes_sent) == (50, 50)


def test_update_returns_and_stores_the_changed_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"

    returned = update_state(path, lambda s: s.with_ticket("sha256:cc"))

    assert returned.ticket_ids == ("sha256:cc",)
    assert load_state(path) == returned
    assert json.loads(path.read_text())["format"] == state_module.FORMAT


def test_paths_live_under_the_state_directory(tmp_path: Path) -> None:
    paths = DaemonPaths(tmp_path)
    named = [paths.state_file, paths.readings_db, paths.tickets_dir, paths.flwr_home]
    assert all(path.parent == tmp_path for path in named)
    assert len(set(named)) == 4


def test_state_survives_kill_9_of_a_writer_mid_stream(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    writer = (
        "from datetime import UTC, datetime\n"
        "from pathlib import Path\n"
        "from edge_daemon.state import update_state\n"
        "while True:\n"
        f"    update_state(Path({str(path)!r}), lambda s: s.with_round(\n"
        "        at=datetime.now(UTC), bytes_sent=100, metrics={'train-loss': 0.5}))\n"
    )
    process = process_guard.spawn([sys.executable, "-c", writer], cwd=ROOT)  # dies with us
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        not path.exists() or load_state(path).rounds_joined < 20
    ):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()

    state = load_state(path)  # whole and parseable, never torn

    assert state.rounds_joined >= 20
    assert state.bytes_sent == 100 * state.rounds_joined


def test_a_round_records_bytes_both_ways_and_which_run_round_and_ticket(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = DaemonState().with_round(
        at=AT, bytes_sent=10, metrics={}, bytes_received=30, run_id=7, server_round=3,
        ticket_id="a" * 64,
    )  # fmt: skip
    save_state(path, state.with_round(at=AT, bytes_sent=5, metrics={}, bytes_received=6))

    loaded = load_state(path)
    assert (loaded.bytes_sent, loaded.bytes_received) == (15, 36)
    assert loaded.last_round == {"run_id": 7, "round": 3, "ticket_id": "a" * 64}


def test_a_version_1_state_file_is_read_with_nothing_received_yet(tmp_path: Path) -> None:
    data = DaemonState().with_round(at=AT, bytes_sent=9, metrics={}).to_json()
    del data["bytes_received"], data["last_round"]
    data["version"] = 1
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))

    loaded = load_state(path)
    assert (loaded.rounds_joined, loaded.bytes_sent, loaded.bytes_received) == (1, 9, 0)
    assert loaded.last_round is None
