"""A whole secure-aggregation round in process, with dropouts and a tap on every message.

Every node has an identity key certified by a fleet key, as `fleet-server enroll` makes them,
the server holds the roster and every node trusts the fleet key, unless `certified` is false
(a development fleet: no roster, nodes allow uncertified neighbours).
"""

import functools
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from ticket import crypto, secagg
from ticket.errors import TicketError
from ticket.secagg import (
    Enrolled,
    NodeRound,
    PeerTrust,
    RoundSecrets,
    SecAggParams,
    ServerRound,
)
from ticket.secagg.privacy import SkellamParams, privatize

# (step, node, bytes) -> bytes actually delivered; steps: advert, bundle, shares, mask_request,
# masked, unmask_request, reveal.
Tap = Callable[[str, int, bytes], bytes]

PARAMS = SecAggParams(clip=1.0, levels=2**10)
_T = TypeVar("_T")


def entropy(seed: int) -> Callable[[int], bytes]:
    """Deterministic bytes for reproducible tests (never for real keys)."""
    return random.Random(seed).randbytes


FLEET_KEY = crypto.generate_signing_key()  # (private PEM, public PEM): the operator's


@functools.cache
def identity_key(node: int) -> bytes:
    """Node `node`'s identity (node-auth) private key, one per test session."""
    return crypto.generate_identity_key()


def enrolled(node: int) -> Enrolled:
    """The roster entry `fleet-server enroll` makes for `node`."""
    identity = crypto.identity_public_key(identity_key(node))
    return Enrolled(identity, secagg.certify(FLEET_KEY[0], node, identity))


@dataclass
class Drops:
    before_shares: Collection[int] = ()  # never deliver their share bundle
    before_mask: Collection[int] = ()  # never deliver their masked vector
    before_reveal: Collection[int] = ()  # never answer the unmask request


@dataclass
class Simulation:
    nodes: tuple[int, ...]
    length: int
    params: SecAggParams = PARAMS
    run_id: int = 7
    round: int = 3
    seed: int = 0
    certified: bool = True
    target_error: float | None = None  # ServerRound's: levels chosen from the cohort
    dp: SkellamParams | None = None  # nodes privatise their inputs (distributed Skellam)
    count_cap: int | None = None  # inputs are counts in 0..cap, summed exactly
    # Like the glue: a message the server refuses is left out, and a node that refuses a step
    # sits the round out; each refusal is kept in `refused`. False: the error propagates.
    tolerant: bool = False
    tap: Tap = field(default=lambda step, node, data: data)
    server: ServerRound = field(init=False)
    secrets: dict[int, RoundSecrets] = field(default_factory=dict)
    states: dict[int, NodeRound] = field(default_factory=dict)
    inputs: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)
    levels: dict[int, npt.NDArray[np.uint32]] = field(default_factory=dict)
    sent: dict[str, dict[int, bytes]] = field(default_factory=dict)
    refused: dict[tuple[str, int], TicketError] = field(default_factory=dict)

    def __post_init__(self) -> None:
        roster = {node: enrolled(node) for node in self.nodes} if self.certified else None
        self.trust = PeerTrust(FLEET_KEY[1]) if self.certified else PeerTrust(None, True)
        self.server = ServerRound(
            run_id=self.run_id,
            round=self.round,
            params=self.params,
            length=self.length,
            roster=roster,
            target_error=self.target_error,
        )
        self._entropy = entropy(self.seed)
        rng = np.random.default_rng(self.seed)
        for node in self.nodes:
            self.inputs[node] = rng.uniform(-1.2, 1.2, self.length).astype(np.float32)

    def _record(self, step: str, node: int, data: bytes) -> bytes:
        self.sent.setdefault(step, {})[node] = data
        return self.tap(step, node, data)

    def _deliver(self, step: str, node: int, call: Callable[[], _T]) -> _T | None:
        try:
            return call()
        except TicketError as error:
            if not self.tolerant:
                raise
            self.refused[(step, node)] = error
            return None

    def setup(self, drops: Drops) -> None:
        for node in self.nodes:
            advert, self.secrets[node] = secagg.advertise_keys(
                run_id=self.run_id,
                round=self.round,
                node_id=node,
                identity_key=identity_key(node),
                entropy=self._entropy,
            )
            delivered = self._record("advert", node, advert)
            self._deliver(
                "advert", node, functools.partial(self.server.add_advert, node, delivered)
            )
        for node, bundle in self.server.key_bundles().items():
            relayed = self._record("bundle", node, bundle)
            share = functools.partial(
                secagg.distribute_shares,
                relayed,
                self.secrets[node],
                trust=self.trust,
                entropy=self._entropy,
            )
            got = self._deliver("bundle", node, share)
            if got is None:
                continue
            shares, self.states[node] = got
            if node not in drops.before_shares:
                delivered = self._record("shares", node, shares)
                add = functools.partial(self.server.add_share_bundle, node, delivered)
                self._deliver("shares", node, add)

    def mask(self, drops: Drops) -> None:
        for node, request in self.server.mask_requests().items():
            # The same rng seed twice: once for the oracle, once inside mask_input; under the
            # parameters the key bundles carried (the server's, once the cohort is fixed).
            if self.count_cap is not None:
                self.levels[node] = self.inputs[node].astype(np.uint32)
            elif self.dp is None:
                self.levels[node] = secagg.quantize(
                    self.inputs[node], self.server.params, np.random.default_rng(node)
                )
            else:
                bits = self.server.bits
                self.levels[node] = privatize(
                    self.inputs[node],
                    self.dp,
                    bits=bits,
                    rounding_rng=np.random.default_rng(node),
                    noise_rng=np.random.default_rng(1000 + node),
                )
            masked, self.states[node] = secagg.mask_input(
                self._record("mask_request", node, request),
                self.states[node],
                self.inputs[node],
                rng=np.random.default_rng(node),
                dp=self.dp,
                noise_rng=None if self.dp is None else np.random.default_rng(1000 + node),
                count_cap=self.count_cap,
            )
            if node not in drops.before_mask:
                self.server.add_masked_input(node, self._record("masked", node, masked))

    def unmask(self, drops: Drops) -> secagg.AggregateResult:
        for node, request in self.server.unmask_requests().items():
            reply, self.states[node] = secagg.reveal_shares(
                self._record("unmask_request", node, request), self.states[node]
            )
            if node not in drops.before_reveal:
                self.server.add_unmask_response(node, self._record("reveal", node, reply))
        return self.server.result()

    def run(self, drops: Drops | None = None) -> secagg.AggregateResult:
        drops = drops or Drops()
        self.setup(drops)
        self.mask(drops)
        return self.unmask(drops)

    def plain_sum(self, survivors: Iterable[int]) -> npt.NDArray[np.int64]:
        return sum(
            (self.levels[node].astype(np.int64) for node in survivors),
            np.zeros(self.length, np.int64),
        )
