"""The ServerApp and ClientApp as a real deployment (a SuperLink and three SuperNodes as
processes on loopback), with faults: a device lost mid-round, then the ServerApp killed and
resumed; afterwards every process started, and every one they started, is gone."""

from pathlib import Path

import pytest

from loopback.demo import heart_node_configs, run_config
from loopback.launcher import Loopback
from server.strategy import NO_REPLY
from tests.inprocess import find_ticket

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_lost_node_fails_its_round_and_a_killed_serverapp_resumes(tmp_path: Path) -> None:
    ticket = find_ticket(tmp_path / "heart.ticket", density=0.1)
    fleet = Loopback(tmp_path / "loopback", APP_DIR, heart_node_configs(ticket, 3), grace_s=5.0)
    config = run_config(
        ticket,
        run_dir=tmp_path / "run",
        num_rounds=4,
        min_nodes=2,  # the round survives with 2 of its 3 nodes
        round_timeout_s=30.0,
        fraction_evaluate=0.0,
    )
    killed: list[int] = []

    def inject(server_round: int) -> None:
        if server_round == 2:  # sampled, then gone: its instruction is never answered
            fleet.kill_node(2)
        if server_round == 3:  # rounds 1-2 are checkpointed; round 3 is lost with the process
            killed.append(fleet.kill_serverapp())

    checkpoints = tmp_path / "run" / "checkpoints"
    with fleet:
        first = fleet.run(config, timeout_s=400.0, on_round=inject)
        kept = {path.name: path.read_bytes() for path in checkpoints.glob("*.ckpt")}
        second = fleet.run(config, timeout_s=300.0)

    assert killed and first.status == "finished:failed"
    assert [line["round"] for line in first.rounds] == [1, 2]
    assert second.completed
    # Every round exactly once, across both attempts.
    assert [line["round"] for line in second.rounds] == [1, 2, 3, 4]
    # Resumed, not restarted: a fresh run would also end with rounds 1-4, but it would have
    # rerun rounds 1-2 (new lines, a later finished_at, new checkpoints) and logged four
    # Flower rounds instead of two. The second attempt ran rounds 3 and 4 only.
    assert second.rounds[:2] == first.rounds
    assert {name: (checkpoints / name).read_bytes() for name in kept} == kept
    assert len(kept) == 2 and len(list(checkpoints.glob("*.ckpt"))) == 4
    assert sorted(second.round_wall_s) == [3, 4]
    one, two, *rest = second.rounds
    assert len(one["participants"]) == 3 and one["failures"] == {}
    [(lost, reason)] = two["failures"].items()
    assert reason == NO_REPLY and len(two["participants"]) == 2
    assert lost in two["bytes"]["down"] and lost not in two["bytes"]["up"]
    assert all(int(lost) not in line["participants"] for line in rest)
    assert all(line["server_eval"]["examples"] == 277 for line in second.rounds)
    assert all(line["bytes"]["up_total"] > 0 and line["bytes"]["down_total"] > 0 for line in rest)
    assert (tmp_path / "run" / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    # Every process we started, and every one they started (superexec, serverapp, clientapp).
    labels = {process.label for process in fleet.seen.values()}
    assert {"superlink", "supernode-0", "supernode-1", "supernode-2", "flwr-run"} <= labels
    assert any(label.endswith("flwr-clientapp") for label in labels)
    assert fleet.alive() == []
