"""The device's Flower ClientApp: train or evaluate the cached ticket on local data, packed.

Wire schema (must match server/strategy.py; no indices travel, both ends derive the layout from
the ticket): instruction = ArrayRecord "arrays" {"packed": codec bytes of kind MODEL} plus
ConfigRecord "config"; train reply = ArrayRecord "arrays" {"packed": codec bytes of kind UPDATE}
plus MetricRecord "metrics" {"num-examples", "train-loss"}; evaluate reply = MetricRecord
"metrics" {"num-examples", "loss", "accuracy", and "auc" for binary tasks}; an evaluate
instruction whose config carries a training schedule (a rollout's canary probe) trains from
the values first. A round this node cannot take part in gets a Flower `Error` reply; the
process never crashes on bad input.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.clientapp import ClientApp
from torch import nn

from edge_daemon import secagg_client, ticket_install
from edge_daemon.local_data import (
    LocalData,
    LocalDataError,
    LocalDataSpec,
    StoreSpec,
    load_local_data,
    load_store_data,
)
from edge_daemon.secagg_client import LocalUpdate, SecAggStepError
from ticket.bundle import Ticket, load_ticket, to_torch_masks
from ticket.codec import Kind, decode_vector, encode_vector
from ticket.errors import TicketError
from ticket.packing import PackLayout
from ticket.train import TrainConfig, evaluate, load_weights, snapshot, train_masked

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
PAYLOAD_KEY = "packed"
# Raw codec bytes ride in an Array's data; a stype other than "numpy.ndarray" makes an
# accidental Array.numpy() on them fail loudly instead of parsing codec bytes as .npy.
PAYLOAD_STYPE = "ticketfleet.codec"

ConfigValue = bool | float | int | str


class ErrorCode(IntEnum):
    """`Error.code` of our replies; above Flower's own codes (0-8, flwr.common.constant)."""

    NODE_CONFIG = 1001  # this node's config is unusable
    TICKET = 1002  # the ticket is missing, unverifiable, or not the one the run trains
    LOCAL_DATA = 1003  # no usable local data
    INSTRUCTIONS = 1004  # the message is malformed (bad config, undecodable payload)
    SECAGG = 1005  # a secure aggregation step failed or was refused (state lost, bad message)


class NodeConfigError(Exception):
    """A node config key is missing or ill-typed."""


class InstructionError(Exception):
    """The server's message lacks a record or a config key, or one has the wrong type."""


class TicketUnavailableError(Exception):
    """The node has no cached ticket, or not the one this run trains."""


@dataclass(frozen=True)
class NodeSettings:
    """This node's `context.node_config`, typed once at the top of a handler."""

    # Exactly one of: [ticket-path] one ticket file, or [ticket-dir] the daemon's ticket cache,
    # where the run's ticket is <ticket-dir>/<content id>.ticket.
    ticket_path: Path | None
    ticket_dir: Path | None
    fleet_key: Path | None  # [fleet-key] PEM public key that must have signed the ticket
    allow_unsigned: bool  # [allow-unsigned] explicit opt-out of signature checks (tests, demos)
    data: LocalDataSpec | StoreSpec  # [readings-db] the device's readings, else [dataset] ...
    state_path: Path | None = None  # [state-path] the daemon's durable state: rounds joined

    def ticket_file(self, ticket_id: str) -> Path:
        if self.ticket_path is not None:
            return self.ticket_path
        if self.ticket_dir is None:  # from_node_config sets exactly one of the two
            raise NodeConfigError("node config: set exactly one of ticket-path and ticket-dir")
        if not all(c in "0123456789abcdef" for c in ticket_id) or len(ticket_id) != 64:
            raise InstructionError("the run's ticket id is not a content id")
        return self.ticket_dir / f"{ticket_id}.ticket"

    @classmethod
    def from_context(cls, context: Context) -> "NodeSettings":
        """A real node's settings come from its node config; a virtual node's from the run's."""
        if set(context.node_config) == SIMULATED_NODE_KEYS:
            return cls.from_node_config(
                {**context.node_config, **simulated_node_config(context.run_config)}
            )
        return cls.from_node_config(context.node_config)

    @classmethod
    def from_node_config(cls, config: Mapping[str, ConfigValue]) -> "NodeSettings":
        key = config.get("fleet-key")
        allow = config.get("allow-unsigned", False)
        if key is not None and not isinstance(key, str):
            raise NodeConfigError(f"node config: fleet-key must be a path, got {key!r}")
        if not isinstance(allow, bool):
            raise NodeConfigError(f"node config: allow-unsigned must be true/false, got {allow!r}")
        path, directory = _path(config, "ticket-path"), _path(config, "ticket-dir")
        if (path is None) == (directory is None):
            raise NodeConfigError("node config: set exactly one of ticket-path and ticket-dir")
        data = (
            StoreSpec.from_node_config(config)
            if "readings-db" in config
            else LocalDataSpec.from_node_config(config)
        )
        return cls(
            ticket_path=path,
            ticket_dir=directory,
            fleet_key=Path(key) if key else None,
            allow_unsigned=allow,
            data=data,
            state_path=_path(config, "state-path"),
        )


