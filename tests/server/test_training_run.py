"""A resumable run in-process: heart-uci, 4 hospitals as 4 nodes; kill, restart, compare."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.serverapp.strategy import Result

from edge_daemon import client_app
from server.checkpoint import CheckpointError
from server.evaluation import ServerEvaluator
from server.run_control import clear_stop, request_stop
from server.strategy import PAYLOAD_KEY, PackedFedAvg, RoundPlan
from server.training_run import RunPaths, run_resumable
from tests.inprocess import ClientCallable, InProcessGrid, heart_nodes, server_identity
from ticket.bundle import Ticket
from ticket.data import load_dataset
from ticket.packing import PackLayout
from ticket.train_config import TrainConfig

TRAIN = TrainConfig(epochs=1, batch_size=32, lr=1e-3)


class Killed(BaseException):
    """Stands in for kill -9: not an Exception, so nothing on the way turns it into a reply."""


def _run(
    ticket: Ticket,
    client: ClientCallable,
    nodes: list[dict[str, bool | float | int | str]],
    run_dir: Path,
    rounds: int,
    *,
    lr: float = 1e-3,
    evaluator: ServerEvaluator | None = None,
) -> tuple[Result, InProcessGrid]:
    """One ServerApp process: a fresh strategy and grid, as after a restart."""
    layout = PackLayout.from_ticket(ticket)
    train = TrainConfig(epochs=1, batch_size=32, lr=lr)
    strategy = PackedFedAvg(layout, RoundPlan(ticket_id=ticket.content_id, train=train))
    grid = InProcessGrid(client, nodes)
    random.seed(0)  # FedAvg samples nodes with `random`
    with server_identity():
        result = run_resumable(
            strategy,
            grid,
            layout.pack(ticket.weights),
            run_dir=run_dir,
            num_rounds=rounds,
            timeout=60,
            evaluator=evaluator,
        )
    return result, grid


def _killed_in_round(server_round: int) -> ClientCallable:
    def client(message: Message, context: Context) -> Message:
        if message.content.config_records["config"]["server-round"] == server_round:
            raise Killed
        return client_app.app(message, context)

    return client


def _train_rounds(grid: InProcessGrid) -> list[object]:
    return [
        m.content.config_records["config"]["server-round"]
        for m in grid.sent
        if m.metadata.message_type == "train"
    ]


def _logged_rounds(run_dir: Path) -> list[int]:
    lines = RunPaths(run_dir).log.read_text().splitlines()
    return [json.loads(line)["round"] for line in lines]


Uninterrupted = tuple[Path, Result, InProcessGrid]


@pytest.fixture(scope="module")
def uninterrupted(
    ticket: Ticket, ticket_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Uninterrupted:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result, grid = _run(ticket, client_app.app, heart_nodes(ticket_path), run_dir, 3)
    return run_dir, result, grid


def test_a_run_checkpoints_and_logs_every_round(uninterrupted: Uninterrupted) -> None:
    run_dir, result, grid = uninterrupted
    paths = RunPaths(run_dir)

    assert _logged_rounds(run_dir) == [1, 2, 3]
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == [
        f"round-00000{r}.ckpt" for r in (1, 2, 3)
    ]
    assert _train_rounds(grid) == [1] * 4 + [2] * 4 + [3] * 4
    line = json.loads(paths.log.read_text().splitlines()[-1])
    assert line["participants"] == [101, 102, 103, 104]
    assert set(line["bytes"]["up"]) == {"101", "102", "103", "104"}
    assert line["bytes"]["up_total"] == sum(line["bytes"]["up"].values())
    assert 0 < line["train"]["loss"] < 2
    assert 0 <= line["federated_eval"]["accuracy"] <= 1
    assert line["server_eval"] is None  # not configured here
    assert paths.plot.read_bytes().startswith(b"\x89PNG")
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]


def test_a_killed_run_resumes_without_repeating_or_skipping_a_round(
    uninterrupted: Uninterrupted,
    ticket: Ticket,
    ticket_path: Path,
    tmp_path: Path,
) -> None:
    _, expected, _ = uninterrupted
    nodes = heart_nodes(ticket_path)
    with pytest.raises(Killed):
        _run(ticket, _killed_in_round(3), nodes, tmp_path, 3)  # dies after round 2's checkpoint
    assert _logged_rounds(tmp_path) == [1, 2]

    result, grid = _run(ticket, client_app.app, nodes, tmp_path, 3)

    assert _train_rounds(grid) == [3] * 4  # round 3 once; rounds 1-2 not again
    assert _logged_rounds(tmp_path) == [1, 2, 3]
    assert sorted(result.train_metrics_clientapp) == [3]
    np.testing.assert_array_equal(
        result.arrays[PAYLOAD_KEY].numpy(), expected.arrays[PAYLOAD_KEY].numpy()
    )


def test_a_crash_between_checkpoint_and_log_restores_the_line(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    nodes = heart_nodes(ticket_path)
    _run(ticket, client_app.app, nodes, tmp_path, 2)
    log = RunPaths(tmp_path).log
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + lines[1][:25])  # round 2's line torn: checkpoint 2 is on disk

    _, grid = _run(ticket, client_app.app, nodes, tmp_path, 3)

    assert _train_rounds(grid) == [3] * 4
    assert _logged_rounds(tmp_path) == [1, 2, 3]
    assert log.read_text().splitlines(keepends=True)[1] == lines[1]


def test_a_finished_run_runs_no_more_rounds(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    nodes = heart_nodes(ticket_path)
    run_dir = tmp_path / "not" / "yet" / "there"
    first, _ = _run(ticket, client_app.app, nodes, run_dir, 1)

    again, grid = _run(ticket, client_app.app, nodes, run_dir, 1)

    assert grid.sent == []
    assert _logged_rounds(run_dir) == [1]
    np.testing.assert_array_equal(
        again.arrays[PAYLOAD_KEY].numpy(), first.arrays[PAYLOAD_KEY].numpy()
    )


def test_a_restart_with_other_settings_is_refused(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    nodes = heart_nodes(ticket_path)
    _run(ticket, client_app.app, nodes, tmp_path, 1)

    with pytest.raises(CheckpointError, match=r"round-000001\.ckpt: .*plan\.train\.lr"):
        _run(ticket, client_app.app, nodes, tmp_path, 2, lr=0.01)


def test_server_side_evaluation_is_logged_with_auc(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    layout = PackLayout.from_ticket(ticket)
    evaluator = ServerEvaluator.held_out(ticket, layout, "heart-uci")

    result, _ = _run(
        ticket, client_app.app, heart_nodes(ticket_path), tmp_path, 2, evaluator=evaluator
    )

    pooled_test_rows = len(load_dataset("heart-uci").y_test)
    for line in map(json.loads, RunPaths(tmp_path).log.read_text().splitlines()):
        server_eval = line["server_eval"]
        assert server_eval["examples"] == pooled_test_rows == 277
        assert 0 <= server_eval["accuracy"] <= 1 and 0 <= server_eval["auc"] <= 1
        assert server_eval["loss"] > 0
    assert sorted(result.evaluate_metrics_serverapp) == [1, 2]
    # The logged numbers are those of the checkpointed vector.
    final = evaluator(result.arrays[PAYLOAD_KEY].numpy())
    assert result.evaluate_metrics_serverapp[2]["accuracy"] == final.accuracy


def test_server_evaluation_agrees_with_federated_evaluation_on_every_hospital(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    # Oracle: the four nodes' test rows are the pooled test rows, encoded the same way, so the
    # example-weighted federated numbers must equal the server's on the checkpointed vector.
    evaluator = ServerEvaluator.held_out(ticket, PackLayout.from_ticket(ticket), "heart-uci")

    _run(ticket, client_app.app, heart_nodes(ticket_path), tmp_path, 1, evaluator=evaluator)

    line = json.loads(RunPaths(tmp_path).log.read_text())
    assert line["federated_eval"]["accuracy"] == pytest.approx(
        line["server_eval"]["accuracy"], abs=1e-6
    )
    assert line["federated_eval"]["loss"] == pytest.approx(line["server_eval"]["loss"], abs=1e-5)


def test_failed_nodes_are_logged_with_their_reason(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    nodes = heart_nodes(ticket_path)
    nodes[1]["ticket-path"] = str(tmp_path / "missing.ticket")

    _run(ticket, client_app.app, nodes, tmp_path / "run", 1)

    line = json.loads(RunPaths(tmp_path / "run").log.read_text())
    assert line["participants"] == [101, 103, 104]
    assert list(line["failures"]) == ["102"] and "error 1002" in line["failures"]["102"]
    assert "102" in line["bytes"]["down"] and "102" not in line["bytes"]["up"]


def _stopping_in_round(server_round: int, run_dir: Path) -> ClientCallable:
    """A fleet whose service asks for a stop while round `server_round` is in flight."""

    def client(message: Message, context: Context) -> Message:
        if message.content.config_records["config"]["server-round"] == server_round:
            request_stop(run_dir, "ticket bbbbbbbbbbbb is now active")
        return client_app.app(message, context)

    return client


def test_a_stop_request_ends_the_run_after_the_round_in_flight_which_is_kept(
    uninterrupted: Uninterrupted, ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    _, expected, _ = uninterrupted
    nodes = heart_nodes(ticket_path)

    _, grid = _run(ticket, _stopping_in_round(2, tmp_path), nodes, tmp_path, 3)

    assert _train_rounds(grid) == [1] * 4 + [2] * 4  # round 2 finished; round 3 not begun
    assert _logged_rounds(tmp_path) == [1, 2]
    lines = [json.loads(line) for line in RunPaths(tmp_path).log.read_text().splitlines()]
    assert {line["ticket"] for line in lines} == {ticket.content_id}
    assert RunPaths(tmp_path).plot.read_bytes().startswith(b"\x89PNG")  # drawn every round

    _, again = _run(ticket, client_app.app, nodes, tmp_path, 3)  # not withdrawn: stops at once
    assert _train_rounds(again) == []

    clear_stop(tmp_path)  # as the service does before it trains this ticket again
    result, resumed = _run(ticket, client_app.app, nodes, tmp_path, 3)
    assert _train_rounds(resumed) == [3] * 4
    np.testing.assert_array_equal(
        result.arrays[PAYLOAD_KEY].numpy(), expected.arrays[PAYLOAD_KEY].numpy()
    )
