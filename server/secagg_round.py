"""Secure aggregation over Flower: PackedFedAvg whose server sees only the sum of the updates.

The protocol is ticket/secagg's (its package docstring); this module carries its bytes. Per
round r, two message round trips:

  (A) Flower's train message: to the members M_r the global values and MaskRequest(r), to the
      sampled cohort of r + 1 an advert request; replies MaskedInput(r), KeyAdvert(r + 1).
  (B) a "query" message: UnmaskRequest(r) to the survivors, KeyBundle(r + 1) to the nodes that
      advertised; replies UnmaskResponse(r), ShareBundle(r + 1).

Before the first round of every `start()` (a fresh run, or a resumed one: ServerRound state is
not persisted, and a restarted ServerApp is a new run for the nodes) a setup exchange of two
query trips (advert request, then KeyBundle) prepares round r. Every trip waits at most the
round timeout. Nodes mask their example-weighted delta (ticket/secagg/weighting.py); the new
global is the old one plus the weighted mean delta. A round that cannot give the survivors'
exact sum (RoundAbortedError) keeps the global model and is logged as aborted. With a
secagg-target-error, each round's ServerRound picks its quantisation levels once its cohort is
fixed (ticket/secagg/quantize.py's choose_quantization); the round log records `levels` and
`bits` for every summed round.

Messages are ticket/wire.py's SecAggRequest (beside a TrainInstruction on trip A's members) and
SecAggReply. Bytes counted up and down per node are those of every trip of the round: the codec
payload of the global values plus the secagg record as Flower counts it
(ConfigRecord.count_bytes: keys and values).

With a roster (fleet-server's nodes.json, server/enrolment.py's load_roster) only enrolled
nodes' adverts signed by their enrolled keys are taken, and every key bundle relays the fleet's
certificates, which the devices check themselves (ticket/secagg/identity.py). Without one (a
development fleet) signatures are still checked, certificates are not: the devices must allow
uncertified neighbours.

Round management (server/round_policy.py, with a round goal): every trip goes through
server/deadline_grid.py, bounded by the reporting deadline and then the round timeout, but
each stage waits for what it needs, not for the same thing:

- The masked-input stage (trip A) is the round's goal: it closes once `goal` members' masked
  vectors are in, or at the deadline with at least max(2, min-replies). A member cut off there
  is a dropout like any other: the unmask trip asks the survivors for its mask key's shares, so
  the sum is the survivors' exact sum. A late masked vector is discarded (the ServerRound
  refuses one after unmask_requests anyway). Next round's adverts ride on this trip; a node
  whose advert the close cut off is left out of that round's cohort.
- Key adverts and share bundles (the setup trips, and trip B's bundles for r + 1) have no goal:
  an over-selected cohort is only as useful as the nodes that join it, so these wait for every
  asked node, and after the deadline close once max(2, min-replies) answered.
- The unmask stage (trip B) waits for every survivor, and after the deadline closes as soon as
  the responses hold a threshold of shares of every secret the sum needs
  (ServerRound.can_rebuild): closing earlier could only abort a round that can still finish.
"""

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from flower_wire import from_flower, to_flower
from server.privacy import DpPlan, Release, charged_rounds, epsilon
from server.strategy import (
    PAYLOAD_KEY,
    PackedFedAvg,
    RoundPlan,
    RoundRecord,
    no_reply,
    refuse_extra_config,
    seeded_sampling,
)
from ticket.errors import TicketError
from ticket.packing import PackLayout
from ticket.runconfig import RunConfigError, TrainingSettings
from ticket.secagg import Phase, Roster, RoundAbortedError, SecAggParams, ServerRound
from ticket.secagg.privacy import SkellamParams, decode_sum
from ticket.secagg.quantize import choose_quantization
from ticket.secagg.weighting import EXTRA_VALUES, read_sum
from ticket.wire import (
    SECAGG,
    TRAIN_LOSS,
    SecAggReply,
    SecAggRequest,
    TrainInstruction,
    WireError,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecAggPlan:
    """Run config's secure aggregation keys, typed (defaults: ticket/runconfig.py's)."""

    # [secagg-clip] each node's weighted delta is clipped to [-clip, clip]
    clip: float = TrainingSettings.secagg_clip
    levels: int = TrainingSettings.secagg_levels  # [secagg-levels] quantisation levels q
    # [secagg-weight-cap] examples at which a node's weight saturates
    weight_cap: int = TrainingSettings.secagg_weight_cap
    # [secagg-target-error] > 0: each round's levels from its cohort size (0: `levels`)
    target_error: float = TrainingSettings.secagg_target_error

    @classmethod
    def of(cls, run: TrainingSettings) -> "SecAggPlan":
        return cls(
            clip=run.secagg_clip,
            levels=run.secagg_levels,
            weight_cap=run.secagg_weight_cap,
            target_error=run.secagg_target_error,
        )

    def __post_init__(self) -> None:
        if isinstance(self.weight_cap, bool) or self.weight_cap < 1:
            raise ValueError(f"weight_cap must be an integer >= 1, got {self.weight_cap}")
        if not self.target_error >= 0:
            raise ValueError(f"target_error must be >= 0, got {self.target_error}")

    def check_cohorts(self, sizes: Iterable[int]) -> None:
        """With a target error, ParamsError now, before any round, if a cohort of one of
        `sizes` (those a round may have) could not meet it. Whether q fits does not depend on
        the vector length, so a length of 1 stands in for the ticket's."""
        if self.target_error > 0:
            for n in sorted(set(sizes)):
                choose_quantization(n, clip=self.clip, length=1, target_error=self.target_error)

    def params(self) -> SecAggParams:
        return SecAggParams(clip=self.clip, levels=self.levels)


@dataclass
class _Pending:
    """A round's key setup, collected across two trips (the setup's, or the round before's)."""

    round: ServerRound
    asked: set[int] = field(default_factory=set)  # who was asked to advertise
    dropped: dict[str, list[int]] = field(default_factory=dict)  # stage -> node ids
    failure: str | None = None  # why the round cannot run (RoundAbortedError during setup)


class SecurePackedFedAvg(PackedFedAvg):
    """PackedFedAvg under secure aggregation: 2 message round trips per steady-state round."""

    def __init__(
        self,
        layout: PackLayout,
        plan: RoundPlan,
        secagg: SecAggPlan,
        *,
        dp: DpPlan | None = None,
        roster: Roster | None = None,
        **fedavg_options: Any,
    ) -> None:
        super().__init__(layout, plan, **fedavg_options)
        self.secagg = secagg
        self.roster = roster  # node id -> certified identity key; None: a development fleet
        self.dp = dp  # distributed differential privacy (server/privacy.py), or None
        self._charged: list[Release] = []  # every round released under DP, in order
        self._length = layout.size + EXTRA_VALUES  # what a node masks
        # Under DP each device adds Skellam noise planned for the fewest survivors, and the
        # round's q is what one device's integers span (ticket/secagg/privacy.py).
        self.skellam: SkellamParams | None = None
        self._params = secagg.params()
        if dp is not None:
            self.skellam = dp.skellam(self._length, self.min_survivors)
            levels = self.skellam.levels(self._length)
            self._params = dataclasses.replace(self._params, levels=levels)
        self._sampled: dict[int, dict[str, Any]] = {}  # round -> its Poisson sample's sizes
        self._timeout = 3600.0
        self._last_round = 0  # run-wide
        self._run_id = 0
        self._current: _Pending | None = None  # round r, in phase MASK once set up
        self._next: _Pending | None = None  # round r + 1, collecting keys during round r
        self._requests: dict[int, bytes] = {}  # MaskRequest(r) by member
        self._failure: str | None = None  # why round r has no key setup
        self._carried: dict[str, list[int]] = {}  # round r's drops during its key setup
        self._sent_train: set[int] = set()
        self._global = np.zeros(0, np.float32)

    def start(  # noqa: PLR0917  # PackedFedAvg's signature
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        first_round: int = 1,
    ) -> Result:
        """PackedFedAvg.start; round `first_round` begins with a key setup exchange."""
        self._run_id = grid.run.run_id
        self._timeout, self._last_round = float(timeout), num_rounds
        self._current = self._next = None
        self._requests, self._failure = {}, None
        return super().start(
            grid,
            initial_arrays,
            num_rounds,
            timeout,
            train_config,
            evaluate_config,
            evaluate_fn,
            first_round=first_round,
        )

    def restore_privacy(self, lines: Iterable[Mapping[str, Any]], *, rounds_left: int) -> None:
        """A resumed run's privacy spending so far, from its run log's lines; RunConfigError,
        before any round, when the rounds left would take epsilon over dp-epsilon-budget."""
        self._charged = charged_rounds(lines)
        if self.dp is not None and self.skellam is not None:
            planned = self.dp.release(self.skellam, self._length, self.min_survivors)
            try:
                self.dp.check_budget(self._charged, rounds_left, planned)
            except ValueError as error:
                raise RunConfigError(f"run config: {error}") from None

    @property
    def min_survivors(self) -> int:
        """The fewest masked vectors a round is summed from (below: aborted)."""
        return max(2, self.plan.min_replies)

    # ------------------------------------------------------------ trip A

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = server_round + self._offset
        record = self.rounds.setdefault(r, RoundRecord(r))
        record.secagg = {"members": [], "survivors": [], "dropped": {}, "aborted": None}
        if self._current is None or self._current.round.round != r:
            self._setup(r, grid, record)
        if r in self._sampled:  # drawn during round r - 1, or by the setup just now
            record.secagg["sampling"] = self._sampled.pop(r)
        record.secagg["dropped"].update(self._carried)
        record.secagg["members"] = sorted(self._requests)
        self._next = None
        if r < self._last_round:
            cohort = self._sample(r + 1, grid)
            self._next = _Pending(self._server_round(r + 1), asked=set(cohort))
        self._global = arrays[PAYLOAD_KEY].numpy().copy()  # float32 [n]
        refuse_extra_config(config)
        train = self._member_instruction(r, arrays)
        kind = MessageType.TRAIN if train is not None else MessageType.QUERY
        asked = self._next.asked if self._next is not None else set()
        messages = []
        for node in sorted(set(self._requests) | asked):
            ask = self._request(r, advert_round=r + 1 if node in asked else None)
            is_member = node in self._requests
            if is_member:
                ask = self._member_ask(ask, self._requests[node])
            records = ask.to_record()
            if is_member and train is not None:
                records = records.merged(train.to_record())
            content = to_flower(records)
            down = _size(content.config_records[SECAGG])
            if is_member and train is not None:
                down += train.size
            messages.append(Message(content, dst_node_id=node, message_type=kind))
            record.bytes_down[node] = record.bytes_down.get(node, 0) + down
        self._sent_train = {message.metadata.dst_node_id for message in messages}
        members = frozenset(self._requests)
        self.expect(
            r,
            "train",
            goal=self.policy.goal if members else None,  # the goal counts masked inputs
            minimum=self.min_survivors,
            counted=members or None,
        )
        if messages:
            record.round_trips["train"] = 1
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = server_round + self._offset
        self.account_trips()
        record = self.rounds.setdefault(r, RoundRecord(r))
        got = self._receive(replies, self._sent_train, record, "train", record.closed)
        current, pending = self._current, self._next
        for node, parts in got.items():
            if current is not None and node in self._requests:
                add = current.round.add_masked_input
                self._apply(record, node, "masked input", parts.masked_input, add)
            if pending is not None and node in pending.asked:
                add = pending.round.add_advert
                self._apply(record, node, "key advert", parts.key_advert, add)
        if current is not None:
            self._drop(record, "mask", set(self._requests) - current.round.survivors)
        if pending is not None:
            pending.dropped["advert"] = sorted(pending.asked - set(pending.round.keys))
        result, reason = self._unmask_and_share(r, record)
        self.history.observe(record.failures)
        return self._finish(r, record, result, reason)

    def _member_instruction(self, r: int, arrays: ArrayRecord) -> TrainInstruction | None:
        """What a member of round r computes the vector it masks from: training from the
        global values (a train message). None: the mask request says it (a query message)."""
        return self._train_instruction(r, self._encode_global(r, arrays))

    def _member_ask(self, ask: SecAggRequest, mask_request: bytes) -> SecAggRequest:
        """A member's secagg request; under DP the device clips to C and adds its noise."""
        return dataclasses.replace(ask, mask_request=mask_request, dp=self.skellam)

    # ------------------------------------------------------------ trip B

    def _unmask_and_share(self, r: int, record: RoundRecord) -> tuple[Any, str | None]:
        """Trip B: reveal shares of round r, share keys of r + 1; (result, why it aborted)."""
        current, pending = self._current, self._next
        unmask: dict[int, bytes] = {}
        reason = self._failure if current is None else None
        if current is not None:
            try:
                unmask = current.round.unmask_requests()
            except RoundAbortedError as error:
                reason = str(error)
        bundles = self._bundles(pending)
        outgoing = {node: self._request(r, unmask_request=ask) for node, ask in unmask.items()}
        for node, bundle in bundles.items():
            ask = outgoing.get(node, self._request(r))
            outgoing[node] = dataclasses.replace(ask, key_bundle=bundle, bundle_round=r + 1)
        asked, bundled = set(unmask), set(bundles)
        survivors = None if current is None or not unmask else current.round

        def enough(ok: frozenset[int]) -> bool:
            unmasked = survivors is None or survivors.can_rebuild(ok & asked)
            return unmasked and (not bundled or len(ok & bundled) >= self.min_survivors)

        for node, parts in self._exchange(outgoing, record, "unmask", enough=enough).items():
            if current is not None and node in unmask:
                add = current.round.add_unmask_response
                self._apply(record, node, "unmask response", parts.unmask_response, add)
            if pending is not None and node in bundles:
                add = pending.round.add_share_bundle
                self._apply(record, node, "share bundle", parts.share_bundle, add)
        self._promote(set(bundles))  # round r + 1 becomes current
        if current is None or reason is not None:
            return None, reason
        self._drop(record, "unmask", set(unmask) - set(current.round.revealed))
        try:
            return current.round.result(), None
        except RoundAbortedError as error:
            return None, str(error)

    def _finish(
        self, r: int, record: RoundRecord, result: Any, reason: str | None
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        secagg = record.secagg if record.secagg is not None else {}
        arrays = None
        if result is not None:
            try:
                if self.skellam is None:
                    mean, weight, loss = read_sum(result.sum(), result.params)
                else:  # every device weighs 1 and releases no loss under DP
                    weight, loss = float(len(result.survivors)), math.nan
                    total = decode_sum(result.total, result.bits, self.skellam.scale)
                    mean = (total[:-EXTRA_VALUES] / weight).astype(np.float32)  # [k]
            except RoundAbortedError as error:
                reason = str(error)
            else:
                record.accepted = sorted(result.survivors)
                secagg["survivors"] = sorted(result.survivors)
                secagg["weight"] = weight
                secagg["levels"], secagg["bits"] = result.params.levels, result.bits
                if self.dp is None:
                    record.train_metrics = {TRAIN_LOSS: loss}
                else:  # the round's privacy cost in place of a loss
                    secagg["dp"] = self._charge(len(result.survivors))
                arrays = ArrayRecord({PAYLOAD_KEY: Array(self._global + mean)})
        if reason is not None:
            secagg["aborted"] = reason
            logger.warning("round %d aborted, global model unchanged: %s", r, reason)
        metrics = MetricRecord(
            {**record.metrics(), **record.train_metrics, "aborted": int(arrays is None)}
        )
        return arrays, metrics

    def _charge(self, survivors: int) -> dict[str, Any]:
        """Account for one released sum of `survivors` noisy vectors (DP on)."""
        if self.dp is None or self.skellam is None:
            raise RuntimeError("no differential privacy plan to charge")
        release = self.dp.release(self.skellam, self._length, survivors)
        self._charged.append(release)
        return {
            "mechanism": "skellam",
            "noise_multiplier": release.noise_multiplier,
            "clip_norm": self.dp.clip_norm,
            "delta": self.dp.delta,
            "epsilon": epsilon(self._charged, self.dp.delta),
            "rounds_charged": len(self._charged),
            "release": release.to_json(),
        }

    # ------------------------------------------------------------ setup and key rotation

    def _setup(self, r: int, grid: Grid, record: RoundRecord) -> None:
        """The two-trip key setup of round r; leaves it in phase MASK, or says why not."""
        pending = _Pending(self._server_round(r), asked=set(self._sample(r, grid)))
        adverts = {node: self._request(r, advert_round=r) for node in pending.asked}
        for node, parts in self._exchange(adverts, record, "setup").items():
            add = pending.round.add_advert
            self._apply(record, node, "key advert", parts.key_advert, add)
        pending.dropped["advert"] = sorted(pending.asked - set(pending.round.keys))
        self._next = pending
        bundles = self._bundles(pending)
        outgoing = {
            node: self._request(r, key_bundle=bundle, bundle_round=r)
            for node, bundle in bundles.items()
        }
        for node, parts in self._exchange(outgoing, record, "setup").items():
            add = pending.round.add_share_bundle
            self._apply(record, node, "share bundle", parts.share_bundle, add)
        self._promote(set(bundles))

    def _bundles(self, pending: _Pending | None) -> dict[int, bytes]:
        if pending is None or pending.round.phase is not Phase.ADVERTISE:
            return {}
        try:
            return pending.round.key_bundles()
        except RoundAbortedError as error:
            pending.failure = f"key setup: {error}"
            return {}

    def _promote(self, bundled: set[int]) -> None:
        """The next round becomes current once its members are fixed, or keeps why not."""
        pending, self._next = self._next, None
        self._current, self._requests, self._failure = None, {}, None
        if pending is None:
            return
        if pending.round.phase is Phase.SHARE:
            try:
                self._requests = pending.round.mask_requests()
            except RoundAbortedError as error:
                pending.failure = f"key setup: {error}"
            else:
                self._current = pending
        pending.dropped["shares"] = sorted(bundled - set(self._requests))
        self._carried = {stage: nodes for stage, nodes in pending.dropped.items() if nodes}
        self._failure = pending.failure or (None if self._current else "key setup failed")

    def _server_round(self, r: int) -> ServerRound:
        return ServerRound(
            run_id=self._run_id,
            round=r,
            params=self._params,
            length=self.layout.size + EXTRA_VALUES,
            min_survivors=self.min_survivors,
            roster=self.roster,
            target_error=self.secagg.target_error or None,
        )

    def _sample(self, r: int, grid: Grid) -> list[int]:
        """The cohort of round r: FedAvg's sample, seeded by (seed, r) like the plain path;
        under a round goal, the over-selected failure-weighted one (PackedFedAvg.sample);
        under dp-sampling-rate q, a Poisson sample: each online node with probability q."""
        if self.dp is not None and self.dp.sampling_rate > 0:
            _, online = sample_nodes(grid, self.min_available_nodes, 0)  # waits for min-nodes
            nodes = sorted(online)
            # Seeded by (seed, r) so a resumed round draws the same cohort; the draw is the
            # server's, which sees the cohort either way (server/privacy.py).
            draw = np.random.default_rng([self.plan.seed, r]).random(len(nodes))  # [online]
            rate = self.dp.sampling_rate
            cohort = [node for node, u in zip(nodes, draw, strict=True) if u < rate]
            self._sampled[r] = {
                "kind": "poisson",
                "rate": rate,
                "online": len(nodes),
                "sampled": len(cohort),
            }
            return cohort
        if self.policy.managed:
            return self.sample(r, grid)
        with seeded_sampling(self.plan.seed, r, "train"):
            size = max(
                int(len(list(grid.get_node_ids())) * self.fraction_train), self.min_train_nodes
            )
            nodes, _ = sample_nodes(grid, self.min_available_nodes, size)
        return sorted(nodes)

    # ------------------------------------------------------------ messages

    def _request(
        self,
        r: int,
        *,
        advert_round: int | None = None,
        unmask_request: bytes | None = None,
        key_bundle: bytes | None = None,
        bundle_round: int | None = None,
    ) -> SecAggRequest:
        return SecAggRequest(
            round=r,
            weight_cap=self.secagg.weight_cap,
            advert_round=advert_round,
            unmask_request=unmask_request,
            key_bundle=key_bundle,
            bundle_round=bundle_round,
        )

    def _exchange(
        self,
        outgoing: Mapping[int, SecAggRequest],
        record: RoundRecord,
        step: str,
        *,
        enough: Callable[[frozenset[int]], bool] | None = None,
    ) -> dict[int, SecAggReply]:
        """One query round trip of protocol bytes, bounded by the round timeout (with a round
        goal: closed after the deadline once max(2, min-replies) answered, or `enough`)."""
        if not outgoing:
            return {}
        messages = []
        for node, ask in sorted(outgoing.items()):
            content = to_flower(ask.to_record())
            size = _size(content.config_records[SECAGG])
            record.bytes_down[node] = record.bytes_down.get(node, 0) + size
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.QUERY))
        record.round_trips[step] = record.round_trips.get(step, 0) + 1
        grid = self._deadline_grid
        if grid is None:
            raise RuntimeError("secure aggregation needs start(): no grid to send on")
        self.expect(record.server_round, step, minimum=self.min_survivors, enough=enough)
        replies = grid.send_and_receive(messages, timeout=self._timeout)
        trip = self.account_trips()
        return self._receive(
            replies, set(outgoing), record, step, trip.closed if trip is not None else None
        )

    def _receive(
        self,
        replies: Iterable[Message],
        sent: set[int],
        record: RoundRecord,
        step: str,
        closed: str | None,
    ) -> dict[int, SecAggReply]:
        """{node: its secagg reply} of the usable replies; errors and silence are failures."""
        got: dict[int, SecAggReply] = {}
        failed: set[int] = set()
        for message in replies:
            node = message.metadata.src_node_id
            if node not in sent or node in got or node in failed:
                record.rejected[node] = f"{step}: unexpected reply"
                continue
            if message.has_error():
                error = message.error
                self._fail(record, node, f"error {error.code} ({step}): {error.reason}")
                failed.add(node)
                continue
            parts = message.content.config_records.get(SECAGG)
            if parts is not None:  # counted even when refused: it was received
                record.bytes_up[node] = record.bytes_up.get(node, 0) + _size(parts)
            try:
                got[node] = SecAggReply.from_record(from_flower(message.content))
            except WireError as error:
                record.rejected[node] = f"{step}: {error}"
                failed.add(node)
        for node in sorted(sent - got.keys() - failed):
            self._fail(record, node, f"{no_reply(closed)} ({step})")
        return got

    def _apply(self, record: RoundRecord, node: int, what: str, data: Any, add: Any) -> None:
        """Hand one protocol message to the ServerRound; a refused one is counted as rejected."""
        if not isinstance(data, bytes):
            record.rejected[node] = f"reply lacks the {what} it was asked for"
            return
        try:
            add(node, data)
        except TicketError as error:  # MessageError, RoundStateError, IntegrityError
            record.rejected[node] = f"{what} refused: {error}"
            logger.warning(
                "round %d: rejected node %d's %s: %s", record.server_round, node, what, error
            )

    def _fail(self, record: RoundRecord, node: int, reason: str) -> None:
        record.failures.setdefault(node, reason)
        logger.warning("round %d: node %d failed: %s", record.server_round, node, reason)

    def _drop(self, record: RoundRecord, stage: str, nodes: set[int]) -> None:
        if record.secagg is not None and nodes:
            record.secagg["dropped"][stage] = sorted(nodes)


def _size(record: ConfigRecord) -> int:
    """A secagg record's bytes as Flower counts them (keys and values)."""
    return int(record.count_bytes())