# Flower's Simulation Engine gives each virtual node exactly these keys and nothing else; a
# real node's config always names its ticket and data.
SIMULATED_NODE_KEYS = frozenset({"partition-id", "num-partitions"})
# run config key -> node config key, for virtual nodes. The Simulation Engine runs every virtual
# node on the server's machine, so the server's ticket path is theirs too.
_SIMULATION_KEYS = {
    "ticket-path": "ticket-path",
    "fleet-key": "fleet-key",
    "allow-unsigned": "allow-unsigned",
    "sim-dataset": "dataset",
    "sim-partition": "partition",
    "sim-partition-seed": "partition-seed",
    "sim-partition-shards": "partition-shards",
    "sim-partition-alpha": "partition-alpha",
}


def simulated_node_config(run_config: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
    """The node config a virtual node would have had, from the run config's `sim-*` keys."""
    if not run_config.get("sim-dataset"):
        raise NodeConfigError(
            "virtual node (Simulation Engine): the run config's sim-dataset is empty"
        )
    config = {
        node_key: run_config[run_key]
        for run_key, node_key in _SIMULATION_KEYS.items()
        if run_key in run_config
    }
    # N virtual nodes take partitions 0..N-1 of an N-way split unless the run asks for a wider
    # one (e.g. the first 3 of heart-uci's 4 hospitals).
    split = run_config.get("sim-num-partitions", 0)
    if split:
        config["num-partitions"] = split
    # An empty fleet-key in the run config means "none" there; a node config omits it instead.
    if config.get("fleet-key") == "":
        del config["fleet-key"]
    # The run config holds every partitioner's option; pass on only the chosen one's.
    for key, scheme in (("partition-shards", "shards"), ("partition-alpha", "dirichlet")):
        if config.get("partition") != scheme:
            config.pop(key, None)
    return config


@dataclass(frozen=True)
class Instructions:
    """What the server asked for in one message."""

    ticket_id: str
    server_round: int
    payload: bytes  # codec bytes of the global values (kind MODEL)
    dtype: str  # encoding of the reply's update
    train: TrainConfig | None  # None for evaluation
    seed: int

    @classmethod
    def from_message(cls, message: Message, *, is_train: bool) -> "Instructions":
        content = message.content
        if ARRAYS_KEY not in content.array_records or CONFIG_KEY not in content.config_records:
            raise InstructionError(f"message lacks the {ARRAYS_KEY!r} or {CONFIG_KEY!r} record")
        arrays, config = content.array_records[ARRAYS_KEY], content.config_records[CONFIG_KEY]
        if PAYLOAD_KEY not in arrays or arrays[PAYLOAD_KEY].stype != PAYLOAD_STYPE:
            raise InstructionError(f"message lacks a {PAYLOAD_KEY!r} payload")
        # An evaluate message with a training schedule is a rollout's canary probe
        # (server/rollout.py): train from the values sent, then score; nothing is kept.
        is_probe = not is_train and "local-epochs" in config
        train = None
        if is_train or is_probe:
            train = TrainConfig(
                epochs=_get(config, "local-epochs", int),
                batch_size=_get(config, "batch-size", int),
                lr=float(_get(config, "lr", float)),
                optimizer=_get(config, "optimizer", str),
            )
        return cls(
            ticket_id=_get(config, "ticket-id", str),
            server_round=_get(config, "server-round", int),
            payload=arrays[PAYLOAD_KEY].data,
            dtype=_get(config, "dtype", str) if is_train else "float32",
            train=train,
            seed=_get(config, "seed", int) if train is not None else 0,
        )


# eq=False: holds a model and tensors.
@dataclass(frozen=True, eq=False)
class Workspace:
    """A handler's inputs, ready: the verified ticket, its model holding the global values."""

    ticket: Ticket
    model: nn.Module
    layout: PackLayout
    data: LocalData
    node: NodeSettings


app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    if secagg_client.is_secure(message):
        return train_secure(message, context)
    try:
        task, work = prepare(message, context, is_train=True)
        payload, loss = train_and_pack(task, work, node_id=context.node_id)
    except SKIP_ROUND as error:
        return error_reply(message, error)
    examples = int(work.data.y_train.shape[0])
    if work.node.state_path is not None:
        record_round(work.node.state_path, bytes_sent=len(payload), loss=loss)
    return reply(message, payload, {"num-examples": examples, "train-loss": loss})


def train_secure(message: Message, context: Context) -> Message:
    """Trip A of secure aggregation: train (if a member this round), mask, advertise keys."""
    trained: list[tuple[NodeSettings, float]] = []

    def trainer() -> LocalUpdate:
        task, work = prepare(message, context, is_train=True)
        start = work.layout.pack(snapshot(work.model))  # float32 [k]: the global as decoded
        values, loss, seed = train_local(task, work, node_id=context.node_id)
        trained.append((work.node, loss))
        return LocalUpdate(values - start, int(work.data.y_train.shape[0]), loss, seed)

    try:
        answer, sent = secagg_client.train_step(message, context, trainer)
    except SKIP_ROUND as error:
        return error_reply(message, error)
    for node, loss in trained:
        if node.state_path is not None and sent:
            record_round(node.state_path, bytes_sent=sent, loss=loss)
    return answer


@app.query()
def query(message: Message, context: Context) -> Message:
    """A pushed ticket (`ticket deploy`), or secure aggregation's key setup and unmask steps."""
    if ticket_install.is_install(message):
        return ticket_install.install(message, context.node_config)
    try:
        if not secagg_client.is_secure(message):
            raise InstructionError("a query must carry a secure aggregation step")
        return secagg_client.query_step(message, context)
    except SKIP_ROUND as error:
        return error_reply(message, error)


def record_round(state_path: Path, *, bytes_sent: int, loss: float) -> None:
    """Count the round in the daemon's durable state (`edge-daemon status` shows it)."""
    from edge_daemon.state import update_state

    at = datetime.now(UTC)
    update_state(
        state_path,
        lambda state: state.with_round(at=at, bytes_sent=bytes_sent, metrics={"train-loss": loss}),
    )


@app.evaluate()
def evaluate_(message: Message, context: Context) -> Message:
    try:
        task, work = prepare(message, context, is_train=False)
        if work.data.y_test.shape[0] == 0:
            raise LocalDataError("no local test rows to evaluate on")
        if task.train is not None:  # a canary probe: how well this ticket learns here
            train_local(task, work, node_id=context.node_id)
        result = evaluate(work.model, work.data.x_test, work.data.y_test)
    except SKIP_ROUND as error:
        return error_reply(message, error)
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": result.examples,
        "loss": result.loss,
        "accuracy": result.accuracy,
    }
    if result.auc is not None:  # None: not a binary task, or the test rows hold one class
        metrics["auc"] = result.auc
    return reply(message, None, metrics)


