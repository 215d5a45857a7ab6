"""Secure aggregation in a real deployment: 4 SuperNodes on loopback, one too slow in a round.

Round management is on (goal 4, reporting deadline 40 s, timeout 90 s): round 1 closes when
all four masked inputs are in. In round 2 one member is frozen (SIGSTOP on its node's whole
process group: a device too slow to answer, still connected as far as the SuperLink knows);
the round closes at its deadline with the three survivors instead of waiting for the slow
device or the timeout, and their sum is exact.
"""

from pathlib import Path

import pytest

from loopback.demo import heart_node_configs, run_config
from loopback.launcher import Loopback
from tests.inprocess import find_ticket

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_node_too_slow_for_its_round_leaves_the_survivors_sum(tmp_path: Path) -> None:
    ticket = find_ticket(tmp_path / "heart.ticket", density=0.1)
    fleet = Loopback(tmp_path / "loopback", APP_DIR, heart_node_configs(ticket, 4), grace_s=5.0)
    config = run_config(
        ticket,
        run_dir=tmp_path / "run",
        num_rounds=2,
        min_nodes=4,  # round 1's key setup waits for all four
        secagg=True,
        round_timeout_s=90.0,
        round_goal=4,
        round_deadline_s=40.0,
        fraction_evaluate=0.0,
    )

    def inject(server_round: int) -> None:
        if server_round == 2:  # a member of round 2 (its shares went out in round 1), frozen
            fleet.pause_node(3)

    with fleet:
        try:
            outcome = fleet.run(config, timeout_s=400.0, on_round=inject)
        finally:
            fleet.resume_node(3)  # so that it stops as asked when the fleet does

    assert outcome.completed
    one, two = outcome.rounds
    assert len(one["participants"]) == 4 and one["failures"] == {}
    assert one["round_trips"] == {"setup": 2, "train": 1, "unmask": 1, "total": 4}
    assert one["secagg"]["aborted"] is None
    # Round 2: the slow node's pairwise masks were removed with its key's shares.
    [(lost, reason)] = two["failures"].items()
    assert reason.startswith("no reply before the round closed (deadline)"), reason
    assert len(two["participants"]) == 3
    assert one["closed"] in {"goal", "all"} and two["closed"] == "deadline"
    assert int(lost) not in two["participants"]
    assert two["secagg"]["aborted"] is None
    assert two["secagg"]["dropped"] == {"mask": [int(lost)]}
    assert two["secagg"]["survivors"] == two["participants"]
    assert two["round_trips"] == {"train": 1, "unmask": 1, "total": 2}
    assert two["server_eval"]["examples"] == 277
    assert fleet.alive() == []
