"""ClientApp handlers called directly with hand-built instructions: replies and Error replies."""

from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from edge_daemon import client_app
from flower_wire.records import to_flower
from tests.inprocess import find_ticket, heart_nodes, server_identity
from ticket import wire
from ticket.bundle import Ticket, build_ticket, read_ticket
from ticket.codec import HEADER_BYTES, Kind, decode_vector, encode_vector, read_header
from ticket.manifest import Manifest
from ticket.packing import PackLayout
from ticket.wire import ErrorCode
from ticket_cli.cli import main as ticket_cli

TRAIN_CONFIG: dict[str, Any] = {
    wire.LOCAL_EPOCHS: 1,
    wire.BATCH_SIZE: 32,
    wire.LR: 1e-3,
    wire.OPTIMIZER: "adam",
    wire.SEED: 3,
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    assert ticket_cli(["keygen", "--out", str(directory / "fleet")]) == 0
    return directory


@pytest.fixture(scope="module")
def signed_path(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Path:
    out = tmp_path_factory.mktemp("signed") / "t.ticket"
    return find_ticket(out, density=0.5, sign_key=keys / "fleet.key")


def _instruction(
    ticket: Ticket,
    kind: str,
    *,
    server_round: int = 1,
    payload: bytes | None = None,
    config: dict[str, Any] | None = None,
) -> Message:
    layout = PackLayout.from_ticket(ticket)
    if payload is None:
        payload = encode_vector(
            layout.pack(ticket.weights),
            kind=Kind.MODEL,
            ticket_id=ticket.content_id,
            round=server_round,
        )
    settings: dict[str, Any] = {wire.TICKET_ID: ticket.content_id, wire.SERVER_ROUND: server_round}
    if kind == "train":  # an evaluate instruction with a schedule is a canary probe
        settings[wire.DTYPE] = "float32"
    # Written by hand (not through wire's dataclasses) so a test can send a malformed config.
    records = wire.Records(
        arrays={wire.ARRAYS: {wire.PACKED: wire.Blob(wire.CODEC_STYPE, payload)}},
        configs={wire.CONFIG: {**settings, **TRAIN_CONFIG, **(config or {})}},
    )
    content = to_flower(records)
    with server_identity():
        message = Message(content, 101, kind)
    message.metadata.__dict__["_message_id"] = uuid4().hex  # the SuperLink's job
    return message


def _context(node_config: dict[str, bool | float | int | str]) -> Context:
    return Context(1, 101, node_config, RecordDict(), {})


def _node(
    ticket_path: Path, keys: Path, **extra: bool | float | int | str
) -> dict[str, bool | float | int | str]:
    config = heart_nodes(ticket_path)[0]
    config["allow-unsigned"] = False
    config["fleet-key"] = str(keys / "fleet.pub")
    config.update(extra)
    return config


def test_train_replies_with_a_packed_update_of_the_run(signed_path: Path, keys: Path) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    layout = PackLayout.from_ticket(ticket)

    reply = client_app.app(_instruction(ticket, "train"), _context(_node(signed_path, keys)))

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    payload = reply.content.array_records[wire.ARRAYS][wire.PACKED].data
    assert len(payload) == HEADER_BYTES + 4 * layout.size
    update = decode_vector(
        payload, kind=Kind.UPDATE, ticket_id=ticket.content_id, round=1, length=layout.size
    )
    assert not np.array_equal(update, layout.pack(ticket.weights))
    metrics = reply.content.metric_records[wire.METRICS]
    assert _number(metrics[wire.NUM_EXAMPLES]) == 226  # Cleveland's training rows
    assert _number(metrics[wire.TRAIN_LOSS]) > 0


def test_train_encodes_the_update_in_the_requested_dtype(signed_path: Path, keys: Path) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)

    reply = client_app.app(
        _instruction(ticket, "train", config={wire.DTYPE: "int8"}),
        _context(_node(signed_path, keys)),
    )

    assert read_header(reply.content.array_records[wire.ARRAYS][wire.PACKED].data).dtype == "int8"


def test_evaluate_replies_with_local_test_metrics(signed_path: Path, keys: Path) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)

    reply = client_app.app(_instruction(ticket, "evaluate"), _context(_node(signed_path, keys)))

    metrics = reply.content.metric_records[wire.METRICS]
    assert _number(metrics[wire.NUM_EXAMPLES]) == 78  # Cleveland's test rows
    assert 0 <= _number(metrics[wire.ACCURACY]) <= 1
    assert reply.content.array_records == {}


