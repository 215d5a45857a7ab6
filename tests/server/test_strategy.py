"""PackedFedAvg driven in-process against the real ClientApp: heart-uci, 4 hospitals, 4 nodes."""

import json
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Result

from edge_daemon import client_app
from edge_daemon.local_data import LocalDataSpec, load_local_data
from server.server_app import ServerSettings, run_training
from server.strategy import NO_REPLY, PAYLOAD_KEY, PackedFedAvg, RoundPlan
from tests.inprocess import (
    ClientCallable,
    InProcessGrid,
    SilentNodeGrid,
    find_ticket,
    heart_nodes,
    server_identity,
)
from ticket import numpy_mlp, wire
from ticket.bundle import Ticket, read_ticket
from ticket.codec import HEADER_BYTES, Kind, decode_vector
from ticket.packing import PackLayout
from ticket.train_config import TrainConfig

TRAIN = TrainConfig(epochs=1, batch_size=32, lr=1e-3)


@pytest.fixture(scope="module")
def sparse_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return find_ticket(tmp_path_factory.mktemp("sparse") / "t.ticket", density=0.5)


@pytest.fixture(scope="module")
def dense_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return find_ticket(tmp_path_factory.mktemp("dense") / "t.ticket", density=1.0)


def _strategy(ticket: Ticket, **plan: object) -> PackedFedAvg:
    return PackedFedAvg(
        PackLayout.from_ticket(ticket),
        RoundPlan(ticket_id=ticket.content_id, train=TRAIN, **plan),  # type: ignore[arg-type]
        fraction_evaluate=0.0,
    )


def _run(strategy: FedAvg, grid: InProcessGrid, initial: ArrayRecord, rounds: int = 2) -> Result:
    random.seed(0)  # FedAvg samples nodes with `random`
    with server_identity():
        return strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=60)


def _initial(ticket: Ticket) -> ArrayRecord:
    return ArrayRecord({PAYLOAD_KEY: Array(PackLayout.from_ticket(ticket).pack(ticket.weights))})


def test_rounds_train_only_the_mask_and_count_bytes(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    layout = PackLayout.from_ticket(ticket)
    strategy = _strategy(ticket)
    grid = InProcessGrid(client_app.app, heart_nodes(sparse_path))

    result = _run(strategy, grid, _initial(ticket), rounds=2)

    final = result.arrays[PAYLOAD_KEY].numpy()
    assert final.shape == (layout.size,)
    assert not np.array_equal(final, layout.pack(ticket.weights))  # training moved the values
    for name, weight in layout.unpack(final).items():
        if name in ticket.masks:
            assert not weight[~ticket.masks[name]].any()  # pruned stay exactly zero
    expected_bytes = HEADER_BYTES + 4 * layout.size  # float32 both ways
    for server_round in (1, 2):
        record = strategy.rounds[server_round]
        assert sorted(record.accepted) == [101, 102, 103, 104]
        assert record.failures == {} and record.rejected == {}
        assert set(record.bytes_down.values()) == {expected_bytes}
        assert set(record.bytes_up.values()) == {expected_bytes}
        metrics = result.train_metrics_clientapp[server_round]
        assert _number(metrics["participants"]) == 4
        assert _number(metrics["bytes-up"]) == 4 * expected_bytes
        assert 0 < _number(metrics["train-loss"]) < 2


def test_instructions_carry_the_packed_global_and_the_plan(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    layout = PackLayout.from_ticket(ticket)
    grid = InProcessGrid(client_app.app, heart_nodes(sparse_path))

    _run(_strategy(ticket, seed=7), grid, _initial(ticket), rounds=1)

    first = grid.sent[0].content
    config = first.config_records[wire.CONFIG]
    assert config[wire.TICKET_ID] == ticket.content_id
    assert config[wire.SERVER_ROUND] == 1 and config[wire.SEED] == 7
    assert config[wire.LOCAL_EPOCHS] == 1 and config[wire.DTYPE] == "float32"
    payload = first.array_records[wire.ARRAYS][wire.PACKED].data
    values = decode_vector(
        payload, kind=Kind.MODEL, ticket_id=ticket.content_id, round=1, length=layout.size
    )
    np.testing.assert_array_equal(values, layout.pack(ticket.weights))


def _tampering(node_id: int, edit: Callable[[bytes], bytes]) -> ClientCallable:
    def client(message: Message, context: Context) -> Message:
        reply = client_app.app(message, context)
        if context.node_id == node_id and reply.has_content():
            array = reply.content.array_records[wire.ARRAYS][wire.PACKED]
            array.data = edit(array.data)
        return reply

    return client


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda data: data[:-4], "truncated"),
        (lambda data: data[:8] + (99).to_bytes(4, "little") + data[12:], "another round"),
        (lambda data: data + b"\0" * 4, "after its payload"),
    ],
)
def test_a_malformed_update_is_rejected_counted_and_logged(
    sparse_path: Path,
    caplog: pytest.LogCaptureFixture,
    edit: Callable[[bytes], bytes],
    reason: str,
) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = _strategy(ticket)
    honest = _strategy(ticket)
    nodes = heart_nodes(sparse_path)

    with caplog.at_level(logging.WARNING, logger="server.strategy"):
        result = _run(strategy, InProcessGrid(_tampering(102, edit), nodes), _initial(ticket), 1)

    record = strategy.rounds[1]
    assert sorted(record.accepted) == [101, 103, 104]
    assert list(record.rejected) == [102] and reason in record.rejected[102]
    assert result.train_metrics_clientapp[1]["rejected"] == 1
    assert "node 102" in caplog.text and reason in caplog.text
    # The mean is over the three honest updates only: node 102 trained the same in both runs.
    without = InProcessGrid(_dropping(102), nodes)
    expected = _run(honest, without, _initial(ticket), 1)
    np.testing.assert_array_equal(
        result.arrays[PAYLOAD_KEY].numpy(), expected.arrays[PAYLOAD_KEY].numpy()
    )


