"""Round goals and deadlines end to end: PackedFedAvg and SecurePackedFedAvg against the real
ClientApp (heart-uci, 4 hospitals, 4 nodes) on a grid whose replies arrive at scripted times of
a fake clock (tests/inprocess.py's ScheduledGrid): nothing waits for real.

The oracle is the plaintext run without the cut-off node: training is seeded by (run seed,
round, node), so the survivors train the same local models either way.
"""

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import FedAvg, Result

from edge_daemon import client_app
from server.deadline_grid import DeadlineGrid
from server.round_policy import FailureHistory, RoundPolicy
from server.run_log import RunLog
from server.secagg_round import SecAggPlan, SecurePackedFedAvg
from server.strategy import PAYLOAD_KEY, PackedFedAvg, RoundPlan
from server.training_run import run_resumable
from tests.inprocess import (
    FakeClock,
    InProcessGrid,
    ScheduledGrid,
    heart_nodes,
    server_identity,
)
from tests.server.test_secagg_round import _dropping, _final
from ticket import wire
from ticket.bundle import Ticket
from ticket.packing import PackLayout
from ticket.secagg.weighting import mean_error_bound, node_weight
from ticket.train_config import TrainConfig
from ticket.wire import SECAGG as SECAGG_KEY

TRAIN = TrainConfig(epochs=1, batch_size=32, lr=1e-3)
SECAGG = SecAggPlan(clip=0.25, levels=2**14, weight_cap=1000)
TIMEOUT = 600.0


def _plan(ticket: Ticket, **changes: int) -> RoundPlan:
    return RoundPlan(ticket_id=ticket.content_id, train=TRAIN, **changes)  # type: ignore[arg-type]


def _initial(ticket: Ticket) -> ArrayRecord:
    return ArrayRecord({PAYLOAD_KEY: Array(PackLayout.from_ticket(ticket).pack(ticket.weights))})


def _scheduled(
    ticket_path: Path, delay: Callable[[Message], float | None]
) -> tuple[DeadlineGrid, FakeClock]:
    clock = FakeClock()
    inner = ScheduledGrid(clock, delay, client_app.app, heart_nodes(ticket_path))
    return DeadlineGrid(inner, clock=clock, sleep=clock.sleep, pull_interval_s=1.0), clock


def _run(strategy: FedAvg, grid: object, ticket: Ticket, rounds: int) -> Result:
    random.seed(0)
    with server_identity():
        return strategy.start(
            grid=grid,  # type: ignore[arg-type]
            initial_arrays=_initial(ticket),
            num_rounds=rounds,
            timeout=TIMEOUT,
        )


def _round_of(message: Message) -> int:
    parts = message.content.config_records.get(SECAGG_KEY)
    if parts is not None:
        return int(parts[wire.ROUND])
    return int(message.content.config_records[wire.CONFIG][wire.SERVER_ROUND])


