"""The Flower ServerApp: load and verify the run's ticket, then run PackedFedAvg over the grid
(or SecurePackedFedAvg with run config `secagg = true`, with distributed differential privacy
when `dp-noise-multiplier` > 0); with `mode = "deploy"`, roll the ticket out; with
`mode = "find"`, search the fleet for a ticket inside it (server/fleet_search.py)."""

import logging
from dataclasses import asdict

import numpy as np
import numpy.typing as npt
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from server.evaluation import ServerEvaluator
from server.final_model import deliver_final_model
from server.fleet_search import FindSettings, run_search
from server.rollout import CanaryCheck, Rollout, roll_out, write_outcome
from server.rollout_progress import ProgressLog
from server.run_settings import DeploySettings, ServerSettings
from server.strategy import RoundPlan
from server.training_run import make_strategy, run_resumable
from ticket import runconfig
from ticket.bundle import read_ticket
from ticket.packing import PackLayout
from ticket.runconfig import RunConfigError

logger = logging.getLogger(__name__)

__all__ = ["DeploySettings", "RunConfigError", "ServerSettings", "app"]

# How long the ServerApp waits for the final model's acks; a node silent until then gets the
# model from the service's next delivery (server/final_model.py), so the run need not wait.
FINAL_MODEL_TIMEOUT_S = 60.0


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = runconfig.parse(context.run_config)
    if run.placement.mode == "find":
        found = run_search(grid, FindSettings.from_run(run))
        logger.info(
            "found ticket %s at density %.4f", found.content_id[:12], found.manifest.density.overall
        )
        return
    if run.placement.mode == "deploy":
        rollout = run_deploy(grid, DeploySettings.from_run(run))
        logger.info("rollout of %s: %s", rollout.ticket_id[:12], rollout.to_json())
        return
    settings = ServerSettings.from_run(run)
    result = run_training(grid, settings)
    logger.info("finished %d rounds; final metrics %s", settings.num_rounds, result)


def run_deploy(grid: Grid, settings: DeploySettings) -> Rollout:
    """Verify the bundle against the fleet key, push it (each ack appended to the progress
    file as it arrives), write `deploy.json`."""
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
    progress = ProgressLog(settings.run_dir)
    progress.start()
    rollout = roll_out(
        grid,
        bundle,
        ticket.content_id,
        timeout=settings.timeout_s,
        canary_fraction=settings.canary_fraction,
        seed=settings.seed,
        check=check,
        min_installed=settings.min_installed,
        on_ack=lambda ack: progress.append(asdict(ack)),
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
    strategy = make_strategy(
        layout,
        plan,
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_nodes=settings.min_nodes,
        secagg=settings.secagg,
        dp=settings.dp,
        roster=settings.roster,
        rounds=settings.rounds,
    )
    evaluator = (
        ServerEvaluator.held_out(ticket, layout, settings.server_eval)
        if settings.server_eval
        else None
    )

    def send_final(server_round: int, values: npt.NDArray[np.float32]) -> None:
        record = deliver_final_model(
            grid,
            settings.run_dir,
            ticket_id=ticket.content_id,
            layout=layout,
            values=values,
            server_round=server_round,
            timeout=min(settings.round_timeout_s, FINAL_MODEL_TIMEOUT_S),
        )
        logger.info(
            "final model of round %d: kept by %d node(s), refused by %d, %d silent",
            server_round,
            len(record.kept),
            len(record.refused),
            len(record.silent),
        )

    return run_resumable(
        strategy,
        grid,
        layout.pack(ticket.weights),
        run_dir=settings.run_dir,
        num_rounds=settings.num_rounds,
        timeout=settings.round_timeout_s,
        evaluator=evaluator,
        on_final=send_final,
    )