def _dropping(node_id: int) -> ClientCallable:
    def client(message: Message, context: Context) -> Message:
        if context.node_id == node_id:
            raise RuntimeError("node went away")
        return client_app.app(message, context)

    return client


def test_error_replies_are_failures_and_too_few_updates_keep_the_model(
    sparse_path: Path, tmp_path: Path
) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = _strategy(ticket, min_replies=4)
    nodes = heart_nodes(sparse_path)
    nodes[0]["ticket-path"] = str(tmp_path / "missing.ticket")

    result = _run(strategy, InProcessGrid(client_app.app, nodes), _initial(ticket), 1)

    record = strategy.rounds[1]
    assert list(record.failures) == [101]
    assert "error 1002" in record.failures[101] and "No such file" in record.failures[101]
    assert str(tmp_path) not in record.failures[101]  # never leak a device path
    assert len(record.accepted) == 3
    assert result.train_metrics_clientapp[1]["failures"] == 1
    # 3 < min_replies: no aggregate, so Flower keeps the previous global (it sets
    # Result.arrays only from an aggregate; flwr/serverapp/strategy/strategy.py:228).
    assert PAYLOAD_KEY not in result.arrays


def test_a_node_that_never_replies_is_a_named_failure_and_the_round_survives(
    sparse_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = _strategy(ticket, min_replies=2)
    grid = SilentNodeGrid(103, client_app.app, heart_nodes(sparse_path))

    with caplog.at_level(logging.WARNING):
        result = _run(strategy, grid, _initial(ticket), 1)

    record = strategy.rounds[1]
    assert record.failures == {103: NO_REPLY}
    assert sorted(record.accepted) == [101, 102, 104]
    assert "node 103 failed: " + NO_REPLY in caplog.text
    assert result.train_metrics_clientapp[1]["failures"] == 1
    assert PAYLOAD_KEY in result.arrays  # 3 >= min_replies: the round still aggregated


def test_federated_evaluation_runs_on_every_node(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = PackedFedAvg(
        PackLayout.from_ticket(ticket), RoundPlan(ticket_id=ticket.content_id, train=TRAIN)
    )

    grid = InProcessGrid(client_app.app, heart_nodes(sparse_path))

    result = _run(strategy, grid, _initial(ticket), 1)

    evaluate_sent = [m for m in grid.sent if m.metadata.message_type == "evaluate"]
    assert sorted(m.metadata.dst_node_id for m in evaluate_sent) == [101, 102, 103, 104]
    metrics = result.evaluate_metrics_clientapp[1]
    assert 0.0 <= _number(metrics["accuracy"]) <= 1.0
    assert _number(metrics["loss"]) > 0


# ---------------------------------------------------------------- dense mode is FedAvg


def _plain_dense_client(ticket_path: Path) -> ClientCallable:
    """A textbook FedAvg client: full arrays in, full arrays out, no mask, no codec. It trains
    with the ClientApp's trainer (numpy_mlp), so only the aggregation differs."""

    def client(message: Message, context: Context) -> Message:
        ticket = read_ticket(ticket_path, allow_unsigned=True)
        arrays = message.content.array_records["arrays"]
        params = {name: a.numpy() for name, a in arrays.items()}
        spec = LocalDataSpec.from_node_config(context.node_config)
        data = load_local_data(spec, ticket.manifest.data.preprocessing)
        config = message.content.config_records["config"]
        seed = client_app.local_seed(0, _as_int(config["server-round"]), context.node_id)
        x, y = data.x_train, data.y_train
        trained, _ = numpy_mlp.train_masked(params, {}, x, y, TRAIN, seed=seed)
        reply = RecordDict(
            {
                "arrays": ArrayRecord({n: Array(p.copy()) for n, p in trained.items()}),
                "metrics": MetricRecord({"num-examples": int(data.y_train.shape[0])}),
            }
        )
        return Message(reply, reply_to=message)

    return client


def _as_int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an int, got {value!r}")
    return value


def _number(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def test_dense_float32_ticket_is_exactly_fedavg(dense_path: Path) -> None:
    ticket = read_ticket(dense_path, allow_unsigned=True)
    assert ticket.manifest.density.overall == 1.0
    layout = PackLayout.from_ticket(ticket)
    nodes = heart_nodes(dense_path)

    ours = _run(_strategy(ticket), InProcessGrid(client_app.app, nodes), _initial(ticket), 3)
    stock = _run(
        FedAvg(fraction_evaluate=0.0),
        InProcessGrid(_plain_dense_client(dense_path), nodes),
        ArrayRecord({name: Array(np.array(w)) for name, w in ticket.weights.items()}),
        3,
    )

    ours_weights = layout.unpack(ours.arrays[PAYLOAD_KEY].numpy())
    stock_weights = {name: array.numpy() for name, array in stock.arrays.items()}
    assert ours_weights.keys() == stock_weights.keys()
    moved = 0.0
    for name, weight in ours_weights.items():
        np.testing.assert_allclose(weight, stock_weights[name], rtol=0, atol=1e-6)
        moved = max(moved, float(np.abs(weight - ticket.weights[name]).max()))
    assert moved > 1e-3  # the comparison is not vacuous: three rounds moved the weights


def test_server_app_runs_from_run_config(sparse_path: Path, tmp_path: Path) -> None:
    from server.server_app import ServerSettings, run_training

    settings = ServerSettings.from_run_config(
        {
            "ticket-path": str(sparse_path),
            "run-dir": str(tmp_path / "run"),
            "allow-unsigned": True,
            "num-rounds": 1,
            "local-epochs": 1,
            "batch-size": 32,
            "lr": 0.001,
            "uplink-dtype": "int8",
            "fraction-evaluate": 0.0,
            "min-nodes": 4,
        }
    )
    grid = InProcessGrid(client_app.app, heart_nodes(sparse_path))

    random.seed(0)
    with server_identity():
        result = run_training(grid, settings)

    assert _number(result.train_metrics_clientapp[1]["participants"]) == 4
    layout = PackLayout.from_ticket(read_ticket(sparse_path, allow_unsigned=True))
    int8_bytes = _number(result.train_metrics_clientapp[1]["bytes-up"]) / 4
    assert int8_bytes < HEADER_BYTES + 4 * len(layout.segment_sizes) + layout.size + 1


# ---------------------------------------------------------------- resuming at a later round


def test_start_at_a_later_round_numbers_everything_run_wide(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = PackedFedAvg(
        PackLayout.from_ticket(ticket), RoundPlan(ticket_id=ticket.content_id, train=TRAIN)
    )
    grid = InProcessGrid(client_app.app, heart_nodes(sparse_path))
    hooked: list[int] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        hooked.append(server_round)
        return MetricRecord({"round": server_round})

    random.seed(0)
    with server_identity():
        result = strategy.start(
            grid=grid,
            initial_arrays=_initial(ticket),
            num_rounds=4,
            timeout=60,
            evaluate_fn=evaluate_fn,
            first_round=3,
        )

    sent = [
        (m.metadata.message_type, m.content.config_records["config"]["server-round"])
        for m in grid.sent
    ]
    assert (
        sent
        == [("train", 3)] * 4 + [("evaluate", 3)] * 4 + [("train", 4)] * 4 + [("evaluate", 4)] * 4
    )
    assert hooked == [2, 3, 4]  # Flower's "round 0" is the state after round 2
    assert sorted(strategy.rounds) == [3, 4]
    for metrics in (result.train_metrics_clientapp, result.evaluate_metrics_clientapp):
        assert sorted(metrics) == [3, 4]
    assert sorted(result.evaluate_metrics_serverapp) == [2, 3, 4]
    record = strategy.rounds[4]
    assert 0 < record.train_metrics["train-loss"] < 2
    assert 0 <= record.evaluate_metrics["accuracy"] <= 1


def test_start_with_no_rounds_left_sends_nothing(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    grid = InProcessGrid(client_app.app, heart_nodes(sparse_path))

    with server_identity():
        result = _strategy(ticket).start(
            grid=grid, initial_arrays=_initial(ticket), num_rounds=2, first_round=3
        )

    assert grid.sent == [] and result.train_metrics_clientapp == {}
    with pytest.raises(ValueError, match="first_round must be >= 1"):
        _strategy(ticket).start(grid=grid, initial_arrays=_initial(ticket), first_round=0)


def _sampled(grid: InProcessGrid, message_type: str) -> dict[object, list[int]]:
    rounds: dict[object, list[int]] = {}
    for message in grid.sent:
        if message.metadata.message_type == message_type:
            server_round = message.content.config_records["config"]["server-round"]
            rounds.setdefault(server_round, []).append(message.metadata.dst_node_id)
    return rounds


def test_node_sampling_depends_on_seed_and_round_not_on_the_process(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    nodes = heart_nodes(sparse_path)
    options = {"fraction_train": 0.5, "min_train_nodes": 2, "fraction_evaluate": 0.0}

    def sampled(first_round: int, global_seed: int) -> dict[object, list[int]]:
        strategy = PackedFedAvg(
            PackLayout.from_ticket(ticket),
            RoundPlan(ticket_id=ticket.content_id, train=TRAIN),
            **options,
        )
        grid = InProcessGrid(client_app.app, nodes)
        random.seed(global_seed)
        with server_identity():
            strategy.start(
                grid=grid, initial_arrays=_initial(ticket), num_rounds=3, first_round=first_round
            )
        return _sampled(grid, "train")

    uninterrupted = sampled(first_round=1, global_seed=1)
    resumed = sampled(first_round=3, global_seed=2)

    assert all(len(ids) == 2 for ids in uninterrupted.values())
    assert resumed == {3: uninterrupted[3]}


def test_server_app_resumes_and_evaluates_on_held_out_rows(
    sparse_path: Path, tmp_path: Path
) -> None:

    def settings(rounds: int) -> ServerSettings:
        return ServerSettings.from_run_config(
            {
                "ticket-path": str(sparse_path),
                "run-dir": str(tmp_path),
                "server-eval": "heart-uci",
                "allow-unsigned": True,
                "num-rounds": rounds,
                "local-epochs": 1,
                "batch-size": 32,
                "lr": 0.001,
                "fraction-evaluate": 0.0,
                "min-nodes": 4,
            }
        )

    for rounds in (1, 2):
        grid = InProcessGrid(client_app.app, heart_nodes(sparse_path))
        with server_identity():
            result = run_training(grid, settings(rounds))

    lines = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert all(0 <= line["server_eval"]["auc"] <= 1 for line in lines)
    assert sorted(result.evaluate_metrics_serverapp) == [2]
    assert (tmp_path / "rounds.png").read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------- replies checked one by one


def _replacing(
    node_id: int, message_type: str, content: Callable[[], RecordDict | Error]
) -> ClientCallable:
    """The real ClientApp, except that `node_id` answers `message_type` with `content()`."""

    def client(message: Message, context: Context) -> Message:
        reply = client_app.app(message, context)
        if context.node_id != node_id or message.metadata.message_type != message_type:
            return reply
        return Message(content(), reply_to=message)  # a RecordDict or an Error reply

    return client


def _metrics(**values: float) -> Callable[[], RecordDict]:
    return lambda: RecordDict({wire.METRICS: MetricRecord(dict(values))})


def _recording(evaluations: dict[int, dict[str, object]]) -> ClientCallable:
    """The real ClientApp, noting each node's evaluate metrics as it sent them."""

    def client(message: Message, context: Context) -> Message:
        reply = client_app.app(message, context)
        if message.metadata.message_type == "evaluate" and reply.has_content():
            evaluations[context.node_id] = dict(reply.content.metric_records[wire.METRICS])
        return reply

    return client


def _evaluating(ticket: Ticket) -> PackedFedAvg:
    return PackedFedAvg(
        PackLayout.from_ticket(ticket), RoundPlan(ticket_id=ticket.content_id, train=TRAIN)
    )


def _weighted(evaluations: dict[int, dict[str, object]], nodes: list[int], key: str) -> float:
    having = [evaluations[node] for node in nodes if key in evaluations[node]]
    total = sum(_number(report["num-examples"]) for report in having)
    return sum(_number(r[key]) * _number(r["num-examples"]) for r in having) / total


def test_federated_evaluation_is_example_weighted_with_roc_auc(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = _evaluating(ticket)
    evaluations: dict[int, dict[str, object]] = {}
    grid = InProcessGrid(_recording(evaluations), heart_nodes(sparse_path))

    result = _run(strategy, grid, _initial(ticket), 1)

    record = strategy.rounds[1]
    assert record.evaluated == [101, 102, 103, 104]
    assert record.evaluate_failures == {} and record.evaluate_rejected == {}
    assert any("auc" in report for report in evaluations.values())  # heart-uci is binary
    nodes = sorted(evaluations)
    for key in ("loss", "accuracy", "auc"):
        expected = _weighted(evaluations, nodes, key)
        assert record.evaluate_metrics[key] == pytest.approx(expected, rel=1e-12)
        assert _number(result.evaluate_metrics_clientapp[1][key]) == pytest.approx(expected)
    assert 0 <= record.evaluate_metrics["auc"] <= 1


def test_evaluate_instructions_count_in_bytes_down(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    layout = PackLayout.from_ticket(ticket)
    strategy = _evaluating(ticket)
    grid = InProcessGrid(client_app.app, heart_nodes(sparse_path))

    result = _run(strategy, grid, _initial(ticket), 1)

    instruction = HEADER_BYTES + 4 * layout.size  # float32 global values, train and evaluate
    assert strategy.rounds[1].bytes_down == {node: 2 * instruction for node in (101, 102, 103, 104)}
    # Flower's train MetricRecord is made before evaluation: the train instructions only.
    assert _number(result.train_metrics_clientapp[1]["bytes-down"]) == 4 * instruction


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (_metrics(accuracy=0.5), "evaluate reply: metrics.num-examples: missing"),
        (_metrics(**{"num-examples": 0, "loss": 0.5, "accuracy": 0.5}), "integer >= 1"),
        (
            _metrics(**{"num-examples": 10.0, "loss": 0.5, "accuracy": 0.5}),
            "metrics.num-examples: expected int, got 10.0",
        ),
        (_metrics(**{"num-examples": 10, "accuracy": 0.5}), "metrics.loss: missing"),
        (_metrics(**{"num-examples": 10, "loss": 0.5}), "metrics.accuracy: missing"),
        (
            _metrics(**{"num-examples": 10, "loss": math.nan, "accuracy": 0.5}),
            "metrics.loss: expected a finite float",
        ),
        (
            _metrics(**{"num-examples": 10, "loss": 0.5, "accuracy": math.inf}),
            "metrics.accuracy: expected a finite float",
        ),
        (_metrics(**{"num-examples": 10, "loss": 0.5, "accuracy": 1.5}), "outside [0.0, 1.0]"),
        (_metrics(**{"num-examples": 10, "loss": -1.0, "accuracy": 0.5}), "outside [0.0, inf]"),
        (
            _metrics(**{"num-examples": 10, "loss": 0.5, "accuracy": 0.5, "auc": 2.0}),
            "metrics.auc: 2.0 is outside",
        ),
        (
            lambda: RecordDict(
                {
                    "metrics": MetricRecord({"num-examples": 10, "loss": 0.5, "accuracy": 0.5}),
                    "more": MetricRecord({"accuracy": 1.0}),
                }
            ),
            "evaluate reply: more: unexpected record",
        ),
        (RecordDict, "evaluate reply: metrics: missing metric record"),
    ],
)
def test_a_malformed_evaluation_is_rejected_and_the_others_are_averaged(
    sparse_path: Path,
    caplog: pytest.LogCaptureFixture,
    content: Callable[[], RecordDict],
    reason: str,
) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = _evaluating(ticket)
    evaluations: dict[int, dict[str, object]] = {}
    tampered = _replacing(102, "evaluate", content)

    def client(message: Message, context: Context) -> Message:
        _recording(evaluations)(message, context)  # what the honest node would have said
        return tampered(message, context)

    with caplog.at_level(logging.WARNING, logger="server.strategy"):
        result = _run(
            strategy, InProcessGrid(client, heart_nodes(sparse_path)), _initial(ticket), 1
        )

    record = strategy.rounds[1]
    assert list(record.evaluate_rejected) == [102] and reason in record.evaluate_rejected[102]
    assert record.evaluated == [101, 103, 104] and record.evaluate_failures == {}
    assert record.rejected == {} and sorted(record.accepted) == [101, 102, 103, 104]  # train: fine
    assert "evaluation of node 102" in caplog.text and reason in caplog.text
    for key in ("loss", "accuracy"):
        expected = _weighted(evaluations, [101, 103, 104], key)
        assert _number(result.evaluate_metrics_clientapp[1][key]) == pytest.approx(expected)


def test_evaluate_errors_and_silence_are_evaluate_failures(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = _evaluating(ticket)
    client = _replacing(101, "evaluate", lambda: Error(code=1003, reason="no test rows"))
    grid = SilentNodeGrid(104, client, heart_nodes(sparse_path))

    result = _run(strategy, grid, _initial(ticket), 1)

    record = strategy.rounds[1]
    assert record.evaluate_failures == {101: "error 1003: no test rows", 104: NO_REPLY}
    assert record.evaluated == [102, 103] and record.evaluate_rejected == {}
    assert 0 <= _number(result.evaluate_metrics_clientapp[1]["accuracy"]) <= 1


def test_every_evaluation_malformed_leaves_no_federated_metrics(sparse_path: Path) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = _evaluating(ticket)

    def client(message: Message, context: Context) -> Message:
        if message.metadata.message_type == "evaluate":
            return Message(_metrics(accuracy=0.5)(), reply_to=message)
        return client_app.app(message, context)

    result = _run(strategy, InProcessGrid(client, heart_nodes(sparse_path)), _initial(ticket), 1)

    record = strategy.rounds[1]
    assert sorted(record.evaluate_rejected) == [101, 102, 103, 104]
    assert record.evaluate_metrics == {} and result.evaluate_metrics_clientapp == {}
    assert PAYLOAD_KEY in result.arrays  # training went on regardless


def _train_metrics(node_id: int, edit: Callable[[RecordDict], None]) -> ClientCallable:
    def client(message: Message, context: Context) -> Message:
        reply = client_app.app(message, context)
        if context.node_id == node_id and message.metadata.message_type == "train":
            edit(reply.content)
        return reply

    return client


def _set_metric(key: str, value: float) -> Callable[[RecordDict], None]:
    def edit(content: RecordDict) -> None:
        content.metric_records[wire.METRICS][key] = value

    return edit


def _add_record(content: RecordDict) -> None:
    content["more"] = MetricRecord({wire.NUM_EXAMPLES: 1, wire.TRAIN_LOSS: 0.1})


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_set_metric(wire.TRAIN_LOSS, math.nan), "metrics.train-loss: expected a finite float"),
        (_set_metric(wire.TRAIN_LOSS, math.inf), "metrics.train-loss: expected a finite float"),
        (_set_metric(wire.TRAIN_LOSS, -math.inf), "metrics.train-loss: expected a finite float"),
        (_set_metric("extra", [0.5, math.nan]), "metrics.extra: unexpected key"),  # type: ignore[arg-type]
        (_add_record, "train reply: more: unexpected record"),
    ],
)
def test_train_metrics_must_be_finite_and_in_one_record(
    sparse_path: Path, edit: Callable[[RecordDict], None], reason: str
) -> None:
    ticket = read_ticket(sparse_path, allow_unsigned=True)
    strategy = _strategy(ticket)
    grid = InProcessGrid(_train_metrics(102, edit), heart_nodes(sparse_path))

    result = _run(strategy, grid, _initial(ticket), 1)

    record = strategy.rounds[1]
    assert list(record.rejected) == [102] and reason in record.rejected[102]
    assert sorted(record.accepted) == [101, 103, 104]
    assert math.isfinite(record.train_metrics[wire.TRAIN_LOSS])
    assert _number(result.train_metrics_clientapp[1]["rejected"]) == 1
