"""The device's secure aggregation steps: Flower messages in, ticket/secagg calls, replies out.

Messages are ticket/wire.py's SecAggRequest and SecAggReply: an advert request -> a key advert,
a key bundle -> a share bundle, a mask request (on a train message with the global values; under
differential privacy with the Skellam mechanism's parameters) -> a masked input, an unmask
request -> an unmask response. A mask request on a query is for counts of the node's readings
(a federated fit of their encoding, edge_daemon/reading_counts.py), masked exactly. Nothing
per node but the masked vector leaves: no example count, no loss.

The node's protocol state (RoundSecrets until its shares go out, then NodeRound) lives in
`context.state` (one run on one SuperNode: every message runs in a fresh clientapp process)
and, when the node config names a state-path, in a 0600 file beside it, written atomically. It
is saved BEFORE the reply leaves, so a retried message never masks twice or contradicts an
earlier reveal. A node that lost its state sits the round out: an Error reply.

Key adverts are signed with the node-auth key the node config names (auth-key); neighbours'
adverts are checked against the fleet key's certificates (fleet-key) before any mask is
derived, and a node that cannot check them sits the round out (ticket/secagg/identity.py). A
virtual node of the Simulation Engine, and a node whose config sets secagg-allow-uncertified,
accept uncertified neighbours: there is no enrolment to check against.
"""

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Context, Message

from flower_wire import from_flower
from flower_wire import reply as wire_reply
from ticket import crypto, wire
from ticket.atomic import atomic_write_bytes
from ticket.errors import TicketError
from ticket.secagg import (
    NodeRound,
    PeerTrust,
    RoundSecrets,
    SecAggParams,
    advertise_keys,
    distribute_shares,
    mask_input,
    reveal_shares,
)
from ticket.secagg.privacy import SkellamParams
from ticket.secagg.weighting import EXTRA_VALUES, weighted_input
from ticket.wire import SecAggReply, SecAggRequest, WireError

STATE_KEY = "secagg-state"  # in context.state: a ConfigRecord of protocol state bytes
MAX_KEY_FILE_BYTES = 16 * 1024  # a PEM or OpenSSH key is well under 1 KiB
# What the Simulation Engine gives a virtual node (edge_daemon/client_app.py's
# SIMULATED_NODE_KEYS): one process plays server and nodes, so there is nobody to authenticate.
_SIMULATED_NODE_KEYS = frozenset({wire.NODE_PARTITION_ID, wire.NODE_NUM_PARTITIONS})
_T = TypeVar("_T")


class SecAggStepError(Exception):
    """This node cannot do the step asked for this round (state lost, message refused)."""


class InstructionsError(SecAggStepError):
    """The secagg record lacks a key or holds one of the wrong type (its WireError's text)."""


@dataclass(frozen=True)
class LocalUpdate:
    """What training produced, before masking: delta = local - global, float32 [k]."""

    delta: npt.NDArray[np.float32]
    examples: int
    loss: float
    seed: int  # for the stochastic rounding of the quantiser


Trainer = Callable[[], LocalUpdate]


def is_secure(message: Message) -> bool:
    return SecAggRequest.is_request(from_flower(message.content))


def read_request(message: Message) -> SecAggRequest:
    try:
        return SecAggRequest.from_record(from_flower(message.content))
    except WireError as error:
        raise InstructionsError(str(error)) from None


