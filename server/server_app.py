"""The Flower ServerApp: load and verify the run's ticket, then run PackedFedAvg over the grid
(or SecurePackedFedAvg with run config `secagg = true`, with distributed differential privacy
when `dp-noise-multiplier` > 0); or, with `mode = "deploy"`, roll the ticket out."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from server.evaluation import ServerEvaluator
from server.privacy import DpPlan
from server.rollout import CanaryCheck, Rollout, roll_out, write_outcome
from server.secagg_round import SecAggPlan, SecurePackedFedAvg
from server.strategy import PackedFedAvg, RoundPlan
from server.training_run import run_resumable
from ticket.bundle import read_ticket
from ticket.errors import TicketError
from ticket.packing import PackLayout
from ticket.secagg.privacy import saturation_margin
from ticket.train import TrainConfig

logger = logging.getLogger(__name__)

ConfigValue = bool | float | int | str
SATURATION_WARNING = 4.0  # secagg-clip below this many noise std: warn (saturation biases)


class RunConfigError(ValueError):
    """A `[tool.flwr.app.config]` / `--run-config` key is missing or ill-typed."""


@dataclass(frozen=True)
class ServerSettings:
    """`context.run_config`, typed once (keys in brackets)."""

    ticket_path: Path  # [ticket-path]
    run_dir: Path  # [run-dir] checkpoints, rounds.jsonl, rounds.png; a restart resumes from it
    server_eval: str  # [server-eval] dataset whose pooled test rows the server scores ("": off)
    fleet_key: Path | None  # [fleet-key] PEM public key the ticket must be signed by
    allow_unsigned: bool  # [allow-unsigned]
    num_rounds: int  # [num-rounds]
    round_timeout_s: float  # [round-timeout-s]
    fraction_train: float  # [fraction-train]
    fraction_evaluate: float  # [fraction-evaluate]
    min_nodes: int  # [min-nodes] sampled per round, and needed online before sampling
    plan: RoundPlan  # ticket id filled in from the ticket itself
    # [secagg] secure aggregation (server/secagg_round.py) with [secagg-clip], [secagg-levels],
    # [secagg-weight-cap]; None: plaintext FedAvg
    secagg: SecAggPlan | None = None
    # [dp-noise-multiplier] > 0: distributed differential privacy (server/privacy.py) with
    # [dp-clip-norm] and [dp-delta]; needs secagg. None: off
    dp: DpPlan | None = None

    @classmethod
    def from_run_config(cls, config: Mapping[str, ConfigValue]) -> "ServerSettings":
        key = _get(config, "fleet-key", str, "")
        ticket = _get(config, "ticket-path", str)
        if not ticket:
            raise RunConfigError("run config: ticket-path is required")
        run_dir = _get(config, "run-dir", str)
        if not run_dir:
            raise RunConfigError("run config: run-dir is required")
        return cls(
            ticket_path=Path(ticket),
            run_dir=Path(run_dir),
            server_eval=_get(config, "server-eval", str, ""),
            fleet_key=Path(key) if key else None,
            allow_unsigned=_get(config, "allow-unsigned", bool, False),
            num_rounds=_get(config, "num-rounds", int),
            round_timeout_s=float(_get(config, "round-timeout-s", float, 600.0)),
            fraction_train=float(_get(config, "fraction-train", float, 1.0)),
            fraction_evaluate=float(_get(config, "fraction-evaluate", float, 1.0)),
            min_nodes=_get(config, "min-nodes", int, 2),
            plan=RoundPlan(
                ticket_id="",
                train=TrainConfig(
                    epochs=_get(config, "local-epochs", int),
                    batch_size=_get(config, "batch-size", int),
                    lr=float(_get(config, "lr", float)),
                    optimizer=_get(config, "optimizer", str, "adam"),
                ),
                uplink_dtype=_get(config, "uplink-dtype", str, "float32"),
                downlink_dtype=_get(config, "downlink-dtype", str, "float32"),
                seed=_get(config, "seed", int, 0),
                min_replies=_get(config, "min-replies", int, 1),
            ),
            secagg=_secagg_plan(config),
            dp=_dp_plan(config),
        )

    def __post_init__(self) -> None:
        if self.dp is not None and self.secagg is None:
            raise RunConfigError(
                "run config: dp-noise-multiplier needs secagg = true: without secure "
                "aggregation the server sees each update with only its device's share of the noise"
            )


app = ServerApp()


@dataclass(frozen=True)
class DeploySettings:
    """A rollout run (`mode = "deploy"`): push the ticket at [ticket-path] to the devices."""

    ticket_path: Path  # [ticket-path] the signed bundle to push
    run_dir: Path  # [run-dir] where deploy.json (the acknowledgements) is written
    fleet_key: Path  # [fleet-key] the server checks the signature too before pushing
    timeout_s: float  # [round-timeout-s] how long devices have to answer
    canary_fraction: float  # [canary-fraction] 0: everyone at once
    seed: int  # [seed] picks the canary, orders the canary's training data
    # The canary's evaluation (server/rollout.py): [baseline-ticket-path] the active ticket
    # ("": none yet), trained on each canary device with [canary-epochs] and the run's
    # [batch-size], [lr], [optimizer]; [canary-max-regression] the accuracy it may lose.
    baseline_path: Path | None = None
    canary_train: TrainConfig | None = None  # None: no evaluation, installing is enough
    max_regression: float = 0.01
    min_installed: float = 1.0  # [min-installed] the fraction of devices that must install

    @classmethod
    def from_run_config(cls, config: Mapping[str, ConfigValue]) -> "DeploySettings":
        required = {
            key: _get(config, key, str, "") for key in ("ticket-path", "run-dir", "fleet-key")
        }
        for key, value in required.items():
            if not value:
                raise RunConfigError(f"run config: {key} is required to deploy")
        fraction = float(_get(config, "canary-fraction", float, 0.0))
        if not 0.0 <= fraction <= 1.0:
            raise RunConfigError(f"run config: canary-fraction must be in [0, 1], got {fraction}")
        regression = float(_get(config, "canary-max-regression", float, 0.01))
        if not 0.0 <= regression <= 1.0:
            raise RunConfigError(
                f"run config: canary-max-regression must be in [0, 1], got {regression}"
            )
        epochs = _get(config, "canary-epochs", int, 5)
        try:
            canary_train = TrainConfig(
                epochs=epochs,
                batch_size=_get(config, "batch-size", int, 32),
                lr=float(_get(config, "lr", float, 0.001)),
                optimizer=_get(config, "optimizer", str, "adam"),
            )
        except TicketError as error:
            raise RunConfigError(f"run config: canary training: {error}") from None
        baseline = _get(config, "baseline-ticket-path", str, "")
        min_installed = float(_get(config, "min-installed", float, 1.0))
        if not 0.0 < min_installed <= 1.0:
            raise RunConfigError(
                f"run config: min-installed must be in (0, 1], got {min_installed}"
            )
        return cls(
            ticket_path=Path(required["ticket-path"]),
            run_dir=Path(required["run-dir"]),
            fleet_key=Path(required["fleet-key"]),
            timeout_s=float(_get(config, "round-timeout-s", float, 600.0)),
            canary_fraction=fraction,
            seed=_get(config, "seed", int, 0),
            baseline_path=Path(baseline) if baseline else None,
            canary_train=canary_train if epochs > 0 else None,
            max_regression=regression,
            min_installed=min_installed,
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    mode = _get(context.run_config, "mode", str, "train")
    if mode == "deploy":
        rollout = run_deploy(grid, DeploySettings.from_run_config(context.run_config))
        logger.info("rollout of %s: %s", rollout.ticket_id[:12], rollout.to_json())
        return
    if mode != "train":
        raise RunConfigError(f'run config: mode must be "train" or "deploy", got {mode!r}')
    settings = ServerSettings.from_run_config(context.run_config)
    result = run_training(grid, settings)
    logger.info("finished %d rounds; final metrics %s", settings.num_rounds, result)


def run_deploy(grid: Grid, settings: DeploySettings) -> Rollout:
    """Verify the bundle against the fleet key, push it, write `deploy.json`."""
    bundle = settings.ticket_path.read_bytes()
    keys = [settings.fleet_key.read_bytes()]
    ticket = read_ticket(settings.ticket_path, trusted_keys=keys)
    check = None
    if settings.canary_fraction > 0 and settings.canary_train is not None:
        baseline = settings.baseline_path
        check = CanaryCheck(
            candidate=ticket,
            baseline=None if baseline is None else read_ticket(baseline, trusted_keys=keys),
            train=settings.canary_train,
            max_regression=settings.max_regression,
            seed=settings.seed,
        )
    rollout = roll_out(
        grid,
        bundle,
        ticket.content_id,
        timeout=settings.timeout_s,
        canary_fraction=settings.canary_fraction,
        seed=settings.seed,
        check=check,
        min_installed=settings.min_installed,
    )
    write_outcome(rollout, settings.run_dir)
    return rollout


def run_training(grid: Grid, settings: ServerSettings) -> Result:
    keys = [settings.fleet_key.read_bytes()] if settings.fleet_key is not None else []
    ticket = read_ticket(
        settings.ticket_path, trusted_keys=keys, allow_unsigned=settings.allow_unsigned
    )
    layout = PackLayout.from_ticket(ticket)
    plan = RoundPlan(**{**vars(settings.plan), "ticket_id": ticket.content_id})
    sampling: dict[str, Any] = {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_train_nodes": settings.min_nodes,
        "min_evaluate_nodes": settings.min_nodes if settings.fraction_evaluate > 0 else 0,
        "min_available_nodes": settings.min_nodes,
    }
    strategy = (
        PackedFedAvg(layout, plan, **sampling)
        if settings.secagg is None
        else SecurePackedFedAvg(layout, plan, settings.secagg, dp=settings.dp, **sampling)
    )
    if isinstance(strategy, SecurePackedFedAvg) and strategy.dp is not None:
        sigma = strategy.dp.noise_std(strategy.min_survivors)
        margin = saturation_margin(strategy.secagg.clip, sigma)
        if margin < SATURATION_WARNING:
            logger.warning(
                "secagg-clip %.3g spans only %.1f of a device's noise std %.3g: noisy values "
                "will saturate and bias the mean; raise secagg-clip",
                strategy.secagg.clip,
                margin,
                sigma,
            )
    evaluator = (
        ServerEvaluator.held_out(ticket, layout, settings.server_eval)
        if settings.server_eval
        else None
    )
    return run_resumable(
        strategy,
        grid,
        layout.pack(ticket.weights),
        run_dir=settings.run_dir,
        num_rounds=settings.num_rounds,
        timeout=settings.round_timeout_s,
        evaluator=evaluator,
    )


def _secagg_plan(config: Mapping[str, ConfigValue]) -> SecAggPlan | None:
    if not _get(config, "secagg", bool, False):
        return None
    default = SecAggPlan()
    try:
        plan = SecAggPlan(
            clip=float(_get(config, "secagg-clip", float, default.clip)),
            levels=_get(config, "secagg-levels", int, default.levels),
            weight_cap=_get(config, "secagg-weight-cap", int, default.weight_cap),
        )
        plan.params()  # range checks of the protocol's parameters
    except ValueError as error:  # ParamsError, or the weight cap's own check
        raise RunConfigError(f"run config: secagg-*: {error}") from None
    return plan


def _dp_plan(config: Mapping[str, ConfigValue]) -> DpPlan | None:
    noise = float(_get(config, "dp-noise-multiplier", float, 0.0))
    if noise == 0.0:
        return None
    try:
        return DpPlan(
            noise_multiplier=noise,
            clip_norm=float(_get(config, "dp-clip-norm", float, 0.1)),
            delta=float(_get(config, "dp-delta", float, 1e-5)),
        )
    except ValueError as error:
        raise RunConfigError(f"run config: {error}") from None


_MISSING: Any = object()


def _get(config: Mapping[str, ConfigValue], key: str, kind: type, default: Any = _MISSING) -> Any:
    if key not in config:
        if default is _MISSING:
            raise RunConfigError(f"run config: {key} is required")
        return default
    value = config[key]
    is_number = kind is float and isinstance(value, int) and not isinstance(value, bool)
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not (isinstance(value, kind) or is_number):
        raise RunConfigError(f"run config: {key} must be {kind.__name__}, got {value!r}")
    return value
