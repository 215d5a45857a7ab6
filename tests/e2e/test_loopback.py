"""The ServerApp and ClientApp as a real deployment: a SuperLink and two SuperNodes on loopback."""

from pathlib import Path

import pytest

from deploy.demo import all_rounds_completed, heart_node_configs, round_rows, run_config
from deploy.loopback import Loopback
from tests.inprocess import find_ticket

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_rounds_on_two_supernodes_then_every_process_is_gone(tmp_path: Path) -> None:
    ticket = find_ticket(tmp_path / "heart.ticket", density=0.1)
    fleet = Loopback(tmp_path / "loopback", APP_DIR, heart_node_configs(ticket, 2), grace_s=5.0)
    with fleet:
        outcome = fleet.run(
            run_config(ticket, run_dir=tmp_path / "run", rounds=2, nodes=2),
            timeout_s=300.0,
        )

    assert outcome.completed, (outcome.status, (tmp_path / "loopback" / "logs").iterdir())
    rows = round_rows(outcome)
    assert [row["round"] for row in rows] == [1, 2]
    assert [row["participants"] for row in rows] == [2, 2]
    assert [row["failures"] for row in rows] == [0, 0]
    assert all(row["bytes-up"] > 0 and row["bytes-down"] > 0 for row in rows)
    assert all_rounds_completed(outcome, 2)
    # Every process we started, and every one they started (superexec, serverapp, clientapp).
    labels = {process.label for process in fleet.seen.values()}
    assert {"superlink", "supernode-0", "supernode-1", "flwr-run"} <= labels
    assert any(label.endswith("flwr-clientapp") for label in labels)
    assert fleet.alive() == []
    # The ServerApp process checkpointed and logged both rounds, with server-side evaluation.
    lines = (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert (tmp_path / "run" / "rounds.png").read_bytes()[:4] == b"\x89PNG"