def train_step(message: Message, context: Context, trainer: Trainer) -> tuple[Message, int]:
    """Trip A: mask this round's update (if a member) and advertise next round's keys (if
    asked); (reply, bytes of the masked vector, 0 if none). Raises SecAggStepError."""
    ask = read_request(message)
    store = StateStore.of(context)
    r, masked, advert = ask.round, None, None
    if ask.mask_request is not None:
        request = ask.mask_request
        state = store.node_round(r)
        update = trainer()
        vector = _protocol("mask", lambda: _input(update, ask.dp, state.params, ask.weight_cap))
        rng = np.random.default_rng(update.seed)
        # Under DP the noise is what hides this update: it comes from this device's own
        # secret randomness, never from a seed the server knows (update.seed is derivable).
        noise = np.random.default_rng(secrets.randbits(128)) if ask.dp is not None else None
        masked, state = _protocol(
            "mask",
            lambda: mask_input(request, state, vector, rng=rng, dp=ask.dp, noise_rng=noise),
        )
        store.put(f"round-{r}", state.to_bytes())
    if ask.advert_round is not None:
        advert = _advertise(store, context, ask.advert_round)
    store.save(keep_from=r - 1)
    answer = SecAggReply(masked_input=masked, key_advert=advert)
    return wire_reply(message, answer.to_record()), len(masked or b"")


Counter = Callable[[str], npt.NDArray[np.int64]]  # readings schema -> this node's counts


def query_step(message: Message, context: Context, counter: Counter) -> Message:
    """Setup and trip B: advertise keys, reveal shares, share next round's secrets; or, for a
    fit of the encoding, mask this node's counts of its readings (`counter`)."""
    ask = read_request(message)
    store = StateStore.of(context)
    r, advert, revealed, shares, masked = ask.round, None, None, None, None
    if ask.advert_round is not None:
        advert = _advertise(store, context, ask.advert_round)
    if ask.mask_request is not None:
        if ask.counts_schema is None or ask.count_cap is None:
            raise InstructionsError("a query's mask request must be for counts")
        request, cap = ask.mask_request, ask.count_cap
        state = store.node_round(r)
        # Counts, then zeros where a training update carries its weight and loss.
        counts = np.concatenate([counter(ask.counts_schema), np.zeros(EXTRA_VALUES, np.int64)])
        rng = np.random.default_rng()  # unused: counts are masked as they are, not rounded
        masked, state = _protocol(
            "mask", lambda: mask_input(request, state, counts, rng=rng, count_cap=cap)
        )
        store.put(f"round-{r}", state.to_bytes())
    if ask.unmask_request is not None:
        request = ask.unmask_request
        state = store.node_round(r)
        revealed, state = _protocol("unmask", lambda: reveal_shares(request, state))
        store.put(f"round-{r}", state.to_bytes())
    if ask.key_bundle is not None and ask.bundle_round is not None:
        bundle, nxt = ask.key_bundle, ask.bundle_round
        held = store.get(f"secrets-{nxt}", nxt)
        secrets = _protocol("state", lambda: RoundSecrets.from_bytes(held))
        trust = peer_trust(context)
        shares, state = _protocol("shares", lambda: distribute_shares(bundle, secrets, trust=trust))
        store.put(f"round-{nxt}", state.to_bytes())
    store.save(keep_from=r - 1)
    answer = SecAggReply(
        masked_input=masked, key_advert=advert, unmask_response=revealed, share_bundle=shares
    )
    return wire_reply(message, answer.to_record())


def _input(
    update: LocalUpdate, dp: SkellamParams | None, params: SecAggParams, cap: int
) -> npt.NDArray[np.float32]:
    """What this node masks: its weighted update with weight and loss, or under DP its update
    alone (mask_input clips and noises it), with no example count and no loss: zeros."""
    if dp is None:
        return weighted_input(
            update.delta, examples=update.examples, loss=update.loss, params=params, cap=cap
        )
    return np.concatenate([update.delta, np.zeros(EXTRA_VALUES, np.float32)])


def _advertise(store: "StateStore", context: Context, round: int) -> bytes:
    held = store.find(f"round-{round}")
    if held is not None and store.node_round(round).is_masked:
        # Fresh keys for a round this node already masked would give the server two masked
        # inputs of one round under different masks: sums over two subsets leak a difference.
        raise SecAggStepError(f"round {round} was already masked on this node; not re-keying")
    advert, secrets = _protocol(
        "advert",
        lambda: advertise_keys(
            run_id=context.run_id,
            round=round,
            node_id=context.node_id,
            identity_key=identity_key(context),
        ),
    )
    store.put(f"secrets-{round}", secrets.to_bytes())
    return advert


