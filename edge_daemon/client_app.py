"""The device's Flower ClientApp: train or evaluate the cached ticket on local data, packed.

Messages are ticket/wire.py's (TrainInstruction -> TrainReply, EvaluateInstruction ->
EvaluateReply), converted by flower_wire; an evaluate instruction with a probe (a rollout's
canary) trains from the values first. A round this node cannot take part in gets a Flower
`Error` reply with a wire.ErrorCode; the process never crashes on bad input.

Training, evaluation and saliency run in numpy (ticket/numpy_mlp.py): Flower starts this app
afresh for every message, and importing torch alone would cost ~2.4 s and ~220 MB of a device
that has 512 MB-1 GB. Nothing a train, evaluate or query message runs imports torch
(tests/edge_daemon/test_imports.py holds it to that).
"""

import functools
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from edge_daemon import (
    model_push,
    reading_counts,
    search_step,
    secagg_client,
    ticket_install,
)
from edge_daemon.local_data import (
    LocalData,
    LocalDataError,
    LocalDataSpec,
    StoreSpec,
    load_local_data,
    load_store_data,
)
from edge_daemon.secagg_client import LocalUpdate, SecAggStepError
from flower_wire import from_flower
from flower_wire import reply as wire_reply
from ticket import numpy_mlp, runconfig, wire
from ticket.bundle import Ticket, read_ticket
from ticket.codec import Kind, encode_vector
from ticket.errors import TicketError
from ticket.packing import PackLayout
from ticket.train_config import TrainConfig
from ticket.wire import (  # ErrorCode: the codes the server reads, part of the wire contract
    SALIENCY,
    ErrorCode,
    EvaluateInstruction,
    EvaluateReply,
    Schedule,
    SearchStep,
    TrainInstruction,
    TrainReply,
)
from ticket.wire import TRAIN_LOSS as TRAIN_LOSS_METRIC

if TYPE_CHECKING:
    import threadpoolctl

ConfigValue = bool | float | int | str
_log = logging.getLogger(__name__)


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
    model_path: Path | None = None  # [model-path] where the latest global model is kept

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
            virtual_node_threads()
            return cls.from_node_config(
                {**context.node_config, **simulated_node_config(context.run_config)}
            )
        return cls.from_node_config(context.node_config)

    @classmethod
    def from_node_config(cls, config: Mapping[str, ConfigValue]) -> "NodeSettings":
        key = config.get(wire.NODE_FLEET_KEY)
        allow = config.get(wire.NODE_ALLOW_UNSIGNED, False)
        if key is not None and not isinstance(key, str):
            raise NodeConfigError(f"node config: fleet-key must be a path, got {key!r}")
        if not isinstance(allow, bool):
            raise NodeConfigError(f"node config: allow-unsigned must be true/false, got {allow!r}")
        path, directory = _path(config, wire.NODE_TICKET_PATH), _path(config, wire.NODE_TICKET_DIR)
        if (path is None) == (directory is None):
            raise NodeConfigError("node config: set exactly one of ticket-path and ticket-dir")
        data = (
            StoreSpec.from_node_config(config)
            if wire.NODE_READINGS_DB in config
            else LocalDataSpec.from_node_config(config)
        )
        return cls(
            ticket_path=path,
            ticket_dir=directory,
            fleet_key=Path(key) if key else None,
            allow_unsigned=allow,
            data=data,
            state_path=_path(config, wire.NODE_STATE_PATH),
            model_path=_path(config, wire.NODE_MODEL_PATH),
        )


# Flower's Simulation Engine gives each virtual node exactly these keys and nothing else; a
# real node's config always names its ticket and data.
SIMULATED_NODE_KEYS = frozenset({wire.NODE_PARTITION_ID, wire.NODE_NUM_PARTITIONS})


