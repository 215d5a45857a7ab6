"""Every record that crosses a process boundary, typed, and every key it is written with.

The server (server/strategy.py, secagg_round.py, rollout.py) and the device (edge_daemon/
client_app.py, secagg_client.py, ticket_install.py) build and read their Flower messages only
through the dataclasses here; `flower_wire` converts a `Records` to a Flower RecordDict and
back, so this core stays free of flwr. No key is written anywhere else (tests/ticket/
test_wire.py walks the sources to keep it so).

Layout (no indices travel: both ends derive the layout from the ticket):
  train instruction    arrays.packed (codec bytes, kind MODEL) + config {ticket-id,
                       server-round, dtype, local-epochs, batch-size, lr, optimizer, seed};
                       under secure aggregation it rides beside a SecAggRequest
                       a fleet search's round adds arrays.search-mask and config
                       {objective, saliency-scale} (SearchStep)
  train reply          arrays.packed (codec bytes, kind UPDATE) + metrics {num-examples,
                       train-loss}
  evaluate instruction arrays.packed + config {ticket-id, server-round}; a rollout's canary
                       probe adds the training schedule and seed
  evaluate reply       metrics {num-examples, loss, accuracy, auc (binary tasks only)}
  install push         bundle.ticket (.ticket bytes) + config {ticket-id}; ack {status,
                       ticket-id, reason}
  secure aggregation   secagg {round, weight-cap, mask-request, ...} both ways (SecAggRequest,
                       SecAggReply)
Decoding is strict: a missing key, an unknown one, a wrong type (a bool is not an int; an int is
a float) or a wrong stype raises WireError naming the message and the dotted field.
"""

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, Final, Literal, Self, TypeVar

from ticket.errors import TicketError

if TYPE_CHECKING:  # ticket.secagg loads numpy; the daemon's idle loop imports this module
    from ticket.secagg.privacy import SkellamParams

# Record names in a message.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
BUNDLE = "bundle"
FINAL_MODEL = "final-model"  # the run's final global model, sent after its last round
ACK = "ack"
SECAGG = "secagg"
# Array names and their stypes: raw bytes ride in an Array's data, and a stype other than
# "numpy.ndarray" makes an accidental Array.numpy() on them fail loudly.
PACKED = "packed"
CODEC_STYPE = "ticketfleet.codec"
TICKET = "ticket"
BUNDLE_STYPE = "ticketfleet.bundle"
SEARCH_MASK = "search-mask"  # a fleet search's current mask (ticket.fleet_search.mask_bits)
MASK_STYPE = "ticketfleet.mask"
# Config keys of instructions.
TICKET_ID = "ticket-id"
SERVER_ROUND = "server-round"
DTYPE = "dtype"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
LR = "lr"
OPTIMIZER = "optimizer"
SEED = "seed"
OBJECTIVE = "objective"  # a fleet search's round: "update" or "saliency"
SALIENCY_SCALE = "saliency-scale"
# Metric keys of replies.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
LOSS = "loss"
ACCURACY = "accuracy"
AUC = "auc"
# Install acknowledgement.
STATUS = "status"
REASON = "reason"
INSTALLED: Final = "installed"
REJECTED: Final = "rejected"
KEPT: Final = "kept"
AckStatus = Literal["installed", "rejected"]  # INSTALLED, REJECTED
ModelAckStatus = Literal["kept", "rejected"]  # KEPT, REJECTED
# Secure aggregation, server to node ...
ROUND = "round"
WEIGHT_CAP = "weight-cap"
MASK_REQUEST = "mask-request"
UNMASK_REQUEST = "unmask-request"
KEY_BUNDLE = "key-bundle"
ADVERT_ROUND = "advert-round"
BUNDLE_ROUND = "bundle-round"
DP_CLIP_NORM = "dp-clip-norm"
DP_SCALE = "dp-scale"
DP_NOISE_VAR = "dp-noise-var"
COUNTS_SCHEMA = "counts-schema"  # a mask request for counts of the named readings schema
COUNT_CAP = "count-cap"  # ... each of them at most this many
# ... and node to server.
MASKED_INPUT = "masked-input"
KEY_ADVERT = "key-advert"
UNMASK_RESPONSE = "unmask-response"
SHARE_BUNDLE = "share-bundle"