def prepare(
    message: Message, context: Context, *, is_train: bool
) -> tuple[Instructions, Workspace]:
    """Type the configs, load and check the ticket, decode the global values into its model."""
    node = NodeSettings.from_context(context)
    task = Instructions.from_message(message, is_train=is_train)
    ticket, model = read_node_ticket(node, task.ticket_id)
    layout = PackLayout.from_ticket(ticket)
    values = decode_vector(
        task.payload,
        kind=Kind.MODEL,
        ticket_id=task.ticket_id,
        round=task.server_round,
        length=layout.size,
        segment_sizes=layout.segment_sizes,
    )
    load_weights(model, layout.unpack_torch(values))
    preprocessing = ticket.manifest["data"].get("preprocessing")
    data = (
        load_store_data(node.data, preprocessing)
        if isinstance(node.data, StoreSpec)
        else load_local_data(node.data, preprocessing)
    )
    return task, Workspace(ticket, model, layout, data, node)


def train_and_pack(task: Instructions, work: Workspace, *, node_id: int) -> tuple[bytes, float]:
    """Train the surviving weights on local data; (UPDATE payload, last epoch's mean loss)."""
    values, loss, seed = train_local(task, work, node_id=node_id)
    payload = encode_vector(
        values,
        kind=Kind.UPDATE,
        ticket_id=task.ticket_id,
        round=task.server_round,
        dtype=task.dtype,
        segment_sizes=work.layout.segment_sizes,
        rng=np.random.default_rng(seed),  # int8 stochastic rounding
    )
    return payload, loss