def identity_key(context: Context) -> bytes:
    """The private key that signs this node's adverts: node config auth-key's file, else a
    fresh one (uncertified: only neighbours that allow uncertified peers accept it)."""
    path = context.node_config.get(wire.NODE_AUTH_KEY)
    if not path:
        return crypto.generate_identity_key()
    return _read_key(wire.NODE_AUTH_KEY, path)


def peer_trust(context: Context) -> PeerTrust:
    """What this node accepts as a neighbour's identity (node config fleet-key and
    secagg-allow-uncertified; a simulated node allows uncertified neighbours)."""
    config = context.node_config
    allow = config.get(wire.NODE_SECAGG_ALLOW_UNCERTIFIED, False)
    if not isinstance(allow, bool):
        raise SecAggStepError(f"node config {wire.NODE_SECAGG_ALLOW_UNCERTIFIED}: not a boolean")
    path = config.get(wire.NODE_FLEET_KEY)
    fleet_key = _read_key(wire.NODE_FLEET_KEY, path) if path else None
    return PeerTrust(fleet_key, allow or set(config) == _SIMULATED_NODE_KEYS)


def _read_key(name: str, path: object) -> bytes:
    if not isinstance(path, str):
        raise SecAggStepError(f"node config {name}: expected a path, got {path!r}")
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise SecAggStepError(f"node config {name}: cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SecAggStepError(f"node config {name}: {path} is too large for a key")
    return data


def _protocol(step: str, call: Callable[[], _T]) -> _T:
    """Run a ticket/secagg step; its refusals become SecAggStepError (no secrets in them)."""
    try:
        return call()
    except TicketError as error:  # MessageError, RevealRefusedError, IntegrityError, ...
        raise SecAggStepError(f"{step}: {type(error).__name__}: {error}") from None


class StateStore:
    """Protocol state by key ("secrets-R", "round-R"): context.state, mirrored to a file."""

    def __init__(self, context: Context, path: Path | None) -> None:
        self._context = context
        self._path = path
        record = context.state.config_records.get(STATE_KEY)
        self._values: dict[str, bytes] = {
            key: value for key, value in (record or {}).items() if isinstance(value, bytes)
        }
        if not self._values and path is not None and path.exists():
            self._values = _read_file(path)

    @classmethod
    def of(cls, context: Context) -> "StateStore":
        return cls(context, state_file(context))

    def find(self, key: str) -> bytes | None:
        return self._values.get(key)

    def get(self, key: str, round: int) -> bytes:
        value = self._values.get(key)
        if value is None:
            raise SecAggStepError(f"no secure aggregation state for round {round} on this node")
        return value

    def node_round(self, round: int) -> NodeRound:
        held = self.get(f"round-{round}", round)
        return _protocol("state", lambda: NodeRound.from_bytes(held))

    def put(self, key: str, value: bytes) -> None:
        self._values[key] = value
        self.save(keep_from=None)

    def save(self, *, keep_from: int | None) -> None:
        if keep_from is not None:
            self._values = {
                key: value
                for key, value in self._values.items()
                if int(key.rsplit("-", 1)[1]) >= keep_from
            }
        self._context.state.config_records[STATE_KEY] = ConfigRecord(dict(self._values))
        if self._path is not None:
            document = {key: value.hex() for key, value in sorted(self._values.items())}
            self._path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._path, json.dumps(document).encode("ascii"), mode=0o600)


def state_file(context: Context) -> Path | None:
    """<state-path>.secagg-<run id> beside the daemon's state, if the node config has one."""
    path = context.node_config.get(wire.NODE_STATE_PATH)
    if not isinstance(path, str) or not path:
        return None
    state = Path(path)
    return state.with_name(f"{state.name}.secagg-{context.run_id}")


def _read_file(path: Path) -> dict[str, bytes]:
    try:
        document = json.loads(path.read_bytes())
        return {str(key): bytes.fromhex(value) for key, value in document.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}  # unreadable state: this node sits out the rounds it was for
