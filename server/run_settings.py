"""A run's `context.run_config`, typed once for the server: a training run (`ServerSettings`)
and a rollout (`DeploySettings`), from ticket/runconfig.py's keys."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from server.privacy import DpPlan
from server.round_policy import RoundPolicy
from server.secagg_round import SecAggPlan
from server.strategy import RoundPlan
from ticket import runconfig
from ticket.errors import TicketError
from ticket.runconfig import (
    ConfigValue,
    RunConfig,
    RunConfigError,
    RunPlacement,
    TrainingSettings,
)
from ticket.train_config import TrainConfig


@dataclass(frozen=True)
class ServerSettings:
    """A training run's `context.run_config`, typed once (ticket/runconfig.py's keys)."""

    ticket_path: Path
    run_dir: Path  # checkpoints, rounds.jsonl, rounds.png; a restart resumes from it
    server_eval: str  # dataset whose pooled test rows the server scores ("": off)
    fleet_key: Path | None  # PEM public key the ticket must be signed by
    allow_unsigned: bool
    num_rounds: int
    round_timeout_s: float
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int  # sampled per round, and needed online before sampling
    plan: RoundPlan  # ticket id filled in from the ticket itself
    # secure aggregation (server/secagg_round.py); None: plaintext FedAvg
    secagg: SecAggPlan | None = None
    # dp-noise-multiplier > 0: distributed differential privacy (server/privacy.py); needs
    # secagg. None: off
    dp: DpPlan | None = None
    roster: Path | None = None  # nodes.json: certified node keys for secure aggregation
    rounds: RoundPolicy = field(default_factory=RoundPolicy)  # goal, over-selection, deadline

    @classmethod
    def from_run_config(cls, config: Mapping[str, ConfigValue]) -> "ServerSettings":
        return cls.from_run(runconfig.parse(config))

    @classmethod
    def from_run(cls, run: RunConfig) -> "ServerSettings":
        where, train = run.placement, run.training
        return cls(
            ticket_path=runconfig.require(where, "ticket_path"),
            run_dir=runconfig.require(where, "run_dir"),
            server_eval=train.server_eval or "",
            fleet_key=where.fleet_key,
            allow_unsigned=train.allow_unsigned,
            num_rounds=train.num_rounds,
            round_timeout_s=train.round_timeout_s,
            fraction_train=train.fraction_train,
            fraction_evaluate=train.fraction_evaluate,
            min_nodes=train.min_nodes,
            plan=RoundPlan(
                ticket_id="",
                train=TrainConfig(
                    epochs=train.local_epochs,
                    batch_size=train.batch_size,
                    lr=train.lr,
                    optimizer=train.optimizer,
                ),
                uplink_dtype=train.uplink_dtype,
                downlink_dtype=train.downlink_dtype,
                seed=train.seed,
                min_replies=train.min_replies,
            ),
            secagg=_secagg_plan(train),
            dp=_dp_plan(train),
            roster=where.roster,
            rounds=RoundPolicy.of(train),
        )

    def __post_init__(self) -> None:
        if self.dp is not None and self.secagg is None:
            raise RunConfigError(
                "run config: dp-noise-multiplier needs secagg = true: without secure "
                "aggregation the server sees each update with only its device's share of the noise"
            )
        if self.dp is not None and self.secagg is not None and self.secagg.target_error > 0:
            raise RunConfigError(
                "run config: secagg-target-error does not apply under differential privacy: "
                "the Skellam mechanism's integers set each round's levels; leave it at 0"
            )


@dataclass(frozen=True)
class DeploySettings:
    """A rollout run (`mode = "deploy"`): push the ticket at ticket-path to the devices."""

    ticket_path: Path  # the signed bundle to push
    run_dir: Path  # where deploy.json (the acknowledgements) is written
    fleet_key: Path  # the server checks the signature too before pushing
    timeout_s: float  # round-timeout-s: how long devices have to answer
    canary_fraction: float  # 0: everyone at once
    seed: int  # picks the canary, orders the canary's training data
    # The canary's evaluation (server/rollout.py): baseline-ticket-path the active ticket
    # (None: none yet), trained on each canary device with canary-epochs and the run's
    # batch-size, lr, optimizer; canary-max-regression the accuracy it may lose.
    baseline_path: Path | None
    canary_train: TrainConfig | None  # None: no evaluation, installing is enough
    max_regression: float
    min_installed: float  # the fraction of devices that must install

    @classmethod
    def from_run_config(cls, config: Mapping[str, ConfigValue]) -> "DeploySettings":
        return cls.from_run(runconfig.parse(config))

    @classmethod
    def from_run(cls, run: RunConfig) -> "DeploySettings":
        where, train, rollout = run.placement, run.training, run.rollout
        try:
            canary_train = TrainConfig(
                epochs=rollout.canary_epochs,
                batch_size=train.batch_size,
                lr=train.lr,
                optimizer=train.optimizer,
            )
        except TicketError as error:
            raise RunConfigError(f"run config: canary training: {error}") from None
        return cls(
            ticket_path=_required_to_deploy(where, "ticket_path"),
            run_dir=_required_to_deploy(where, "run_dir"),
            fleet_key=_required_to_deploy(where, "fleet_key"),
            timeout_s=train.round_timeout_s,
            canary_fraction=rollout.canary_fraction,
            seed=train.seed,
            baseline_path=rollout.baseline_ticket_path,
            canary_train=canary_train if rollout.canary_epochs > 0 else None,
            max_regression=rollout.canary_max_regression,
            min_installed=rollout.min_installed,
        )


def _required_to_deploy(where: RunPlacement, name: str) -> Path:
    try:
        path: Path = runconfig.require(where, name)
    except RunConfigError as error:
        raise RunConfigError(f"{error} to deploy") from None
    return path


def _secagg_plan(train: TrainingSettings) -> SecAggPlan | None:
    if not train.secagg:
        return None
    try:
        plan = SecAggPlan.of(train)
        plan.params()  # range checks of the protocol's parameters
    except ValueError as error:  # ParamsError, or the weight cap's own check
        raise RunConfigError(f"run config: secagg-*: {error}") from None
    # The cohorts a round may have that the config knows of: the fewest a sum is taken over,
    # the fewest sampled, and a round goal's over-selected sample (a round whose cohort
    # still cannot meet the target is aborted, saying so).
    sizes = {max(2, train.min_replies), max(2, train.min_nodes)}
    if train.round_goal > 0:
        policy = RoundPolicy.of(train)
        sizes.add(max(2, math.ceil(policy.goal * policy.overselect - 1e-9), train.min_nodes))
    try:
        plan.check_cohorts(sizes)
    except ValueError as error:
        raise RunConfigError(f"run config: secagg-target-error: {error}") from None
    return plan


def _dp_plan(train: TrainingSettings) -> DpPlan | None:
    if train.dp_noise_multiplier == 0.0:
        for key, value in (
            ("dp-sampling-rate", train.dp_sampling_rate),
            ("dp-epsilon-budget", train.dp_epsilon_budget),
        ):
            if value:
                raise RunConfigError(f"run config: {key} needs dp-noise-multiplier > 0")
        return None
    try:
        return DpPlan.of(train)
    except ValueError as error:
        raise RunConfigError(f"run config: {error}") from None