def _number(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _error(reply: Message) -> tuple[int, str]:
    assert reply.has_error()
    return reply.error.code, reply.error.reason or ""


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_missing_ticket_is_an_error_reply_that_names_no_path(
    signed_path: Path, keys: Path, tmp_path: Path, kind: str
) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    node = _node(signed_path, keys, **{"ticket-path": str(tmp_path / "gone.ticket")})

    code, reason = _error(client_app.app(_instruction(ticket, kind), _context(node)))

    assert code == ErrorCode.TICKET
    assert "No such file" in reason and str(tmp_path) not in reason


def test_ticket_of_another_run_is_refused(signed_path: Path, keys: Path) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    message = _instruction(ticket, "train", config={wire.TICKET_ID: "ab" * 32})

    code, reason = _error(client_app.app(message, _context(_node(signed_path, keys))))

    assert code == ErrorCode.TICKET
    assert f"node has ticket {ticket.content_id[:12]}" in reason


def test_unsigned_ticket_is_refused_unless_the_node_allows_it(
    tmp_path: Path, keys: Path, signed_path: Path
) -> None:
    unsigned_path = find_ticket(tmp_path / "u.ticket", density=1.0)
    ticket = read_ticket(unsigned_path, allow_unsigned=True)
    refused = client_app.app(_instruction(ticket, "evaluate"), _context(_node(unsigned_path, keys)))
    allowed = client_app.app(
        _instruction(ticket, "evaluate"),
        _context(_node(unsigned_path, keys, **{"allow-unsigned": True})),
    )

    assert _error(refused)[0] == ErrorCode.TICKET
    assert "not signed" in _error(refused)[1]
    assert not allowed.has_error()


def test_payload_for_another_round_is_an_instruction_error(signed_path: Path, keys: Path) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    layout = PackLayout.from_ticket(ticket)
    stale = encode_vector(
        layout.pack(ticket.weights), kind=Kind.MODEL, ticket_id=ticket.content_id, round=1
    )
    message = _instruction(ticket, "train", server_round=2, payload=stale)

    code, reason = _error(client_app.app(message, _context(_node(signed_path, keys))))

    assert code == ErrorCode.INSTRUCTIONS
    assert "CodecError" in reason and "another round" in reason


@pytest.mark.parametrize(
    ("change", "code", "reason"),
    [
        ({"partition-id": 7}, ErrorCode.LOCAL_DATA, "partition-id must be in [0, 4)"),
        ({"dataset": "cifar"}, ErrorCode.LOCAL_DATA, "unknown dataset 'cifar'"),
        ({"ticket-path": 3}, ErrorCode.NODE_CONFIG, "ticket-path must be a path"),
    ],
)
def test_unusable_node_config_is_an_error_reply(
    signed_path: Path, keys: Path, change: dict[str, object], code: int, reason: str
) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    node = _node(signed_path, keys, **change)  # type: ignore[arg-type]

    got_code, got_reason = _error(client_app.app(_instruction(ticket, "train"), _context(node)))

    assert got_code == code
    assert reason in got_reason


def test_missing_train_setting_is_an_instruction_error(signed_path: Path, keys: Path) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    message = _instruction(ticket, "train", config={wire.LOCAL_EPOCHS: "two"})

    code, reason = _error(client_app.app(message, _context(_node(signed_path, keys))))

    assert code == ErrorCode.INSTRUCTIONS
    assert "train instruction: config.local-epochs: expected int, got 'two'" in reason


def _virtual(partition_id: int, run_config: dict[str, bool | float | int | str]) -> Context:
    """A node as Flower's Simulation Engine makes it: partition keys only, the run's config."""
    node_config = {"partition-id": partition_id, "num-partitions": 4}
    return Context(1, 101, node_config, RecordDict(), run_config)  # type: ignore[arg-type]


def _sim_run_config(ticket: Path, keys: Path, **extra: object) -> dict[str, Any]:
    return {
        "ticket-path": str(ticket),
        "fleet-key": str(keys / "fleet.pub"),
        "allow-unsigned": False,
        "sim-dataset": "heart-uci",
        "sim-partition": "natural",
        "sim-partition-seed": 0,
        "sim-partition-shards": 2,
        "sim-partition-alpha": 0.5,
        **extra,
    }


def test_a_virtual_node_trains_on_its_partition_of_the_run_configs_dataset(
    signed_path: Path, keys: Path
) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)

    reply = client_app.app(
        _instruction(ticket, "train"), _virtual(0, _sim_run_config(signed_path, keys))
    )

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content.metric_records[wire.METRICS]
    assert _number(metrics[wire.NUM_EXAMPLES]) == 226  # Cleveland