@functools.cache
def virtual_node_threads() -> "threadpoolctl.threadpool_limits":
    """Once per process: numpy's BLAS on one thread in a Simulation Engine worker (the limit
    returned is held for the life of the process).

    The engine runs one worker per `client-resources-num-cpus` (1 here) and each worker's
    OpenBLAS would start a thread per core: on 2 busy cores, 2 workers spin 4 threads, and a
    (10 x 784) @ (784 x 300) product took ~50 ms instead of ~0.6 ms (bench/results/scale.md).
    A real node's ClientApp process keeps numpy's default.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def simulated_node_config(run_config: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
    """The node config a virtual node would have had, from the run config's sim-* keys (and its
    ticket-path, fleet-key, allow-unsigned: the Simulation Engine runs every virtual node on the
    server's machine, so the server's ticket is theirs too)."""
    try:
        run = runconfig.parse(run_config)
    except runconfig.RunConfigError as error:
        raise NodeConfigError(f"virtual node (Simulation Engine): {error}") from None
    sim, where = run.simulation, run.placement
    if sim.sim_dataset is None:
        raise NodeConfigError(
            "virtual node (Simulation Engine): the run config's sim-dataset is empty"
        )
    config: dict[str, ConfigValue] = {
        wire.NODE_ALLOW_UNSIGNED: run.training.allow_unsigned,
        wire.NODE_DATASET: sim.sim_dataset,
        wire.NODE_PARTITION: sim.sim_partition,
        wire.NODE_PARTITION_SEED: sim.sim_partition_seed,
    }
    # A path left empty in the run config means "none" there; a node config omits it instead.
    paths = ((wire.NODE_TICKET_PATH, where.ticket_path), (wire.NODE_FLEET_KEY, where.fleet_key))
    for key, path in paths:
        if path is not None:
            config[key] = str(path)
    # N virtual nodes take partitions 0..N-1 of an N-way split unless the run asks for a wider
    # one (e.g. the first 3 of heart-uci's 4 hospitals).
    if sim.sim_num_partitions:
        config[wire.NODE_NUM_PARTITIONS] = sim.sim_num_partitions
    # The run config holds every partitioner's option; pass on only the chosen one's.
    if sim.sim_partition == "shards":
        config[wire.NODE_PARTITION_SHARDS] = sim.sim_partition_shards
    if sim.sim_partition == "dirichlet":
        config[wire.NODE_PARTITION_ALPHA] = sim.sim_partition_alpha
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
    search: SearchStep | None = None  # a fleet search's round (edge_daemon/search_step.py)

    @property
    def size(self) -> int:
        """Payload bytes received: the global values and a search's mask, as the server's
        downlink counts them (ticket/wire.py TrainInstruction.size)."""
        return len(self.payload) + (0 if self.search is None else len(self.search.mask))

    @classmethod
    def from_message(cls, message: Message, *, is_train: bool) -> "Instructions":
        """The typed instruction; a malformed one raises WireError (a TicketError)."""
        records = from_flower(message.content)
        if is_train:
            ask = TrainInstruction.from_record(records)
            schedule = _config(ask.schedule)
            return cls(
                ask.ticket_id,
                ask.server_round,
                ask.payload,
                ask.dtype,
                schedule,
                ask.seed,
                ask.search,
            )
        # An evaluate instruction with a probe is a rollout's canary (server/rollout.py):
        # train from the values sent, then score; nothing is kept.
        score = EvaluateInstruction.from_record(records)
        probe = score.probe
        train = None if probe is None else _config(probe.schedule)
        seed = 0 if probe is None else probe.seed
        return cls(score.ticket_id, score.server_round, score.payload, "float32", train, seed)


def _config(schedule: Schedule) -> TrainConfig:
    """The core's training config (which checks the ranges) of a wire schedule."""
    return TrainConfig(
        epochs=schedule.epochs,
        batch_size=schedule.batch_size,
        lr=schedule.lr,
        optimizer=schedule.optimizer,
    )


# eq=False: holds arrays.
@dataclass(frozen=True, eq=False)
class Workspace:
    """A handler's inputs, ready: the verified ticket and the global values over its weights."""

    ticket: Ticket
    params: numpy_mlp.Params  # every parameter, full shape; zero where the ticket pruned
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
        record_round(
            work.node.state_path,
            bytes_sent=len(payload),
            loss=loss,
            task=task,
            run_id=message.metadata.run_id,
        )
    return wire_reply(message, TrainReply(payload, examples, loss).to_record())


def train_secure(message: Message, context: Context) -> Message:
    """Trip A of secure aggregation: train (if a member this round), mask, advertise keys."""
    trained: list[tuple[NodeSettings, float, Instructions]] = []

    def trainer() -> LocalUpdate:
        task, work = prepare(message, context, is_train=True)
        start = work.layout.pack(work.params)  # float32 [k]: the global as decoded
        values, loss, seed = train_local(task, work, node_id=context.node_id)
        trained.append((work.node, loss, task))
        return LocalUpdate(values - start, int(work.data.y_train.shape[0]), loss, seed)

    try:
        answer, sent = secagg_client.train_step(message, context, trainer)
    except SKIP_ROUND as error:
        return error_reply(message, error)
    for node, loss, task in trained:
        if node.state_path is not None and sent:
            record_round(
                node.state_path,
                bytes_sent=sent,
                loss=loss,
                task=task,
                run_id=message.metadata.run_id,
            )
    return answer


