"""A resumable training run: checkpoint and log every round, resume after the last checkpoint.

Files under the run directory: `checkpoints/round-NNNNNN.ckpt` (server/checkpoint.py),
`rounds.jsonl` and `rounds.png` (server/run_log.py). Each round ends, in this order, with
server-side evaluation, the checkpoint, then the log line; a restart resumes at the round after
the last checkpoint with its vector, so no round's updates are averaged in twice or skipped.
After that the run looks for a stop request (server/run_control.py): `fleet-server run` asks
for one when the fleet's active ticket changes, and the run ends there, its round kept.
"""

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from server.checkpoint import RunCheckpoint
from server.deadline_grid import DeadlineGrid
from server.enrolment import load_roster
from server.evaluation import ServerEvaluator
from server.privacy import DpPlan
from server.round_policy import FailureHistory, RoundPolicy
from server.round_progress import ProgressFile
from server.run_control import stop_reason
from server.run_log import RunLog, plot_run, round_line
from server.secagg_round import SecAggPlan, SecurePackedFedAvg
from server.strategy import PAYLOAD_KEY, PackedFedAvg, RoundPlan, RoundRecord
from ticket.packing import PackLayout
from ticket.runconfig import RunConfigError, devices_needed
from ticket.secagg.errors import ParamsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    """Where a run directory keeps its files."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def log(self) -> Path:
        return self.root / "rounds.jsonl"

    @property
    def plot(self) -> Path:
        return self.root / "rounds.png"


class _StopRequestError(Exception):
    """Raised at the end of a round to leave Flower's round loop when a stop was asked for."""


def run_settings(strategy: PackedFedAvg, **extra: Any) -> dict[str, Any]:
    """What must stay the same across a resume: the round plan, node sampling, and `extra`.

    The number of rounds and the timeout are left out: a resumed run may run longer. So are
    the round keys (round-goal, round-overselect, round-deadline-s, strategy.policy): they
    decide when a round closes and who is asked, not what is averaged or how, so an operator
    may resume a run with a tighter deadline or another goal after seeing slow rounds.
    """
    plan = asdict(strategy.plan)
    del plan["ticket_id"]  # checked on its own, with its own error message
    if strategy.plan.search is not None:  # a search level's mask: bound by its digest
        mask = strategy.plan.search.mask
        plan["search"] = {**plan["search"], "mask": hashlib.sha256(mask).hexdigest()}
    return {
        "plan": plan,
        "sampling": {
            "fraction_train": strategy.fraction_train,
            "fraction_evaluate": strategy.fraction_evaluate,
            "min_train_nodes": strategy.min_train_nodes,
            "min_evaluate_nodes": strategy.min_evaluate_nodes,
            "min_available_nodes": strategy.min_available_nodes,
        },
        # Secure aggregation changes what is averaged (clip, quantisation): part of the run.
        **({"secagg": asdict(strategy.secagg)} if isinstance(strategy, SecurePackedFedAvg) else {}),
        # So does differential privacy: a run's epsilon composes rounds of one plan. The
        # budget is not part of the plan: a resumed run may raise or lower it.
        **(
            {"dp": {k: v for k, v in asdict(strategy.dp).items() if k != "epsilon_budget"}}
            if isinstance(strategy, SecurePackedFedAvg) and strategy.dp is not None
            else {}
        ),
        **extra,
    }


def make_strategy(
    layout: PackLayout,
    plan: RoundPlan,
    *,
    fraction_train: float,
    fraction_evaluate: float,
    min_nodes: int,
    secagg: SecAggPlan | None,
    dp: DpPlan | None,
    roster: Path | None = None,
    rounds: RoundPolicy | None = None,
) -> PackedFedAvg:
    """PackedFedAvg, or SecurePackedFedAvg (with distributed DP) under secure aggregation;
    `roster` (nodes.json) holds the certified node keys that secure rounds admit; `rounds`:
    the round goal, over-selection and deadline (None: goal 0, wait for every node)."""
    sampling: dict[str, Any] = {
        "fraction_train": fraction_train,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": min_nodes,
        "min_evaluate_nodes": min_nodes if fraction_evaluate > 0 else 0,
        "min_available_nodes": min_nodes,
    }
    if secagg is None:
        return PackedFedAvg(layout, plan, rounds=rounds, **sampling)
    enrolled = load_roster(roster) if roster is not None else None
    goal = rounds.goal if rounds is not None else 0
    key, needed = devices_needed(min_nodes, plan.min_replies, goal)
    if enrolled is not None and len(enrolled) < needed:
        # Only enrolled devices can join a secure round: fewer than a round needs, and every
        # round would wait for devices that do not exist.
        raise RunConfigError(
            f"run config: {roster} enrolls {len(enrolled)} device(s) for secure aggregation; "
            f"a round needs {needed} ({key}): enroll more or lower it"
        )
    try:
        return SecurePackedFedAvg(
            layout, plan, secagg, rounds=rounds, dp=dp, roster=enrolled, **sampling
        )
    except ParamsError as error:  # e.g. DP noise too wide for a masked value
        raise RunConfigError(f"run config: {error}") from None