def test_a_virtual_node_passes_on_only_the_chosen_partitioners_option(
    signed_path: Path, keys: Path
) -> None:
    run = _sim_run_config(signed_path, keys, **{"sim-partition": "shards"})
    assert client_app.simulated_node_config(run)["partition-shards"] == 2
    assert "partition-alpha" not in client_app.simulated_node_config(run)
    assert "fleet-key" not in client_app.simulated_node_config({**run, "fleet-key": ""})


def test_virtual_nodes_may_take_the_first_parts_of_a_wider_split(
    signed_path: Path, keys: Path
) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    run = _sim_run_config(signed_path, keys, **{"sim-num-partitions": 4})
    # Flower made 3 virtual nodes: node 2 is still Switzerland, the third of 4 hospitals.
    context = Context(1, 101, {"partition-id": 2, "num-partitions": 3}, RecordDict(), run)

    reply = client_app.app(_instruction(ticket, "train"), context)

    assert _number(reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES]) == 75


def test_a_virtual_node_without_sim_dataset_is_a_node_config_error(
    signed_path: Path, keys: Path
) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    run = _sim_run_config(signed_path, keys, **{"sim-dataset": ""})

    code, reason = _error(client_app.app(_instruction(ticket, "train"), _virtual(0, run)))

    assert code == ErrorCode.NODE_CONFIG and "sim-dataset is empty" in reason


def test_a_real_node_ignores_the_run_configs_sim_keys(signed_path: Path, keys: Path) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    node = _node(signed_path, keys)  # hospital 0, natural split
    run = _sim_run_config(signed_path, keys, **{"sim-dataset": "mnist", "ticket-path": "/x"})
    context = Context(1, 101, node, RecordDict(), run)

    reply = client_app.app(_instruction(ticket, "train"), context)

    assert _number(reply.content.metric_records[wire.METRICS][wire.NUM_EXAMPLES]) == 226


# ---------------------------------------------------------------- the kept global model


def _plain_evaluate(ticket: Ticket, values: np.ndarray, server_round: int) -> Message:
    payload = encode_vector(
        values, kind=Kind.MODEL, ticket_id=ticket.content_id, round=server_round
    )
    content = to_flower(
        wire.EvaluateInstruction(ticket.content_id, server_round, payload).to_record()
    )
    with server_identity():
        message = Message(content, 101, "evaluate")
    message.metadata.__dict__["_message_id"] = uuid4().hex
    return message


