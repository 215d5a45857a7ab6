"""Distributed differential privacy in-process against the real ClientApp (heart-uci, 4 nodes).

Oracle: the plaintext run trains the same local models (training is seeded by run seed, round
and node), so the noiseless DP aggregate must be the flat mean of the clipped updates (up to
the integer rounding), and the Skellam noise on the real aggregate must have the standard
deviation the plan promises.
"""

import json
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import Result

from edge_daemon import client_app
from server.privacy import DpPlan, Release, epsilon
from server.secagg_round import SecAggPlan, SecurePackedFedAvg
from server.server_app import RunConfigError, ServerSettings
from server.strategy import PAYLOAD_KEY, PackedFedAvg, RoundPlan
from server.training_run import run_resumable
from tests.inprocess import InProcessGrid, heart_nodes, server_identity
from ticket.bundle import Ticket
from ticket.codec import Kind, decode_vector
from ticket.packing import PackLayout
from ticket.secagg.privacy import clip_l2
from ticket.secagg.weighting import EXTRA_VALUES
from ticket.train_config import TrainConfig
from ticket.wire import ARRAYS as ARRAYS_KEY
from ticket.wire import PACKED

TRAIN = TrainConfig(epochs=1, batch_size=32, lr=1e-3)
SECAGG = SecAggPlan(clip=0.25, levels=2**14, weight_cap=1000)
CLIP_NORM = 0.02  # below the heart updates' norms (~0.05-0.1): clipping is active