def test_a_round_closes_at_its_goal_and_counts_the_slow_reply_as_late(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    def delay(message: Message) -> float:  # 101-103: 1, 2, 3 s; 104: 4.5 s in round 1, then 0.5
        node = message.metadata.dst_node_id
        if node == 104:
            return 4.5 if _round_of(message) == 1 else 0.5
        return float(node - 100)

    grid, _ = _scheduled(ticket_path, delay)
    policy = RoundPolicy(goal=3, overselect=1.34, deadline_s=60)  # ceil(4.02): all 4 sampled
    layout = PackLayout.from_ticket(ticket)
    strategy = PackedFedAvg(layout, _plan(ticket), rounds=policy, fraction_evaluate=0.0)

    with server_identity():
        run_resumable(
            strategy,
            grid,
            layout.pack(ticket.weights),
            run_dir=tmp_path / "run",
            num_rounds=4,
            timeout=TIMEOUT,
            plot=False,
        )

    one = strategy.rounds[1]
    assert one.closed == "goal" and sorted(one.accepted) == [101, 102, 103]
    assert one.failures == {104: "no reply before the round closed (goal)"}
    assert sorted(one.bytes_down) == [101, 102, 103, 104]  # over-selected
    assert 0 < one.wall_s < 60
    lines = RunLog(tmp_path / "run" / "rounds.jsonl").read()
    assert [line["closed"] for line in lines] == ["goal"] * 4
    # 104's round-1 reply came during round 2 (at 4.5 s; round 2 ran from 3 s to 5 s); from
    # round 2 on 103 is the slowest, cut off by the goal, and its reply drained a round later.
    late = [(line["round"], entry) for line in lines for entry in line["late"]]
    assert late == [
        (2, {"node": 104, "round": 1, "stage": "train"}),
        (3, {"node": 103, "round": 2, "stage": "train"}),
        (4, {"node": 103, "round": 3, "stage": "train"}),
    ]
    assert lines[1]["participants"] == [101, 102, 104] and lines[1]["failures"] == {
        "103": "no reply before the round closed (goal)"
    }
    # The failure history the run kept is the one a resume rebuilds from the log.
    assert FailureHistory.from_lines(lines) == strategy.history
    assert strategy.history.weight(103) < strategy.history.weight(104) < 1.0

    expected = _run(
        PackedFedAvg(layout, _plan(ticket), fraction_evaluate=0.0),
        InProcessGrid(_dropping(104), heart_nodes(ticket_path)),
        ticket,
        rounds=1,
    )
    assert np.array_equal(
        strategy_first_round(ticket_path, ticket, policy, delay), _final(expected)
    )


def strategy_first_round(
    ticket_path: Path, ticket: Ticket, policy: RoundPolicy, delay: Callable[[Message], float]
) -> np.ndarray:
    grid, _ = _scheduled(ticket_path, delay)
    strategy = PackedFedAvg(
        PackLayout.from_ticket(ticket), _plan(ticket), rounds=policy, fraction_evaluate=0.0
    )
    return _final(_run(strategy, grid, ticket, rounds=1))


def test_at_the_deadline_a_round_closes_with_at_least_min_replies(
    ticket_path: Path, ticket: Ticket
) -> None:
    grid, clock = _scheduled(ticket_path, lambda m: None if m.metadata.dst_node_id == 102 else 5)
    policy = RoundPolicy(goal=4, overselect=1.0, deadline_s=60)
    strategy = PackedFedAvg(
        PackLayout.from_ticket(ticket),
        _plan(ticket, min_replies=2),
        rounds=policy,
        fraction_evaluate=0.0,
    )

    _run(strategy, grid, ticket, rounds=1)

    record = strategy.rounds[1]
    assert record.closed == "deadline" and sorted(record.accepted) == [101, 103, 104]
    assert record.failures == {102: "no reply before the round closed (deadline)"}
    assert 60 <= clock.now < TIMEOUT


def test_goal_zero_waits_for_every_node_as_before(ticket_path: Path, ticket: Ticket) -> None:
    grid, clock = _scheduled(ticket_path, lambda m: 400.0 if m.metadata.dst_node_id == 104 else 1)
    strategy = PackedFedAvg(PackLayout.from_ticket(ticket), _plan(ticket), fraction_evaluate=0.0)

    _run(strategy, grid, ticket, rounds=1)

    record = strategy.rounds[1]
    assert record.closed == "all" and sorted(record.accepted) == [101, 102, 103, 104]
    assert clock.now >= 400


def _steps(message: Message) -> set[str]:
    parts = message.content.config_records.get(SECAGG_KEY)
    return {message.metadata.message_type, *(parts.keys() if parts else ())}


def test_a_secure_round_closed_by_its_deadline_sums_the_survivors_exactly(
    ticket_path: Path, ticket: Ticket
) -> None:
    def delay(message: Message) -> float:
        late_mask = message.metadata.dst_node_id == 103 and wire.MASK_REQUEST in _steps(message)
        if late_mask and _round_of(message) == 1:
            return 100.0  # after round 1's deadline: its masked vector comes too late
        return 50.0 if _round_of(message) == 2 else 1.0  # round 2 slow enough to drain it

    grid, _ = _scheduled(ticket_path, delay)
    policy = RoundPolicy(goal=4, overselect=1.0, deadline_s=60)
    layout = PackLayout.from_ticket(ticket)
    secure = SecurePackedFedAvg(layout, _plan(ticket), SECAGG, rounds=policy, fraction_evaluate=0.0)

    _run(secure, grid, ticket, rounds=2)

    one, two = secure.rounds[1], secure.rounds[2]
    assert one.closed == "deadline"
    assert one.secagg is not None and one.secagg["aborted"] is None
    assert one.secagg["dropped"] == {"mask": [103]}  # unmasked by the others' shares
    assert one.accepted == [101, 102, 104]
    assert one.failures[103] == "no reply before the round closed (deadline) (train)"
    assert two.late == [{"node": 103, "round": 1, "stage": "train"}]
    assert two.secagg is not None and 103 not in two.secagg["members"]  # its advert came late

    oracle = _run(
        PackedFedAvg(layout, _plan(ticket), fraction_evaluate=0.0),
        InProcessGrid(_dropping(103), heart_nodes(ticket_path)),
        ticket,
        rounds=1,
    )
    first = _first_secure_round(ticket_path, ticket, policy, delay)
    survivors = [101, 102, 104]
    weight = sum(node_weight(_rows(ticket_path, n), SECAGG.weight_cap) for n in survivors)
    bound = mean_error_bound(SECAGG.params(), nodes=3, weight=weight) + 1e-6
    assert np.abs(first - _final(oracle)).max() <= bound


def _first_secure_round(
    ticket_path: Path, ticket: Ticket, policy: RoundPolicy, delay: Callable[[Message], float]
) -> np.ndarray:
    grid, _ = _scheduled(ticket_path, delay)
    strategy = SecurePackedFedAvg(
        PackLayout.from_ticket(ticket), _plan(ticket), SECAGG, rounds=policy, fraction_evaluate=0.0
    )
    return _final(_run(strategy, grid, ticket, rounds=1))


def _rows(ticket_path: Path, node: int) -> int:
    from edge_daemon.local_data import LocalDataSpec, load_local_data
    from ticket.bundle import read_ticket

    config = heart_nodes(ticket_path)[node - 101]
    preprocessing = read_ticket(ticket_path, allow_unsigned=True).manifest.data.preprocessing
    spec = LocalDataSpec.from_node_config(config)
    return int(load_local_data(spec, preprocessing).y_train.shape[0])
