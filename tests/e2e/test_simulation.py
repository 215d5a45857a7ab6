"""The same ServerApp and ClientApp under Flower's Simulation Engine (Ray, virtual nodes)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from loopback.launcher import Loopback, LoopbackError
from server.checkpoint import VECTOR_KEY
from server.privacy import Release, epsilon
from tests.inprocess import find_ticket
from ticket.bundle import read_ticket
from ticket.packing import PackLayout
from ticket.runconfig import (
    RunConfig,
    RunConfigError,
    RunPlacement,
    SearchSettings,
    SimulationSettings,
    TrainingSettings,
    to_run_config,
)
from ticket.secagg.params import SecAggParams
from ticket.secagg.weighting import mean_error_bound
from ticket.tensorfile import read_tensor_file
from ticket_cli.cli import main as ticket_main

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_virtual_hospitals_train_the_ticket_under_the_simulation_engine(tmp_path: Path) -> None:
    ticket = find_ticket(tmp_path / "heart.ticket", density=0.1)
    run = RunConfig(
        placement=RunPlacement(ticket_path=ticket, run_dir=tmp_path / "run"),
        training=TrainingSettings(
            allow_unsigned=True, num_rounds=2, min_nodes=3, server_eval="heart-uci"
        ),
        simulation=SimulationSettings(
            sim_dataset="heart-uci",
            sim_partition="natural",
            sim_num_partitions=4,  # 3 virtual nodes: the first 3 of the 4 hospitals
        ),
    )
    config = to_run_config(run)
    # The same virtual fleet then finds a ticket itself (fed-snip under secure aggregation),
    # inside a dense ticket: the search's path through the Simulation Engine.
    dense = tmp_path / "dense.ticket"
    assert ticket_main(["init", "--model", "heart-mlp", "--data", "heart-uci",
                        "--out", str(dense)]) == 0  # fmt: skip
    search = RunConfig(
        placement=RunPlacement(mode="find", ticket_path=dense, run_dir=tmp_path / "search"),
        training=replace(run.training, secagg=True, min_replies=2, fraction_evaluate=0.0),
        simulation=run.simulation,
        search=SearchSettings(
            search_method="fed-snip",
            search_target_density=0.2,
            search_out=tmp_path / "found.ticket",
            search_push_ticket=False,  # virtual nodes read ticket-path
        ),
    )
    federation = {"num-supernodes": 3, "client-resources-num-cpus": 1}
    fleet = Loopback(tmp_path / "sim", APP_DIR, [], simulation=True, grace_s=5.0)
    with fleet:
        outcome = fleet.run(config, timeout_s=300.0, federation_config=federation)
        searched = fleet.run(to_run_config(search), timeout_s=300.0, federation_config=federation)

    assert searched.completed, searched.status
    found = read_ticket(tmp_path / "found.ticket", allow_unsigned=True)
    assert found.manifest.density.overall == pytest.approx(0.2, abs=0.005)
    assert found.manifest.fleet is not None
    assert (found.manifest.fleet.devices, found.manifest.fleet.rounds) == (3, 1)
    assert found.manifest.fleet.secagg and found.manifest.parent is not None

    assert outcome.completed, outcome.status
    assert [line["round"] for line in outcome.rounds] == [1, 2]
    for line in outcome.rounds:
        assert len(line["participants"]) == 3 and line["failures"] == {}
        assert set(line["bytes"]["up"].values()) == {line["bytes"]["up_total"] // 3}
        assert line["federated_eval"]["accuracy"] is not None
        assert line["server_eval"]["examples"] == 277
    assert fleet.alive() == []  # Ray's processes too


def test_a_simulation_takes_no_real_nodes(tmp_path: Path) -> None:
    fleet = Loopback(tmp_path / "sim", APP_DIR, [{"partition-id": 0}], simulation=True)
    with pytest.raises(LoopbackError, match="virtual nodes only"):
        fleet.start()
    fleet.stop()


@pytest.mark.slow
def test_a_secure_round_of_50_virtual_devices_is_the_plaintext_mean_within_quantisation(
    tmp_path: Path,
) -> None:
    """The Simulation Engine at 50 devices a round: the same round in plaintext FedAvg and under
    secure aggregation gives the same global model up to the quantisation bound of the levels
    and weight the round log reports (ticket/secagg/weighting.py mean_error_bound)."""
    ticket = find_ticket(tmp_path / "heart.ticket", density=0.1)
    devices = 50
    # One full batch of one epoch: the update does not depend on the batch order, so on the
    # node ids the engine draws (a local seed's input), and both runs train the same updates.
    plain = TrainingSettings(
        allow_unsigned=True,
        num_rounds=1,
        min_nodes=devices,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        local_epochs=1,
        batch_size=512,
        lr=0.5,
        optimizer="sgd",
    )
    # A cap above every device's row count keeps the weights proportional to the rows, as
    # plaintext FedAvg weighs them.
    secure = replace(plain, secagg=True, secagg_clip=0.5, secagg_weight_cap=64)
    simulation = SimulationSettings(
        sim_dataset="heart-uci", sim_partition="iid", sim_num_partitions=devices
    )
    # Distributed DP on the same engine: Poisson cohorts at rate 0.8, Skellam noise, epsilon.
    private = replace(
        secure,
        num_rounds=2,
        min_replies=30,
        dp_noise_multiplier=1.0,
        dp_clip_norm=0.5,
        dp_sampling_rate=0.8,
    )
    runs = {}
    fleet = Loopback(tmp_path / "sim", APP_DIR, [], simulation=True, grace_s=5.0)
    federation = {"num-supernodes": devices, "client-resources-num-cpus": 1}
    with fleet:
        too_few = RunConfig(
            placement=RunPlacement(ticket_path=ticket, run_dir=tmp_path / "too-few"),
            training=replace(plain, min_nodes=devices + 1),
            simulation=simulation,
        )
        with pytest.raises(RunConfigError, match="min-nodes = 51 needs at least 51 devices"):
            fleet.run(to_run_config(too_few), timeout_s=60.0, federation_config=federation)
        dp_run = RunConfig(
            placement=RunPlacement(ticket_path=ticket, run_dir=tmp_path / "dp"),
            training=private,
            simulation=simulation,
        )
        dp_outcome = fleet.run(to_run_config(dp_run), timeout_s=300.0, federation_config=federation)
        for name, training in (("plain", plain), ("secure", secure)):
            run = RunConfig(
                placement=RunPlacement(ticket_path=ticket, run_dir=tmp_path / name),
                training=training,
                simulation=simulation,
            )
            outcome = fleet.run(to_run_config(run), timeout_s=300.0, federation_config=federation)
            assert outcome.completed, (name, outcome.status)
            (line,) = outcome.rounds
            assert len(line["participants"]) == devices and line["failures"] == {}
            tensors, _ = read_tensor_file(tmp_path / name / "checkpoints" / "round-000001.ckpt")
            runs[name] = (tensors[VECTOR_KEY].astype(np.float64), line)
    assert fleet.alive() == []

    assert dp_outcome.completed, dp_outcome.status
    releases = []
    for dp_line in dp_outcome.rounds:
        sampling, dp = dp_line["secagg"]["sampling"], dp_line["secagg"]["dp"]
        assert sampling["kind"] == "poisson" and sampling["online"] == devices
        assert 30 <= sampling["sampled"] == len(dp_line["participants"]) < devices
        assert dp["mechanism"] == "skellam" and dp["noise_multiplier"] >= 1.0
        releases.append(Release.from_json(dp["release"]))
        assert releases[-1].rate == 0.8
        assert dp["epsilon"] == pytest.approx(epsilon(releases, 1e-5))
    assert dp_outcome.rounds[1]["secagg"]["dp"]["rounds_charged"] == 2

    start = PackLayout.from_ticket(read_ticket(ticket, allow_unsigned=True))
    initial = start.pack(read_ticket(ticket, allow_unsigned=True).weights).astype(np.float64)
    plain_model, _ = runs["plain"]
    secure_model, line = runs["secure"]
    info = line["secagg"]
    assert info["survivors"] == line["participants"] and info["aborted"] is None
    params = SecAggParams(clip=0.5, levels=info["levels"])
    bound = mean_error_bound(params, nodes=devices, weight=info["weight"])
    update = plain_model - initial
    # The check means something: the round moved the model far more than the bound, and no
    # device's weighted update reached the clip (clipping would be a second, unbounded error).
    assert np.abs(update).max() > 20 * bound
    assert np.abs(update).max() < 0.5
    assert np.abs(secure_model - plain_model).max() <= bound
    assert not np.array_equal(secure_model, plain_model)  # it was quantised, not copied