class CapturingGrid(InProcessGrid):
    """Keeps every reply, so a test can read the local updates the nodes sent."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.replies: list[Message] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += replies
        return replies


def _strategy(ticket: Ticket, dp: DpPlan | None) -> SecurePackedFedAvg:
    plan = RoundPlan(ticket_id=ticket.content_id, train=TRAIN)
    layout = PackLayout.from_ticket(ticket)
    return SecurePackedFedAvg(layout, plan, SECAGG, dp=dp, fraction_evaluate=0.0)


def _initial(ticket: Ticket) -> np.ndarray:
    return PackLayout.from_ticket(ticket).pack(ticket.weights)


def _run(ticket_path: Path, ticket: Ticket, run_dir: Path, plan: DpPlan, rounds: int) -> None:
    """A resumable secure DP run of the four hospitals in `run_dir`, to round `rounds`."""
    random.seed(0)
    with server_identity():
        run_resumable(
            _strategy(ticket, plan),
            InProcessGrid(client_app.app, heart_nodes(ticket_path)),
            _initial(ticket),
            run_dir=run_dir,
            num_rounds=rounds,
            timeout=60,
        )


def _one_round(strategy: PackedFedAvg, grid: InProcessGrid, ticket: Ticket) -> np.ndarray:
    random.seed(0)
    with server_identity():
        result: Result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord({PAYLOAD_KEY: Array(_initial(ticket))}),
            num_rounds=1,
            timeout=60,
        )
    return result.arrays[PAYLOAD_KEY].numpy()


def _local_updates(ticket_path: Path, ticket: Ticket) -> list[np.ndarray]:
    """Each node's delta (local - global) in round 1, from a plaintext run's replies."""
    layout = PackLayout.from_ticket(ticket)
    plain = PackedFedAvg(layout, RoundPlan(ticket.content_id, TRAIN), fraction_evaluate=0.0)
    grid = CapturingGrid(client_app.app, heart_nodes(ticket_path))
    _one_round(plain, grid, ticket)
    start = _initial(ticket)
    return [
        decode_vector(
            reply.content.array_records[ARRAYS_KEY][PACKED].data,
            kind=Kind.UPDATE,
            ticket_id=ticket.content_id,
            round=1,
            length=layout.size,
        )
        - start
        for reply in grid.replies
        if ARRAYS_KEY in reply.content.array_records
    ]


def test_the_noiseless_aggregate_is_the_flat_mean_of_the_clipped_updates(
    ticket_path: Path, ticket: Ticket
) -> None:
    deltas = _local_updates(ticket_path, ticket)
    assert len(deltas) == 4 and all(np.linalg.norm(d) > CLIP_NORM for d in deltas)
    expected = _initial(ticket) + np.mean([clip_l2(d, CLIP_NORM)[0] for d in deltas], axis=0)

    nearly_noiseless = DpPlan(noise_multiplier=1e-9, clip_norm=CLIP_NORM)
    strategy = _strategy(ticket, nearly_noiseless)
    got = _one_round(strategy, InProcessGrid(client_app.app, heart_nodes(ticket_path)), ticket)

    assert strategy.skellam is not None
    bound = 1 / strategy.skellam.scale + 1e-6  # each device's rounding moves a value < 1 step
    assert np.abs(got - expected).max() <= bound
    record = strategy.rounds[1]
    assert record.train_metrics == {}  # no loss is released under DP
    assert record.secagg is not None and record.secagg["weight"] == 4.0


def test_the_noise_on_the_aggregate_has_the_planned_deviation(
    ticket_path: Path, ticket: Ticket
) -> None:
    noiseless = _one_round(
        _strategy(ticket, DpPlan(1e-9, CLIP_NORM)),
        InProcessGrid(client_app.app, heart_nodes(ticket_path)),
        ticket,
    )
    plan = DpPlan(noise_multiplier=1.0, clip_norm=CLIP_NORM)
    strategy = _strategy(ticket, plan)

    noisy = _one_round(strategy, InProcessGrid(client_app.app, heart_nodes(ticket_path)), ticket)

    # t = 2 (min survivors): each of 4 devices adds Skellam variance (z D2)^2 / 2 integer units;
    # the mean of 4 carries sqrt(4 mu) / (4 s). The sum's noise multiplier is sqrt(2) z.
    params = strategy.skellam
    assert params is not None
    length = PackLayout.from_ticket(ticket).size + EXTRA_VALUES
    expected_std = np.sqrt(4 * params.noise_var) / (4 * params.scale)
    assert params.noise_var == pytest.approx((params.l2_sensitivity(length) ** 2) / 2)
    noise = noisy - noiseless  # float32 [k]
    assert noise.size > 200
    assert np.std(noise) == pytest.approx(expected_std, rel=0.15)
    assert abs(np.mean(noise)) < 4 * expected_std / np.sqrt(noise.size)
    dp = strategy.rounds[1].secagg["dp"]  # type: ignore[index]
    assert dp["mechanism"] == "skellam"
    assert dp["noise_multiplier"] == pytest.approx(np.sqrt(2))
    assert dp["epsilon"] == pytest.approx(epsilon([plan.release(params, length, 4)], 1e-5))


def test_epsilon_accumulates_across_rounds_and_a_resume(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    plan = DpPlan(noise_multiplier=2.0, clip_norm=CLIP_NORM)
    for rounds in (2, 3):  # the second ServerApp resumes after round 2
        _run(ticket_path, ticket, tmp_path / "run", plan, rounds)

    lines = [json.loads(line) for line in (tmp_path / "run/rounds.jsonl").read_text().splitlines()]
    spent = [line["secagg"]["dp"] for line in lines]
    assert [entry["rounds_charged"] for entry in spent] == [1, 2, 3]
    epsilons = [entry["epsilon"] for entry in spent]
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert [entry["noise_multiplier"] for entry in spent] == pytest.approx([2.0 * np.sqrt(2)] * 3)
    releases = [Release.from_json(entry["release"]) for entry in spent]
    assert epsilons[2] == pytest.approx(epsilon(releases, 1e-5))
    assert all(line["train"]["loss"] is None for line in lines)


def test_a_changed_privacy_plan_cannot_resume_a_run(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    from server.checkpoint import CheckpointError

    def run(noise: float, rounds: int) -> None:
        _run(ticket_path, ticket, tmp_path / "run", DpPlan(noise, CLIP_NORM), rounds)

    run(2.0, 1)
    with pytest.raises(CheckpointError, match="settings"):
        run(0.5, 2)  # its epsilon would compose rounds of two different plans


def test_run_config_turns_privacy_on_only_with_secure_aggregation() -> None:
    base = {
        "ticket-path": "/t.ticket",
        "run-dir": "/run",
        "num-rounds": 2,
        "local-epochs": 1,
        "batch-size": 32,
        "lr": 1e-3,
    }
    assert ServerSettings.from_run_config({**base, "secagg": True}).dp is None
    on = {**base, "secagg": True, "dp-noise-multiplier": 1.1, "dp-clip-norm": 0.5}
    assert ServerSettings.from_run_config(on).dp == DpPlan(1.1, 0.5, 1e-5)
    with pytest.raises(RunConfigError, match="needs secagg = true"):
        ServerSettings.from_run_config({**base, "dp-noise-multiplier": 1.0})
    with pytest.raises(RunConfigError, match=r"dp-clip-norm: must be a number > 0, got 0\.0"):
        ServerSettings.from_run_config({**on, "dp-clip-norm": 0.0})
    with pytest.raises(RunConfigError, match=r"dp-delta: must be a number in \(0, 0\.5\]"):
        ServerSettings.from_run_config({**on, "dp-delta": 1.5})
    with pytest.raises(RunConfigError, match="dp-noise-multiplier: must be a number >= 0"):
        ServerSettings.from_run_config({**on, "dp-noise-multiplier": "lots"})


def test_poisson_sampling_draws_each_cohort_at_the_rate_and_charges_it(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    plan = DpPlan(noise_multiplier=2.0, clip_norm=CLIP_NORM, sampling_rate=0.6)
    _run(ticket_path, ticket, tmp_path / "run", plan, 4)

    lines = [json.loads(line) for line in (tmp_path / "run/rounds.jsonl").read_text().splitlines()]
    nodes = sorted(InProcessGrid(client_app.app, heart_nodes(ticket_path)).get_node_ids())
    released = []
    for line in lines:
        draw = np.random.default_rng([0, line["round"]]).random(len(nodes))  # seed 0, round r
        sampled = [node for node, u in zip(nodes, draw, strict=True) if u < 0.6]
        assert line["secagg"]["sampling"] == {
            "kind": "poisson",
            "rate": 0.6,
            "online": 4,
            "sampled": len(sampled),
        }
        assert set(line["secagg"]["members"]) <= set(sampled)
        if len(sampled) < 2:  # below min survivors: the round releases nothing, costs nothing
            assert line["secagg"]["aborted"] and line["secagg"].get("dp") is None
        else:
            assert line["secagg"]["survivors"] == sampled
            released.append(Release.from_json(line["secagg"]["dp"]["release"]))
    assert released and all(release.rate == 0.6 for release in released)
    assert lines[-1]["secagg"]["dp"]["epsilon"] == pytest.approx(epsilon(released, 1e-5))


def test_a_run_over_its_epsilon_budget_is_refused_before_any_round(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    plan = DpPlan(noise_multiplier=1.0, clip_norm=CLIP_NORM, epsilon_budget=5.0)
    with pytest.raises(RunConfigError, match="over the budget of 5"):
        _run(ticket_path, ticket, tmp_path / "run", plan, 50)
    assert (
        not (tmp_path / "run/rounds.jsonl").exists()
        or not (tmp_path / "run/rounds.jsonl").read_text()
    )
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_run_config_refuses_sampling_and_budget_settings_that_cannot_hold() -> None:
    base = {
        "ticket-path": "/t.ticket",
        "run-dir": "/run",
        "secagg": True,
        "dp-noise-multiplier": 1.0,
    }
    on = ServerSettings.from_run_config({**base, "dp-sampling-rate": 0.1, "dp-epsilon-budget": 8})
    assert on.dp == DpPlan(1.0, 0.1, 1e-5, 0.1, 8.0)
    with pytest.raises(RunConfigError, match="leave round-goal at 0 and fraction-train at 1"):
        ServerSettings.from_run_config({**base, "dp-sampling-rate": 0.1, "round-goal": 5})
    with pytest.raises(RunConfigError, match="leave round-goal at 0 and fraction-train at 1"):
        ServerSettings.from_run_config({**base, "dp-sampling-rate": 0.1, "fraction-train": 0.5})
    with pytest.raises(RunConfigError, match="secagg-target-error does not apply"):
        ServerSettings.from_run_config({**base, "secagg-target-error": 0.01})
    with pytest.raises(RunConfigError, match="dp-sampling-rate needs dp-noise-multiplier > 0"):
        ServerSettings.from_run_config({**base, "dp-noise-multiplier": 0, "dp-sampling-rate": 0.5})
    with pytest.raises(RunConfigError, match="dp-epsilon-budget needs dp-noise-multiplier > 0"):
        ServerSettings.from_run_config({**base, "dp-noise-multiplier": 0, "dp-epsilon-budget": 1})
    with pytest.raises(RunConfigError, match=r"dp-sampling-rate: must be a number in \[0, 1\]"):
        ServerSettings.from_run_config({**base, "dp-sampling-rate": 1.5})


def test_a_resumed_run_may_change_its_budget_but_not_its_sampling(
    ticket_path: Path, ticket: Ticket, tmp_path: Path
) -> None:
    from server.checkpoint import CheckpointError

    def run(plan: DpPlan, rounds: int) -> None:
        _run(ticket_path, ticket, tmp_path / "run", plan, rounds)

    run(DpPlan(2.0, CLIP_NORM, epsilon_budget=50.0), 1)
    spent = json.loads((tmp_path / "run/rounds.jsonl").read_text())["secagg"]["dp"]["epsilon"]
    with pytest.raises(RunConfigError, match="1 rounds spent and 1 to go"):
        run(DpPlan(2.0, CLIP_NORM, epsilon_budget=spent * 1.01), 2)  # what is left is too little
    run(DpPlan(2.0, CLIP_NORM, epsilon_budget=60.0), 2)  # a raised budget resumes
    with pytest.raises(CheckpointError, match="settings"):
        run(DpPlan(2.0, CLIP_NORM, sampling_rate=0.5), 3)


def test_noise_too_wide_for_a_masked_value_is_a_config_error(ticket: Ticket) -> None:
    from server.training_run import make_strategy

    plan = RoundPlan(ticket_id=ticket.content_id, train=TRAIN)
    with pytest.raises(RunConfigError, match="lower dp-noise-multiplier or raise min-replies"):
        make_strategy(
            PackLayout.from_ticket(ticket),
            plan,
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_nodes=2,
            secagg=SECAGG,
            dp=DpPlan(noise_multiplier=1e6, clip_norm=CLIP_NORM),
        )
