"""DeadlineGrid on a fake clock: replies arrive at scripted times, nothing really waits."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import Context, Error, Message, MessageType, RecordDict

from server.deadline_grid import DeadlineGrid, Expect
from server.round_progress import ProgressFile, RoundProgress, read_progress
from tests.inprocess import FakeClock, InProcessGrid, ScheduledGrid, server_identity

NODES = [101, 102, 103, 104, 105]


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _echo(message: Message, context: Context) -> Message:
    if context.node_id == 105:
        return Message(Error(0, "broken"), reply_to=message)
    return Message(RecordDict(), reply_to=message)


def _grid(arrivals: dict[int, float | None]) -> tuple[DeadlineGrid, ScheduledGrid, FakeClock]:
    clock = FakeClock()
    inner = ScheduledGrid(
        clock,
        lambda message: arrivals[message.metadata.dst_node_id],
        _echo,
        [{} for _ in NODES],
    )
    return DeadlineGrid(inner, clock=clock, sleep=clock.sleep, pull_interval_s=1.0), inner, clock


def _messages(nodes: list[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]


def _send(grid: DeadlineGrid, nodes: list[int], expect: Expect, timeout: float = 100) -> set[int]:
    grid.expect(expect)
    replies = grid.send_and_receive(_messages(nodes), timeout=timeout)
    return {reply.metadata.src_node_id for reply in replies}


def test_a_round_closes_at_its_goal_without_waiting_for_the_slowest() -> None:
    grid, _, clock = _grid({101: 1, 102: 2, 103: 3, 104: 50})

    got = _send(grid, [101, 102, 103, 104], Expect(1, "train", goal=3, deadline_s=30))

    assert got == {101, 102, 103}
    (trip,) = grid.take_trips()
    assert (trip.closed, trip.sent, trip.replied) == ("goal", 4, 3)
    assert clock.now < 30 and trip.wall_s == clock.now
    assert grid.outstanding == 1  # 104's message: its reply will be late


def test_an_error_reply_does_not_count_toward_the_goal() -> None:
    grid, _, _ = _grid({101: 1, 102: 2, 105: 1, 104: 5})

    got = _send(grid, [101, 102, 104, 105], Expect(1, "train", goal=3, deadline_s=30))

    assert got == {101, 102, 104, 105}  # the error is handed on, counted as a failure later
    assert grid.take_trips()[0].closed == "all"


def test_at_the_deadline_a_round_closes_with_the_minimum_in() -> None:
    grid, _, clock = _grid({101: 1, 102: 2, 103: 60, 104: None})

    got = _send(grid, [101, 102, 103, 104], Expect(1, "train", goal=4, minimum=2, deadline_s=30))

    assert got == {101, 102}
    assert grid.take_trips()[0].closed == "deadline"
    assert 30 <= clock.now < 60


def test_below_the_minimum_a_round_waits_past_its_deadline() -> None:
    grid, _, clock = _grid({101: 1, 102: 45, 103: 80, 104: None})

    got = _send(grid, [101, 102, 103, 104], Expect(1, "train", goal=4, minimum=2, deadline_s=30))

    assert got == {101, 102}  # closed as soon as the second reply came, after the deadline
    assert grid.take_trips()[0].closed == "deadline"
    assert 45 <= clock.now < 80


def test_with_too_few_replies_a_round_ends_at_its_timeout() -> None:
    grid, _, clock = _grid({101: 1, 102: None, 103: None})

    got = _send(grid, [101, 102, 103], Expect(1, "train", goal=3, minimum=2, deadline_s=10), 40)

    assert got == {101}
    assert grid.take_trips()[0].closed == "timeout" and clock.now >= 40


def test_every_reply_in_closes_it_all() -> None:
    grid, _, _ = _grid({101: 1, 102: 2})

    assert _send(grid, [101, 102], Expect(1, "train", goal=5, deadline_s=30)) == {101, 102}
    assert grid.take_trips()[0].closed == "all"


def test_only_the_counted_nodes_make_the_goal() -> None:
    grid, _, _ = _grid({101: 1, 102: 2, 103: 3, 104: 9})
    counted = frozenset({103, 104})

    got = _send(grid, [101, 102, 103, 104], Expect(1, "train", goal=2, counted=counted))

    assert got == {101, 102, 103, 104}  # 101 and 102 arriving first did not close it
    assert grid.take_trips()[0].closed == "all"


def test_enough_decides_after_the_deadline() -> None:
    grid, _, _ = _grid({101: 1, 102: 2, 103: 40, 104: None})

    def enough(ok: frozenset[int]) -> bool:
        return 103 in ok

    got = _send(grid, [101, 102, 103, 104], Expect(1, "unmask", deadline_s=10, enough=enough))

    assert got == {101, 102, 103}
    assert grid.take_trips()[0].closed == "deadline"


def test_late_replies_are_drained_by_later_pulls_discarded_and_counted() -> None:
    grid, inner, clock = _grid({101: 1, 102: 2, 103: 3, 104: 50})
    _send(grid, [101, 102, 103, 104], Expect(1, "train", goal=3, deadline_s=30))
    first_close = clock.now
    grid.take_trips()
    inner.delay = lambda message: 100.0  # round 2's replies come slowly: 104's late one first

    got = _send(grid, [101, 102], Expect(2, "train", goal=2, deadline_s=200), timeout=300)

    assert got == {101, 102}  # round 1's reply from 104 is not one of round 2's
    (trip,) = grid.take_trips()
    assert [late.to_json() for late in trip.late] == [{"node": 104, "round": 1, "stage": "train"}]
    assert grid.outstanding == 0
    assert clock.now >= first_close + 100


def test_a_call_without_a_goal_or_deadline_is_the_inner_grids_own() -> None:
    grid = DeadlineGrid(InProcessGrid(_echo, [{} for _ in NODES]))

    replies = grid.send_and_receive(_messages([101, 102]), timeout=5)

    assert {reply.metadata.src_node_id for reply in replies} == {101, 102}
    assert grid.take_trips()[0].closed == "all"


def test_outstanding_messages_are_forgotten_after_keep_s() -> None:
    clock = FakeClock()
    arrivals: dict[int, float | None] = {101: 1, 102: None}
    inner = ScheduledGrid(clock, lambda m: arrivals[m.metadata.dst_node_id], _echo, [{}, {}])
    grid = DeadlineGrid(inner, clock=clock, sleep=clock.sleep, keep_s=20)

    _send(grid, [101, 102], Expect(1, "train", goal=1, deadline_s=5))
    assert grid.outstanding == 1
    clock.now += 30
    _send(grid, [101], Expect(2, "train", goal=1, deadline_s=5))

    assert grid.outstanding == 0


def test_an_error_for_a_closed_rounds_message_is_not_a_late_reply() -> None:
    grid, inner, _ = _grid({101: 1, 105: 40})  # 105 answers with an error, after the close
    _send(grid, [101, 105], Expect(1, "train", goal=1, deadline_s=30))
    grid.take_trips()
    inner.delay = lambda message: 60.0

    _send(grid, [101], Expect(2, "evaluate", deadline_s=100), timeout=100)

    assert grid.take_trips()[0].late == [] and grid.outstanding == 0


def test_progress_is_told_at_the_start_on_each_reply_and_at_the_close(tmp_path: Path) -> None:
    grid, _, _ = _grid({101: 1, 102: 2, 103: 3, 104: 50})
    told: list[RoundProgress] = []
    written = ProgressFile(tmp_path)

    def both(progress: RoundProgress) -> None:
        told.append(progress)
        written(progress)

    grid.report_to(both)
    _send(grid, [101, 102, 103, 104], Expect(4, "train", goal=3, deadline_s=30))

    assert [(p.replied, p.usable, p.closed) for p in told][-1] == (3, 3, "goal")
    assert {(p.replied, p.closed) for p in told} >= {(0, None), (1, None), (2, None)}
    assert told[1].describe() == (
        "round 4 in progress: train, 1 of 4 replies in (1 usable), 1 s; "
        "closes at goal 3 or deadline 30 s"
    )
    last = read_progress(tmp_path)
    assert last == told[-1] and last.describe().startswith("round 4 closed (goal): train, 3 of 4")


def test_a_plain_call_tells_its_start_and_close_and_an_unreadable_file_is_no_progress(
    tmp_path: Path,
) -> None:
    grid = DeadlineGrid(InProcessGrid(_echo, [{} for _ in NODES]))
    told: list[RoundProgress] = []
    grid.report_to(told.append)
    grid.send_and_receive(_messages([101, 102]), timeout=5)
    assert [(p.replied, p.closed) for p in told] == [(0, None), (2, "all")]
    assert told[0].describe().endswith("closes at every reply or timeout")

    (tmp_path / "round.json").write_text("{torn")
    assert read_progress(tmp_path) is None
