"""A federated fit of the encoding of readings: the fleet's counts, summed under secure aggregation.

`HeartPreprocessor.fit` needs only counts (ticket/data/heart_counts.py): a histogram of every
column of the training readings. So the server asks each device once for its 1,741 counts and
sums them under secure aggregation: the server learns the fleet's histogram, nothing per
device, and `fit_counts` of that sum is the encoder `fit` would make of the pooled rows.

The round is ticket/secagg's, driven by SecurePackedFedAvg, with two differences: the members'
mask request travels on a query message naming the readings schema and a public cap on every
count (ticket/wire.py SecAggRequest counts-schema, count-cap), since there is no ticket to
train yet; and the round's q is cap + 1, so the survivors' sum is exact, never quantised. A
device whose counts exceed the cap refuses the round rather than wrap around.

There is no plaintext path: a device's histogram alone would describe its patients' readings.
Distributed DP noise on the counts is not built, so a run with DP refuses the fit
(docs/fleet-search.md says what that leaves).
"""

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from server.enrolment import load_roster
from server.run_settings import ServerSettings
from server.secagg_round import SecAggPlan, SecurePackedFedAvg
from server.strategy import PAYLOAD_KEY, RoundPlan, RoundRecord
from ticket.data.heart_counts import COUNTS_LENGTH, SLOTS, Counts, fit_counts
from ticket.data.heart_encoding import HeartPreprocessor, ReadingError
from ticket.errors import TicketError
from ticket.packing import PackLayout
from ticket.wire import SecAggRequest, TrainInstruction

logger = logging.getLogger(__name__)

COUNTS_ARRAY = "counts"  # the one array the round's layout packs
DEFAULT_COUNT_CAP = 2**16 - 1  # rows a device may hold; q = cap + 1 keeps n * q under 2^32
# readings schema -> classes of its label, for the schemas with a counts layout
# (ticket/data/heart_counts.py)
SCHEMAS = {"heart-uci": 2}


class EncodingFitError(TicketError):
    """The fleet's counts could not be summed or fitted: too few devices, a refused round."""


@dataclass(frozen=True)
class EncodingFit:
    """The encoder fitted on the fleet's summed counts, and what the round cost."""

    preprocessor: HeartPreprocessor
    schema: str
    devices: int  # devices whose counts are in the sum
    rows: int  # readings counted, over the fleet
    round: int  # the run-wide round number it ran as
    bytes_up: int
    bytes_down: int
    nodes: tuple[int, ...] = ()  # the devices whose counts are in the sum
    rejected: dict[int, str] = field(default_factory=dict)  # node -> why its reply was refused

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "devices": self.devices,
            "rows": self.rows,
            "round": self.round,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "rejected": {str(node): why for node, why in sorted(self.rejected.items())},
        }


class SecureCountSum(SecurePackedFedAvg):
    """One secure round in which every member masks its counts of its readings."""

    def __init__(
        self, plan: RoundPlan, secagg: SecAggPlan, *, schema: str, cap: int, **options: Any
    ) -> None:
        shape = {COUNTS_ARRAY: (COUNTS_LENGTH,)}
        layout = PackLayout.from_masks(shape, {COUNTS_ARRAY: np.ones(COUNTS_LENGTH, np.bool_)})
        # q = cap + 1: a member's counts are its levels, so the sum is exact.
        exact = dataclasses.replace(secagg, levels=cap + 1, target_error=0.0)
        super().__init__(layout, plan, exact, **options)
        self.schema, self.cap = schema, cap
        self.total: Counts | None = None  # the survivors' summed counts, once unmasked

    def _member_instruction(self, r: int, arrays: ArrayRecord) -> TrainInstruction | None:
        return None  # nothing to train: the mask request names the counts

    def _member_ask(self, ask: SecAggRequest, mask_request: bytes) -> SecAggRequest:
        return dataclasses.replace(
            ask, mask_request=mask_request, counts_schema=self.schema, count_cap=self.cap
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # counts are not a model: nothing to evaluate

    def _finish(
        self, r: int, record: RoundRecord, result: Any, reason: str | None
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        secagg = record.secagg if record.secagg is not None else {}
        if result is not None and reason is None:
            # The trailing slots, a training update's weight and loss, are zeros here.
            self.total = result.total[:COUNTS_LENGTH].astype(np.int64)  # int64 [COUNTS_LENGTH]
            record.accepted = sorted(result.survivors)
            secagg["survivors"] = sorted(result.survivors)
            secagg["levels"], secagg["bits"] = result.params.levels, result.bits
        else:
            secagg["aborted"] = reason or "no sum"
        metrics = MetricRecord({**record.metrics(), "aborted": int(self.total is None)})
        return None, metrics


def fit_encoding(
    grid: Grid,
    training: ServerSettings,
    *,
    schema: str = "heart-uci",
    cap: int = DEFAULT_COUNT_CAP,
    round_number: int = 1,
) -> EncodingFit:
    """Sum the fleet's counts of its `schema` readings in round `round_number` (sampled as the
    run's training rounds are, waiting for min-nodes) and fit the encoder; EncodingFitError
    when the fit cannot run or its round gave no sum."""
    if schema not in SCHEMAS:
        raise EncodingFitError(f"no encoding fit for readings schema {schema!r}")
    if training.secagg is None:
        raise EncodingFitError("the encoding is fitted under secure aggregation only")
    if training.dp is not None:
        raise EncodingFitError("DP noise on the encoding's counts is not built")
    if not 1 <= cap < 2**24:
        raise EncodingFitError(f"the count cap must be in 1..{2**24 - 1}, got {cap}")
    roster = load_roster(training.roster) if training.roster is not None else None
    strategy = SecureCountSum(
        training.plan,
        training.secagg,
        schema=schema,
        cap=cap,
        roster=roster,
        fraction_train=training.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=training.min_nodes,
        min_evaluate_nodes=0,
        min_available_nodes=training.min_nodes,
    )
    initial = np.zeros(COUNTS_LENGTH, np.float32)  # unused: a member sends counts only
    strategy.start(
        grid,
        ArrayRecord({PAYLOAD_KEY: Array(initial)}),
        num_rounds=round_number,
        timeout=training.round_timeout_s,
        first_round=round_number,
    )
    record = strategy.rounds.get(round_number, RoundRecord(round_number))
    if strategy.total is None:
        why = (record.secagg or {}).get("aborted", "no round ran")
        raise EncodingFitError(
            f"the fleet's counts could not be summed: {why} "
            f"(rejected: {len(record.rejected)}, failed: {len(record.failures)})"
        )
    try:
        preprocessor = fit_counts(strategy.total)
    except ReadingError as error:
        why = f"the fleet's summed counts do not fit an encoding: {error}"
        raise EncodingFitError(why) from None
    fit = EncodingFit(
        preprocessor=preprocessor,
        schema=schema,
        devices=len(record.accepted),
        rows=_rows(strategy.total),
        round=round_number,
        bytes_up=sum(record.bytes_up.values()),
        bytes_down=sum(record.bytes_down.values()),
        nodes=tuple(record.accepted),
        rejected=dict(record.rejected),
    )
    logger.info(
        "encoding fitted on %d devices' counts (%d readings), %d B up",
        fit.devices,
        fit.rows,
        fit.bytes_up,
    )
    return fit


def _rows(total: Counts) -> int:
    """Readings counted: any one column's bins and missing count add up to all of them."""
    first = SLOTS[0]
    return int(total[first.start : first.missing + 1].sum())