def test_a_train_instruction_keeps_the_global_model_it_carried(
    signed_path: Path, keys: Path, tmp_path: Path
) -> None:
    from edge_daemon.model_store import load_model

    ticket = read_ticket(signed_path, allow_unsigned=True)
    layout = PackLayout.from_ticket(ticket)
    kept = tmp_path / "model" / "latest.model"
    node = _node(signed_path, keys, **{wire.NODE_MODEL_PATH: str(kept)})
    message = _instruction(ticket, "train", server_round=4)

    reply = client_app.app(message, _context(node))

    assert not reply.has_error()
    header, values = load_model(kept, ticket_id=ticket.content_id, count=layout.size)
    np.testing.assert_array_equal(values, layout.pack(ticket.weights))  # before local training
    assert (header.run_id, header.server_round) == (message.metadata.run_id, 4)

    # A plain evaluate of a later round carries a newer global model: it replaces this one.
    newer = layout.pack(ticket.weights) * 2
    assert not client_app.app(_plain_evaluate(ticket, newer, 5), _context(node)).has_error()
    header, values = load_model(kept, ticket_id=ticket.content_id, count=layout.size)
    assert header.server_round == 5
    np.testing.assert_array_equal(values, newer)


def test_a_canary_probe_is_not_kept_and_a_node_without_model_path_keeps_nothing(
    signed_path: Path, keys: Path, tmp_path: Path
) -> None:
    ticket = read_ticket(signed_path, allow_unsigned=True)
    kept = tmp_path / "latest.model"
    node = _node(signed_path, keys, **{wire.NODE_MODEL_PATH: str(kept)})

    probe = _instruction(ticket, "evaluate")  # carries a schedule: a rollout's canary
    assert not client_app.app(probe, _context(node)).has_error()
    assert not kept.exists()
    assert not client_app.app(
        _instruction(ticket, "train"), _context(_node(signed_path, keys))
    ).has_error()
    assert list(tmp_path.iterdir()) == []


def _renamed(old: str, new: str) -> Ticket:
    """The golden ticket with layer `old`'s parameters called `new`."""
    from tests.ticket.test_bundle import golden_json_parts

    document, masks, weights = golden_json_parts()
    document["model"]["name"] = "conv-net"  # as a non-MLP model would be named
    masks = {name.replace(old, new): mask for name, mask in masks.items()}
    weights = {name.replace(old, new): weight for name, weight in weights.items()}
    layers = document["density"]["layers"]
    document["density"]["layers"] = {name.replace(old, new): d for name, d in layers.items()}
    return build_ticket(Manifest.from_json(document), masks, weights)


def test_a_ticket_whose_model_is_not_an_mlp_is_refused_by_name() -> None:
    with pytest.raises(client_app.TicketUnavailableError, match="'conv-net' is not an MLP"):
        client_app.check_mlp(_renamed("fc1.", "conv1."))
    with pytest.raises(client_app.TicketUnavailableError, match="'conv-net' is not an MLP"):
        client_app.check_mlp(_renamed("fc2.", "fc3."))  # fc1 and fc3: fc2 missing


def test_an_mlp_ticket_passes_the_check(signed_path: Path) -> None:
    client_app.check_mlp(read_ticket(signed_path, allow_unsigned=True))  # raises nothing


def test_a_virtual_node_runs_numpys_blas_on_one_thread_and_a_real_node_keeps_its_own(
    signed_path: Path, keys: Path
) -> None:
    """Two Simulation Engine workers on 2 cores must not spin 2 BLAS threads each."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    ticket = read_ticket(signed_path, allow_unsigned=True)
    client_app.virtual_node_threads.cache_clear()
    with threadpool_limits(limits=2, user_api="blas"):  # as numpy starts on 2 cores
        real = Context(1, 101, _node(signed_path, keys), RecordDict(), {})
        client_app.app(_instruction(ticket, "train"), real)
        assert blas_threads() == {2}

        run = _sim_run_config(signed_path, keys)
        reply = client_app.app(_instruction(ticket, "train"), _virtual(0, run))

        assert not reply.has_error()
        assert blas_threads() == {1}
        client_app.virtual_node_threads().restore_original_limits()
    client_app.virtual_node_threads.cache_clear()