Scalar = int | float | str | bytes | bool
# Lists are Flower's too; no wire message sends one, and every decoder refuses one by type.
ConfigValue = Scalar | list[int] | list[float] | list[str] | list[bytes] | list[bool]
MetricValue = int | float | list[int] | list[float]
_T = TypeVar("_T")


class ErrorCode(IntEnum):
    """`Error.code` of a device's replies; above Flower's own codes (0-8, flwr.common.constant)."""

    NODE_CONFIG = 1001  # this node's config is unusable
    TICKET = 1002  # the ticket is missing, unverifiable, or not the one the run trains
    LOCAL_DATA = 1003  # no usable local data
    INSTRUCTIONS = 1004  # the message is malformed (bad config, undecodable payload)
    SECAGG = 1005  # a secure aggregation step failed or was refused (state lost, bad message)


class WireError(TicketError):
    """A record does not hold the message it should; the text names message and field."""


@dataclass(frozen=True)
class Blob:
    """Raw bytes in an Array, tagged with their stype."""

    stype: str
    data: bytes


@dataclass(frozen=True)
class Records:
    """A message's records in plain Python: record name -> {key -> value}, by record kind."""

    arrays: Mapping[str, Mapping[str, Blob]] = field(default_factory=dict)
    configs: Mapping[str, Mapping[str, ConfigValue]] = field(default_factory=dict)
    metrics: Mapping[str, Mapping[str, MetricValue]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted({*self.arrays, *self.configs, *self.metrics})

    def merged(self, other: "Records") -> "Records":
        """Two messages in one (a secure round's train message); their records stay apart."""
        if shared := set(self.names()) & set(other.names()):
            raise WireError(f"records {sorted(shared)} would be sent twice")
        return Records(
            {**self.arrays, **other.arrays},
            {**self.configs, **other.configs},
            {**self.metrics, **other.metrics},
        )


# ---------------------------------------------------------------- strict reading


class _Fields:
    """One record's keys, read by type; `done()` refuses the keys nobody asked for."""

    def __init__(self, what: str, name: str, values: Mapping[str, object]) -> None:
        self._what, self._name, self._values = what, name, values
        self._read: set[str] = set()

    def error(self, key: str, problem: str) -> WireError:
        return WireError(f"{self._what}: {self._name}.{key}: {problem}")

    def has(self, key: str) -> bool:
        return key in self._values

    def _get(self, key: str, kind: str) -> object:
        self._read.add(key)
        if key not in self._values:
            raise self.error(key, f"missing (expected {kind})")
        return self._values[key]

    def integer(self, key: str, *, minimum: int | None = None) -> int:
        value = self._get(key, "int")
        # bool is an int subclass: local-epochs=true is a mistake, not one epoch.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected int, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, *, low: float = -math.inf, high: float = math.inf) -> float:
        value = self._get(key, "float")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected float, got {value!r}")
        number = float(value)
        # One NaN would poison every mean it enters, and the round log after it.
        if not math.isfinite(number):
            raise self.error(key, f"expected a finite float, got {value!r}")
        if not low <= number <= high:
            raise self.error(key, f"{number!r} is outside [{low}, {high}]")
        return number

    def text(self, key: str) -> str:
        value = self._get(key, "str")
        if not isinstance(value, str):
            raise self.error(key, f"expected str, got {value!r}")
        return value

    def raw(self, key: str) -> bytes:
        value = self._get(key, "bytes")
        if not isinstance(value, bytes):
            raise self.error(key, f"expected bytes, got {type(value).__name__}")
        return value

    def blob(self, key: str, stype: str) -> bytes:
        value = self._get(key, "an array")
        if not isinstance(value, Blob) or value.stype != stype:
            found = value.stype if isinstance(value, Blob) else type(value).__name__
            raise self.error(key, f"expected stype {stype!r}, got {found!r}")
        return value.data

    def optional(self, key: str, read: Callable[[str], _T]) -> _T | None:
        return read(key) if key in self._values else None

    def done(self) -> None:
        for key in sorted(set(self._values) - self._read):
            raise self.error(key, "unexpected key")


class _Message:
    """Reads a Records as one message: exactly its own records (plus any `alongside`)."""

    def __init__(
        self, what: str, records: Records, own: Iterable[str], alongside: Iterable[str] = ()
    ) -> None:
        self.what, self.records = what, records
        allowed = {*own, *alongside}
        for name in records.names():
            if name not in allowed:
                raise WireError(f"{what}: {name}: unexpected record")

    def _record(self, name: str, kinds: Mapping[str, Mapping[str, object]], kind: str) -> _Fields:
        if name not in kinds:
            raise WireError(f"{self.what}: {name}: missing {kind} record")
        return _Fields(self.what, name, kinds[name])

    def arrays(self, name: str) -> _Fields:
        return self._record(name, self.records.arrays, "array")

    def config(self, name: str) -> _Fields:
        return self._record(name, self.records.configs, "config")

    def metrics(self, name: str) -> _Fields:
        return self._record(name, self.records.metrics, "metric")


def _payload(message: _Message, record: str, array: str, stype: str) -> bytes:
    arrays = message.arrays(record)
    data = arrays.blob(array, stype)
    arrays.done()
    return data


# ---------------------------------------------------------------- training and evaluation


@dataclass(frozen=True)
class Schedule:
    """A local training schedule (ticket.train.TrainConfig's wire part; ranges checked there)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str

    def to_config(self) -> dict[str, ConfigValue]:
        return {
            LOCAL_EPOCHS: self.epochs,
            BATCH_SIZE: self.batch_size,
            LR: self.lr,
            OPTIMIZER: self.optimizer,
        }

    @classmethod
    def read(cls, config: _Fields) -> Self:
        return cls(
            config.integer(LOCAL_EPOCHS),
            config.integer(BATCH_SIZE),
            config.number(LR),
            config.text(OPTIMIZER),
        )


UPDATE: Final = "update"  # train, send the update (as an ordinary round)
SALIENCY: Final = "saliency"
Objective = Literal["update", "saliency"]  # UPDATE, SALIENCY
OBJECTIVES: tuple[Objective, ...] = (UPDATE, SALIENCY)


@dataclass(frozen=True)
class SearchStep:
    """A fleet search's part of a train instruction (server/fleet_search.py).

    `mask` narrows the installed ticket's mask to the search's current one (its bits, over the
    ticket's prunable parameters: ticket.fleet_search.mask_bits); the payload and the update are
    packed over it. `objective` "saliency" (fed-snip) asks for connection saliency |g * w| on
    local data instead of training, scaled so its largest entry is `saliency_scale`.
    """

    mask: bytes
    objective: Objective = UPDATE
    saliency_scale: float = 1.0


@dataclass(frozen=True)
class TrainInstruction:
    """Server to node: train from the global values, reply with an update encoded as `dtype`."""

    NAME: ClassVar[str] = "train instruction"
    RECORDS: ClassVar[tuple[str, ...]] = (ARRAYS, CONFIG)

    ticket_id: str
    server_round: int
    payload: bytes  # codec bytes of the global values (kind MODEL)
    dtype: str  # encoding of the reply's update
    schedule: Schedule
    seed: int  # nodes derive their data order from (seed, round, node id)
    search: SearchStep | None = None  # a fleet search's round; None: ordinary training

    @property
    def size(self) -> int:
        """Bytes of the values and the search mask: what a round's downlink counts."""
        return len(self.payload) + (0 if self.search is None else len(self.search.mask))

    def to_record(self) -> Records:
        config: dict[str, ConfigValue] = {
            TICKET_ID: self.ticket_id,
            SERVER_ROUND: self.server_round,
            DTYPE: self.dtype,
            **self.schedule.to_config(),
            SEED: self.seed,
        }
        arrays = {PACKED: Blob(CODEC_STYPE, self.payload)}
        if self.search is not None:
            arrays[SEARCH_MASK] = Blob(MASK_STYPE, self.search.mask)
            config[OBJECTIVE] = self.search.objective
            config[SALIENCY_SCALE] = self.search.saliency_scale
        return Records(arrays={ARRAYS: arrays}, configs={CONFIG: config})

    @classmethod
    def from_record(cls, records: Records) -> Self:
        # A secure round's train message also carries the SecAggRequest's record.
        message = _Message(cls.NAME, records, cls.RECORDS, alongside=SecAggRequest.RECORDS)
        arrays = message.arrays(ARRAYS)
        payload = arrays.blob(PACKED, CODEC_STYPE)
        mask = arrays.optional(SEARCH_MASK, lambda key: arrays.blob(key, MASK_STYPE))
        arrays.done()
        config = message.config(CONFIG)
        search = None
        if mask is not None:
            asked = config.text(OBJECTIVE)
            if asked not in OBJECTIVES:
                raise config.error(OBJECTIVE, f"expected one of {', '.join(OBJECTIVES)}")
            objective: Objective = SALIENCY if asked == SALIENCY else UPDATE
            scale = config.number(SALIENCY_SCALE, low=0.0)
            if scale == 0.0:
                raise config.error(SALIENCY_SCALE, "expected a positive float, got 0.0")
            search = SearchStep(mask, objective, scale)
        instruction = cls(
            ticket_id=config.text(TICKET_ID),
            server_round=config.integer(SERVER_ROUND),
            payload=payload,
            dtype=config.text(DTYPE),
            schedule=Schedule.read(config),
            seed=config.integer(SEED),
            search=search,
        )
        config.done()
        return instruction


@dataclass(frozen=True)
class Probe:
    """A canary probe's training: the schedule and the seed of the data order."""

    schedule: Schedule
    seed: int


@dataclass(frozen=True)
class EvaluateInstruction:
    """Server to node: score the values sent; with a probe (a rollout's canary), train first."""

    NAME: ClassVar[str] = "evaluate instruction"
    RECORDS: ClassVar[tuple[str, ...]] = (ARRAYS, CONFIG)

    ticket_id: str
    server_round: int  # 0 for a rollout's probe: no training round
    payload: bytes  # codec bytes of the values to score (kind MODEL)
    probe: Probe | None = None

    def to_record(self) -> Records:
        config: dict[str, ConfigValue] = {
            TICKET_ID: self.ticket_id,
            SERVER_ROUND: self.server_round,
        }
        if self.probe is not None:
            config |= {**self.probe.schedule.to_config(), SEED: self.probe.seed}
        return Records(
            arrays={ARRAYS: {PACKED: Blob(CODEC_STYPE, self.payload)}}, configs={CONFIG: config}
        )

    @classmethod
    def from_record(cls, records: Records) -> Self:
        message = _Message(cls.NAME, records, cls.RECORDS)
        payload = _payload(message, ARRAYS, PACKED, CODEC_STYPE)
        config = message.config(CONFIG)
        probe = None
        if any(config.has(key) for key in (LOCAL_EPOCHS, BATCH_SIZE, LR, OPTIMIZER, SEED)):
            probe = Probe(Schedule.read(config), config.integer(SEED))
        instruction = cls(config.text(TICKET_ID), config.integer(SERVER_ROUND), payload, probe)
        config.done()
        return instruction


@dataclass(frozen=True)
class TrainReply:
    """Node to server: the update over the mask and what it was trained on."""

    NAME: ClassVar[str] = "train reply"
    RECORDS: ClassVar[tuple[str, ...]] = (ARRAYS, METRICS)

    payload: bytes  # codec bytes of the update (kind UPDATE)
    examples: int  # >= 1: the weight of the update
    train_loss: float  # last epoch's mean loss

    def scores(self) -> dict[str, float]:
        """The metrics the server averages (by example count)."""
        return {TRAIN_LOSS: self.train_loss}

    def to_record(self) -> Records:
        return Records(
            arrays={ARRAYS: {PACKED: Blob(CODEC_STYPE, self.payload)}},
            metrics={METRICS: {NUM_EXAMPLES: self.examples, TRAIN_LOSS: self.train_loss}},
        )

    @classmethod
    def from_record(cls, records: Records) -> Self:
        message = _Message(cls.NAME, records, cls.RECORDS)
        metrics = message.metrics(METRICS)
        examples, loss = metrics.integer(NUM_EXAMPLES, minimum=1), metrics.number(TRAIN_LOSS)
        metrics.done()
        return cls(_payload(message, ARRAYS, PACKED, CODEC_STYPE), examples, loss)

    @staticmethod
    def payload_size(records: Records) -> int | None:
        """Bytes of the update received, if the reply holds one (counted even when refused)."""
        blob = records.arrays.get(ARRAYS, {}).get(PACKED)
        return len(blob.data) if blob is not None and blob.stype == CODEC_STYPE else None


@dataclass(frozen=True)
class EvaluateReply:
    """Node to server: scores on its held-out rows (auc: binary tasks with both classes)."""

    NAME: ClassVar[str] = "evaluate reply"
    RECORDS: ClassVar[tuple[str, ...]] = (METRICS,)

    examples: int
    loss: float
    accuracy: float
    auc: float | None = None

    def scores(self) -> dict[str, float]:
        """The metrics the server averages (by example count); auc only where sent."""
        scores = {LOSS: self.loss, ACCURACY: self.accuracy}
        return scores if self.auc is None else {**scores, AUC: self.auc}

    def to_record(self) -> Records:
        metrics: dict[str, MetricValue] = {NUM_EXAMPLES: self.examples, **self.scores()}
        return Records(metrics={METRICS: metrics})

    @classmethod
    def from_record(cls, records: Records) -> Self:
        metrics = _Message(cls.NAME, records, cls.RECORDS).metrics(METRICS)
        reply = cls(
            examples=metrics.integer(NUM_EXAMPLES, minimum=1),
            loss=metrics.number(LOSS, low=0.0),
            accuracy=metrics.number(ACCURACY, low=0.0, high=1.0),
            auc=metrics.number(AUC, low=0.0, high=1.0) if metrics.has(AUC) else None,
        )
        metrics.done()
        return reply


OPTIONAL_SCORES = (AUC,)  # of EvaluateReply.scores(): absent where a node cannot compute it


# ---------------------------------------------------------------- rollout


@dataclass(frozen=True)
class InstallPush:
    """Server to node (`ticket deploy`): a signed ticket to verify against the fleet key."""

    NAME: ClassVar[str] = "install push"
    RECORDS: ClassVar[tuple[str, ...]] = (BUNDLE, CONFIG)

    ticket_id: str  # the content id the rollout announces
    bundle: bytes  # the .ticket file

    def to_record(self) -> Records:
        return Records(
            arrays={BUNDLE: {TICKET: Blob(BUNDLE_STYPE, self.bundle)}},
            configs={CONFIG: {TICKET_ID: self.ticket_id}},
        )

    @classmethod
    def from_record(cls, records: Records) -> Self:
        message = _Message(cls.NAME, records, cls.RECORDS)
        config = message.config(CONFIG)
        ticket_id = config.text(TICKET_ID)
        config.done()
        return cls(ticket_id, _payload(message, BUNDLE, TICKET, BUNDLE_STYPE))

    @staticmethod
    def is_push(records: Records) -> bool:
        return BUNDLE in records.arrays


@dataclass(frozen=True)
class InstallAck:
    """Node to server: installed, or rejected and why (a refusal is an answer, not an Error)."""

    NAME: ClassVar[str] = "install ack"
    RECORDS: ClassVar[tuple[str, ...]] = (ACK,)

    status: AckStatus
    ticket_id: str  # installed: the content id cached; rejected: the one announced, or ""
    reason: str = ""

    def to_record(self) -> Records:
        ack = {STATUS: self.status, TICKET_ID: self.ticket_id, REASON: self.reason}
        return Records(configs={ACK: ack})

    @classmethod
    def from_record(cls, records: Records) -> Self:
        ack = _Message(cls.NAME, records, cls.RECORDS).config(ACK)
        status = ack.text(STATUS)
        if status not in (INSTALLED, REJECTED):
            raise ack.error(STATUS, f"expected {INSTALLED!r} or {REJECTED!r}, got {status!r}")
        ticket_id, reason = ack.text(TICKET_ID), ack.text(REASON)
        ack.done()
        return cls(INSTALLED if status == INSTALLED else REJECTED, ticket_id, reason)


# ---------------------------------------------------------------- the final model


@dataclass(frozen=True)
class ModelPush:
    """Server to node, after a run's last round: the global model the fleet trained, so a device
    predicts with the final aggregate rather than the one its last train instruction carried."""

    NAME: ClassVar[str] = "model push"
    RECORDS: ClassVar[tuple[str, ...]] = (FINAL_MODEL, CONFIG)

    ticket_id: str
    server_round: int  # the last round aggregated into the values
    payload: bytes  # codec bytes of the global values (kind MODEL)

    def to_record(self) -> Records:
        return Records(
            arrays={FINAL_MODEL: {PACKED: Blob(CODEC_STYPE, self.payload)}},
            configs={CONFIG: {TICKET_ID: self.ticket_id, SERVER_ROUND: self.server_round}},
        )

    @classmethod
    def from_record(cls, records: Records) -> Self:
        message = _Message(cls.NAME, records, cls.RECORDS)
        arrays = message.arrays(FINAL_MODEL)
        payload = arrays.blob(PACKED, CODEC_STYPE)
        arrays.done()
        config = message.config(CONFIG)
        push = cls(config.text(TICKET_ID), config.integer(SERVER_ROUND), payload)
        config.done()
        return push

    @staticmethod
    def is_push(records: Records) -> bool:
        return FINAL_MODEL in records.arrays


@dataclass(frozen=True)
class ModelAck:
    """Node to server: the final model kept, or rejected and why (an answer, not an Error)."""

    NAME: ClassVar[str] = "model ack"
    RECORDS: ClassVar[tuple[str, ...]] = (ACK,)

    status: ModelAckStatus
    reason: str = ""

    def to_record(self) -> Records:
        return Records(configs={ACK: {STATUS: self.status, REASON: self.reason}})

    @classmethod
    def from_record(cls, records: Records) -> Self:
        ack = _Message(cls.NAME, records, cls.RECORDS).config(ACK)
        status = ack.text(STATUS)
        if status not in (KEPT, REJECTED):
            raise ack.error(STATUS, f"expected {KEPT!r} or {REJECTED!r}, got {status!r}")
        reason = ack.text(REASON)
        ack.done()
        return cls(KEPT if status == KEPT else REJECTED, reason)


# ---------------------------------------------------------------- secure aggregation


@dataclass(frozen=True)
class SecAggRequest:
    """Server to node: the protocol steps asked of it in round `round` (ticket/secagg).

    A train message may carry a mask request (with the TrainInstruction beside it) and an
    advert request; a query message an unmask request and a key bundle, or the setup's single
    parts. Under differential privacy a mask request comes with the distributed Skellam
    mechanism's clip norm, scale and per-device noise variance (ticket/secagg/privacy.py).

    A query message may carry a mask request for counts in place of an update (a federated fit
    of the encoding of readings, server/encoding_fit.py): `counts_schema` names the readings
    schema whose histogram the node masks, each count at most `count_cap`, summed exactly.
    """

    NAME: ClassVar[str] = "secagg request"
    RECORDS: ClassVar[tuple[str, ...]] = (SECAGG,)

    round: int
    weight_cap: int
    mask_request: bytes | None = None  # -> masked_input
    unmask_request: bytes | None = None  # -> unmask_response
    key_bundle: bytes | None = None  # with bundle_round -> share_bundle
    bundle_round: int | None = None
    advert_round: int | None = None  # -> key_advert
    dp: "SkellamParams | None" = None
    counts_schema: str | None = None  # with count_cap: the mask request is for these counts
    count_cap: int | None = None

    def __post_init__(self) -> None:
        if (self.key_bundle is None) != (self.bundle_round is None):
            raise WireError(f"{self.NAME}: a key bundle and its round travel together")
        if (self.counts_schema is None) != (self.count_cap is None):
            raise WireError(f"{self.NAME}: a counts schema and its cap travel together")
        if self.counts_schema is not None and (self.mask_request is None or self.dp is not None):
            raise WireError(f"{self.NAME}: counts go with a mask request and without DP")

    def to_record(self) -> Records:
        parts: dict[str, ConfigValue | None] = {
            ROUND: self.round,
            WEIGHT_CAP: self.weight_cap,
            MASK_REQUEST: self.mask_request,
            UNMASK_REQUEST: self.unmask_request,
            KEY_BUNDLE: self.key_bundle,
            BUNDLE_ROUND: self.bundle_round,
            ADVERT_ROUND: self.advert_round,
            COUNTS_SCHEMA: self.counts_schema,
            COUNT_CAP: self.count_cap,
        }
        if self.dp is not None:
            parts |= {
                DP_CLIP_NORM: self.dp.clip_norm,
                DP_SCALE: self.dp.scale,
                DP_NOISE_VAR: self.dp.noise_var,
            }
        return Records(configs={SECAGG: {k: v for k, v in parts.items() if v is not None}})

    @classmethod
    def from_record(cls, records: Records) -> Self:
        # The SecAggRequest of a train message rides beside its TrainInstruction.
        message = _Message(cls.NAME, records, cls.RECORDS, alongside=TrainInstruction.RECORDS)
        ask = message.config(SECAGG)
        dp = None
        if any(ask.has(key) for key in (DP_CLIP_NORM, DP_SCALE, DP_NOISE_VAR)):
            from ticket.secagg.errors import ParamsError
            from ticket.secagg.privacy import SkellamParams

            try:
                dp = SkellamParams(
                    ask.number(DP_CLIP_NORM, low=0.0),
                    ask.number(DP_SCALE, low=0.0),
                    ask.number(DP_NOISE_VAR, low=0.0),
                )
            except ParamsError as error:
                raise WireError(f"{cls.NAME}: {error}") from None
        bundle = ask.optional(KEY_BUNDLE, ask.raw)
        schema = ask.optional(COUNTS_SCHEMA, ask.text)
        request = cls(
            round=ask.integer(ROUND),
            weight_cap=ask.integer(WEIGHT_CAP, minimum=1),
            mask_request=ask.optional(MASK_REQUEST, ask.raw),
            unmask_request=ask.optional(UNMASK_REQUEST, ask.raw),
            key_bundle=bundle,
            bundle_round=ask.integer(BUNDLE_ROUND) if bundle is not None else None,
            advert_round=ask.optional(ADVERT_ROUND, ask.integer),
            dp=dp,
            counts_schema=schema,
            count_cap=ask.integer(COUNT_CAP, minimum=1) if schema is not None else None,
        )
        ask.done()
        return request

    @staticmethod
    def is_request(records: Records) -> bool:
        return SECAGG in records.configs


@dataclass(frozen=True)
class SecAggReply:
    """Node to server: the protocol messages it was asked for (nothing else leaves the node)."""

    NAME: ClassVar[str] = "secagg reply"
    RECORDS: ClassVar[tuple[str, ...]] = (SECAGG,)

    masked_input: bytes | None = None
    key_advert: bytes | None = None
    unmask_response: bytes | None = None
    share_bundle: bytes | None = None

    def to_record(self) -> Records:
        parts = {
            MASKED_INPUT: self.masked_input,
            KEY_ADVERT: self.key_advert,
            UNMASK_RESPONSE: self.unmask_response,
            SHARE_BUNDLE: self.share_bundle,
        }
        return Records(configs={SECAGG: {k: v for k, v in parts.items() if v is not None}})

    @classmethod
    def from_record(cls, records: Records) -> Self:
        parts = _Message(cls.NAME, records, cls.RECORDS).config(SECAGG)
        reply = cls(
            masked_input=parts.optional(MASKED_INPUT, parts.raw),
            key_advert=parts.optional(KEY_ADVERT, parts.raw),
            unmask_response=parts.optional(UNMASK_RESPONSE, parts.raw),
            share_bundle=parts.optional(SHARE_BUNDLE, parts.raw),
        )
        parts.done()
        return reply


# ---------------------------------------------------------------- node config

# What a SuperNode's `--node-config` carries to the ClientApp (`context.node_config`): written
# by edge-daemon (edge_daemon/daemon.py), or by the dev harness for a bare SuperNode
# (loopback/demo.py); read by edge_daemon/client_app.py, local_data.py, ticket_install.py and
# secagg_client.py. The ticket: exactly one of a file or the daemon's cache.
NODE_TICKET_PATH = "ticket-path"
NODE_TICKET_DIR = "ticket-dir"  # the daemon's cache: <dir>/<content id>.ticket
NODE_FLEET_KEY = "fleet-key"  # PEM public key a ticket must be signed by
NODE_ALLOW_UNSIGNED = "allow-unsigned"
NODE_STATE_PATH = "state-path"  # the daemon's durable state file
# Where the ClientApp keeps the latest global model it was sent (edge_daemon/model_store.py), for
# `edge-daemon predict`; unset: nothing is kept.
NODE_MODEL_PATH = "model-path"
# Secure aggregation's identity (ticket/secagg/identity.py): the node-auth private key (OpenSSH,
# P-384) that signs this node's key adverts; without one a fresh key signs, which only peers
# that allow uncertified neighbours accept. Neighbours must carry a certificate by fleet-key
# unless secagg-allow-uncertified is true (a development fleet: nobody enrolled).
NODE_AUTH_KEY = "auth-key"
NODE_SECAGG_ALLOW_UNCERTIFIED = "secagg-allow-uncertified"
# A device's own readings (the store `edge-daemon ingest` fills) ...
NODE_READINGS_DB = "readings-db"
NODE_READINGS_SCHEMA = "readings-schema"
NODE_RETENTION_ROWS = "retention-rows"
NODE_RETENTION_DAYS = "retention-days"
# ... or a partition of a registered dataset (demos, tests, the Simulation Engine).
NODE_DATASET = "dataset"
NODE_PARTITION = "partition"  # the partitioner's name (ticket.data.partition)
NODE_PARTITION_ID = "partition-id"  # also set by the Simulation Engine for a virtual node
NODE_NUM_PARTITIONS = "num-partitions"  # likewise
NODE_PARTITION_SEED = "partition-seed"
NODE_PARTITION_ALPHA = "partition-alpha"
NODE_PARTITION_MIN_SIZE = "partition-min-size"
NODE_PARTITION_SHARDS = "partition-shards"


MESSAGES = (
    TrainInstruction,
    TrainReply,
    EvaluateInstruction,
    EvaluateReply,
    InstallPush,
    InstallAck,
    ModelPush,
    ModelAck,
    SecAggRequest,
    SecAggReply,
)