def train_local(
    task: Instructions, work: Workspace, *, node_id: int
) -> tuple[npt.NDArray[np.float32], float, int]:
    """Train the surviving weights on local data; (packed values [k], last epoch's mean loss,
    the seed of this node's round)."""
    if task.train is None:
        raise InstructionError("train instructions without a training config")
    seed = local_seed(task.seed, task.server_round, node_id)
    mask = to_torch_masks(work.ticket)
    loss = train_masked(
        work.model, mask, work.data.x_train, work.data.y_train, task.train, seed=seed
    )
    return work.layout.pack(snapshot(work.model)), loss, seed


def read_node_ticket(node: NodeSettings, ticket_id: str) -> tuple[Ticket, nn.Module]:
    """The cached ticket, verified against the fleet key, and only if it is the run's ticket."""
    if node.ticket_dir is not None and not node.ticket_file(ticket_id).exists():
        raise TicketUnavailableError(f"ticket {ticket_id[:12]} is not cached on this device")
    try:
        keys = [node.fleet_key.read_bytes()] if node.fleet_key is not None else []
        ticket, model = load_ticket(
            node.ticket_file(ticket_id), trusted_keys=keys, allow_unsigned=node.allow_unsigned
        )
    except OSError as error:
        # Never name the path: it may sit in the user's data directory.
        raise TicketUnavailableError(
            f"cannot read the cached ticket or fleet key: {error.strerror}"
        ) from error
    except TicketError as error:
        raise TicketUnavailableError(f"cached ticket refused: {error}") from error
    if ticket.content_id != ticket_id:
        raise TicketUnavailableError(
            f"node has ticket {ticket.content_id[:12]}, the run trains {ticket_id[:12]}"
        )
    return ticket, model


def local_seed(base: int, server_round: int, node_id: int) -> int:
    """A data-order seed distinct per (run seed, round, node) and stable across machines."""
    digest = hashlib.sha256(f"ticketfleet.local:{base}:{server_round}:{node_id}".encode())
    return int.from_bytes(digest.digest()[:4], "little")


def reply(
    message: Message, payload: bytes | None, metrics: dict[str, MetricRecordValues]
) -> Message:
    content = RecordDict({METRICS_KEY: MetricRecord(metrics)})
    if payload is not None:
        content[ARRAYS_KEY] = ArrayRecord({PAYLOAD_KEY: payload_array(payload)})
    return Message(content, reply_to=message)


def payload_array(payload: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(payload),), stype=PAYLOAD_STYPE, data=payload)


def error_reply(message: Message, error: Exception) -> Message:
    code = next(code for kinds, code in _ERROR_CODES if isinstance(error, kinds))
    reason = f"{type(error).__name__}: {error}"
    return Message(Error(code=int(code), reason=reason), reply_to=message)


_ERROR_CODES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], ErrorCode], ...] = (
    (NodeConfigError, ErrorCode.NODE_CONFIG),
    (TicketUnavailableError, ErrorCode.TICKET),
    (LocalDataError, ErrorCode.LOCAL_DATA),
    (SecAggStepError, ErrorCode.SECAGG),
    ((InstructionError, TicketError), ErrorCode.INSTRUCTIONS),
)
SKIP_ROUND = (
    SecAggStepError,
    NodeConfigError,
    TicketUnavailableError,
    LocalDataError,
    InstructionError,
    TicketError,
)


def _path(config: Mapping[str, ConfigValue], key: str) -> Path | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise NodeConfigError(f"node config: {key} must be a path, got {value!r}")
    return Path(value)


def _get(config: Mapping[str, object], key: str, kind: type) -> Any:
    value = config.get(key)
    # bool is an int subclass: local-epochs=true is a mistake, not one epoch.
    is_number = kind is float and isinstance(value, int | float)
    if isinstance(value, bool) or not (isinstance(value, kind) or is_number):
        raise InstructionError(f"config {key!r} must be {kind.__name__}, got {value!r}")
    return value