@app.query()
def query(message: Message, context: Context) -> Message:
    """A pushed ticket (`ticket deploy`), the run's final model, or secure aggregation's key
    setup and unmask steps."""
    if ticket_install.is_install(message):
        return ticket_install.install(message, context.node_config)
    if model_push.is_model_push(message):
        return model_push.keep_pushed_model(message, context.node_config, _ticket_reader(context))
    try:
        if not secagg_client.is_secure(message):
            raise InstructionError("a query must carry a secure aggregation step")
        return secagg_client.query_step(message, context, functools.partial(_counts, context))
    except SKIP_ROUND as error:
        return error_reply(message, error)


def _counts(context: Context, schema: str) -> npt.NDArray[np.int64]:
    return reading_counts.local_counts(NodeSettings.from_context(context).data, schema)


def record_round(
    state_path: Path, *, bytes_sent: int, loss: float, task: Instructions, run_id: int
) -> None:
    """Count the round in the daemon's durable state (`edge-daemon status` shows it): bytes
    both ways, and which run, round and ticket it was."""
    from edge_daemon.state import update_state

    at = datetime.now(UTC)
    update_state(
        state_path,
        lambda state: state.with_round(
            at=at,
            bytes_sent=bytes_sent,
            metrics={TRAIN_LOSS_METRIC: loss},
            bytes_received=task.size,
            run_id=run_id,
            server_round=task.server_round,
            ticket_id=task.ticket_id,
        ),
    )


@app.evaluate()
def evaluate_(message: Message, context: Context) -> Message:
    try:
        task, work = prepare(message, context, is_train=False)
        if work.data.y_test.shape[0] == 0:
            raise LocalDataError("no local test rows to evaluate on")
        params = work.params
        if task.train is not None:  # a canary probe: how well this ticket learns here
            params, _, _ = fit(task, work, node_id=context.node_id)
        result = numpy_mlp.evaluate(params, work.data.x_test, work.data.y_test)
    except SKIP_ROUND as error:
        return error_reply(message, error)
    # auc is None for a non-binary task, or when the test rows hold one class.
    scores = EvaluateReply(result.examples, result.loss, result.accuracy, result.auc)
    return wire_reply(message, scores.to_record())


def prepare(
    message: Message, context: Context, *, is_train: bool
) -> tuple[Instructions, Workspace]:
    """Type the configs, load and check the ticket, decode the global values over its weights."""
    node = NodeSettings.from_context(context)
    task = Instructions.from_message(message, is_train=is_train)
    ticket = read_node_ticket(node, task.ticket_id)
    if task.search is not None:
        ticket = search_step.narrowed(ticket, task.search.mask)
    layout = PackLayout.from_ticket(ticket)
    values = layout.decode_model(
        task.payload, ticket_id=task.ticket_id, server_round=task.server_round
    )
    params = {name: np.array(w) for name, w in ticket.weights.items()} | layout.unpack(values)
    # Kept before the local data is read: a device without labelled readings still gets a
    # model to predict with. A search round's candidate and a canary's probe are not the
    # fleet's model, so they are not kept.
    if node.model_path is not None and task.search is None and (is_train or task.train is None):
        keep_model(node.model_path, values, task, run_id=message.metadata.run_id)
    preprocessing = ticket.manifest.data.preprocessing
    data = (
        load_store_data(node.data, preprocessing)
        if isinstance(node.data, StoreSpec)
        else load_local_data(node.data, preprocessing)
    )
    check_features(data, params)
    return task, Workspace(ticket, params, layout, data, node)