def run_resumable(
    strategy: PackedFedAvg,
    grid: Grid,
    initial: npt.NDArray[np.float32],
    *,
    run_dir: Path,
    num_rounds: int,
    timeout: float,
    evaluator: ServerEvaluator | None = None,
    settings: Mapping[str, Any] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    start_round: int = 0,
    plot: bool = True,
    on_final: Callable[[int, npt.NDArray[np.float32]], None] | None = None,
) -> Result:
    """Run rounds 1..`num_rounds`, or those after the last checkpoint in `run_dir`.

    `initial` is the packed vector of round 0 (the ticket's W_k); `settings` defaults to
    `run_settings(strategy)`. Returns Flower's Result with run-wide round numbers and, unlike
    Flower's, `arrays` always holding the final global vector. Raises CheckpointError for a
    damaged checkpoint or one from another ticket or other settings. `start_round`: rounds
    numbered before this run directory's first (a fleet search's earlier levels); `plot`:
    redraw rounds.png after every round. A stop request in `run_dir` ends the run after the
    round in flight (or before the first one), with that round checkpointed and logged.
    `on_final(round, values)` is called once the run holds its last round (not after a stop
    request): the ServerApp sends the fleet the final model (server/final_model.py).
    """
    paths = RunPaths(Path(run_dir))
    checkpoints = RunCheckpoint(
        paths.checkpoints,
        ticket_id=strategy.plan.ticket_id,
        size=strategy.layout.size,
        settings=run_settings(strategy) if settings is None else settings,
    )
    log = RunLog(paths.log)
    latest = checkpoints.latest()
    done = start_round if latest is None else latest.server_round
    log.reconcile(done, None if latest is None else latest.record)
    # Who failed how recently (weights a managed round's sampling), from the kept rounds.
    strategy.history = FailureHistory.from_lines(log.read())
    if isinstance(strategy, SecurePackedFedAvg):  # privacy already spent by earlier rounds
        strategy.restore_privacy(log.read(), rounds_left=max(num_rounds - done, 0))
    vector = initial if latest is None else latest.vector
    if done >= num_rounds:
        logger.warning(
            "%s already holds round %d of %d: no round to run", paths.root, done, num_rounds
        )
    elif latest is not None:
        logger.info("resuming after round %d of %d (%s)", done, num_rounds, paths.root)

    def end_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round <= done:  # Flower's "round 0": the state we started from
            _stop_if_requested(paths.root, server_round)
            return None
        values = arrays[PAYLOAD_KEY].numpy()  # float32 [n]
        server_eval = None if evaluator is None else evaluator(values)
        record = strategy.rounds.get(server_round, RoundRecord(server_round))
        line = round_line(record, server_eval, now())
        line["ticket"] = strategy.plan.ticket_id  # which ticket the round trained
        checkpoints.save(server_round, values, line)  # before the log: see module docstring
        log.append(line)
        if plot:  # every round, so an operator watching it sees the round that just ended
            plot_run(paths.log, paths.plot, title=f"ticket {strategy.plan.ticket_id[:12]}")
        _stop_if_requested(paths.root, server_round)
        if server_eval is None:
            return None
        return MetricRecord(
            {key: value for key, value in server_eval.as_dict().items() if value is not None}
        )

    # The round in flight, for `fleet-server status` (the grid tells it each reply).
    if not isinstance(grid, DeadlineGrid):
        grid = DeadlineGrid(grid)
    grid.report_to(ProgressFile(paths.root))
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord({PAYLOAD_KEY: Array(vector)}),
            num_rounds=num_rounds,
            timeout=timeout,
            evaluate_fn=end_round,
            first_round=done + 1,
        )
    except _StopRequestError:
        result = Result()
    final = checkpoints.latest()
    result.arrays = ArrayRecord({PAYLOAD_KEY: Array(vector if final is None else final.vector)})
    if on_final is not None and final is not None and final.server_round >= num_rounds:
        on_final(final.server_round, final.vector)
    return result


def _stop_if_requested(run_dir: Path, server_round: int) -> None:
    reason = stop_reason(run_dir)
    if reason is not None:
        logger.info("stopping after round %d as asked: %s", server_round, reason)
        raise _StopRequestError(reason)