def keep_model(
    path: Path, values: npt.NDArray[np.float32], task: Instructions, *, run_id: int
) -> None:
    """Store the global model for `edge-daemon predict`; a failed write costs no round."""
    from edge_daemon.model_store import save_model

    try:
        save_model(
            path,
            values,
            ticket_id=task.ticket_id,
            run_id=run_id,
            server_round=task.server_round,
            received_at=datetime.now(UTC),
        )
    except OSError as error:
        _log.warning("cannot keep the global model for predict: %s", error.strerror)


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
    if task.search is not None and task.search.objective == SALIENCY:
        if task.train is None:
            raise InstructionError("train instructions without a training config")
        # fed-snip: the "trained" values are the global ones plus this node's saliency, so the
        # update (plaintext, or the delta under secure aggregation) is the saliency itself.
        start = work.layout.pack(work.params)
        saliency, loss = numpy_mlp.connection_saliency(
            work.params,
            work.ticket.masks,
            work.data.x_train,
            work.data.y_train,
            scale=task.search.saliency_scale,
        )
        # Dense parameters (biases) carry no saliency: their update is zero.
        scores = {name: np.zeros_like(p) for name, p in work.params.items()} | saliency
        seed = local_seed(task.seed, task.server_round, node_id)
        return start + work.layout.pack(scores), loss, seed
    params, loss, seed = fit(task, work, node_id=node_id)
    return work.layout.pack(params), loss, seed


def fit(
    task: Instructions, work: Workspace, *, node_id: int
) -> tuple[numpy_mlp.Params, float, int]:
    """(the surviving weights trained on local data, last epoch's mean loss, the round's seed);
    the pruned weights stay exactly zero."""
    if task.train is None:
        raise InstructionError("train instructions without a training config")
    seed = local_seed(task.seed, task.server_round, node_id)
    params, loss = numpy_mlp.train_masked(
        work.params, work.ticket.masks, work.data.x_train, work.data.y_train, task.train, seed=seed
    )
    return params, loss, seed


def read_node_ticket(node: NodeSettings, ticket_id: str) -> Ticket:
    """The cached ticket, verified against the fleet key, and only if it is the run's ticket."""
    if node.ticket_dir is not None and not node.ticket_file(ticket_id).exists():
        raise TicketUnavailableError(f"ticket {ticket_id[:12]} is not cached on this device")
    try:
        keys = [node.fleet_key.read_bytes()] if node.fleet_key is not None else []
        ticket = read_ticket(
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
    check_mlp(ticket)
    return ticket


def check_mlp(ticket: Ticket) -> None:
    """Refuse a ticket the numpy trainer cannot run: its weights must be an MLP's (fc1..fcN,
    each [out, in] feeding the next) with exactly the layer weights masked. Every model in
    ticket/models.py is such an MLP today; a conv model would need its own numpy path here, not
    a torch fallback that puts torch back into every device's ClientApp."""
    model = ticket.manifest.model.name
    weights = ticket.weights
    if not numpy_mlp.is_mlp(weights):
        raise TicketUnavailableError(
            f"the ticket's model {model!r} is not an MLP (fc1..fcN); this device trains MLPs only"
        )
    layers = len(weights) // 2
    width: int | None = None
    for index in range(1, layers + 1):
        weight, bias = weights[f"fc{index}.weight"], weights[f"fc{index}.bias"]
        if (
            weight.ndim != 2
            or bias.shape != weight.shape[:1]
            or (width is not None and weight.shape[1] != width)
        ):
            raise TicketUnavailableError(
                f"the ticket's model {model!r}: layer fc{index}'s shapes do not chain "
                f"(weight {list(weight.shape)}, bias {list(bias.shape)})"
            )
        width = weight.shape[0]
    if set(ticket.masks) != {f"fc{index}.weight" for index in range(1, layers + 1)}:
        raise TicketUnavailableError(
            f"the ticket's model {model!r}: masks must cover exactly the layers' weights"
        )


def check_features(data: LocalData, params: numpy_mlp.Params) -> None:
    """LocalDataError when the local rows are not as wide as the model's input."""
    wanted = params["fc1.weight"].shape[1]
    for x in (data.x_train, data.x_test):
        width = int(np.prod(x.shape[1:], dtype=np.int64))
        if width != wanted:
            raise LocalDataError(f"local rows have {width} features, the ticket's model {wanted}")


def _ticket_reader(context: Context) -> model_push.TicketReader:
    """The node's cached ticket by content id, verified; a refusal as a TicketError."""

    def read(ticket_id: str) -> Ticket:
        try:
            return read_node_ticket(NodeSettings.from_context(context), ticket_id)
        except (NodeConfigError, TicketUnavailableError) as error:
            raise TicketError(str(error)) from error

    return read


def local_seed(base: int, server_round: int, node_id: int) -> int:
    """A data-order seed distinct per (run seed, round, node) and stable across machines."""
    digest = hashlib.sha256(f"ticketfleet.local:{base}:{server_round}:{node_id}".encode())
    return int.from_bytes(digest.digest()[:4], "little")


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
