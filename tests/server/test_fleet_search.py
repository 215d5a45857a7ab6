"""The fleet search (server/fleet_search.py) over the real ClientApp, in process: each method,
resuming after a crash, and the inputs it refuses."""

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MessageType

from edge_daemon import client_app
from server.fleet_search import FindSettings, SearchError, run_search
from server.run_log import RunLog
from tests.inprocess import InProcessGrid, heart_nodes, server_identity
from ticket import numpy_mlp, runconfig, wire
from ticket.bundle import Ticket, read_ticket
from ticket.fleet_search.state import SearchStateError, latest_state
from ticket.packing import PackLayout
from ticket.runconfig import RunConfigError
from ticket.tensorfile import read_tensor_file


@pytest.fixture(scope="module")
def dense(dense_path: Path) -> Ticket:
    return read_ticket(dense_path, allow_unsigned=True)


def find_config(dense_path: Path, tmp: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "mode": "find",
        "ticket-path": str(dense_path),
        "run-dir": str(tmp / "search"),
        "search-out": str(tmp / "found.ticket"),
        "allow-unsigned": True,
        "min-nodes": 4,
        "fraction-evaluate": 0.0,
        "local-epochs": 1,
        "batch-size": 32,
        "search-push-ticket": False,  # the in-process nodes read ticket-path
        "search-rounds-per-level": 1,
    }
    return {**config, **changes}


def search(config: dict[str, Any], grid: InProcessGrid | None = None) -> Ticket:
    settings = FindSettings.from_run(runconfig.parse(config))
    grid = grid or InProcessGrid(client_app.app, heart_nodes(Path(config["ticket-path"])))
    random.seed(0)
    with server_identity():
        return run_search(grid, settings)


def assert_inside(found: Ticket, dense: Ticket) -> None:
    """The found ticket narrows the dense one and starts from its W_0 (rewound, k = 0)."""
    assert found.manifest.parent == dense.content_id
    for name, mask in found.masks.items():
        assert not np.any(mask & ~dense.masks[name])
        np.testing.assert_array_equal(found.weights[name], dense.weights[name] * mask)


def test_fed_imp_prunes_the_fleets_aggregate_level_by_level(
    dense_path: Path, dense: Ticket, tmp_path: Path
) -> None:
    found = search(
        find_config(
            dense_path,
            tmp_path,
            **{
                "search-method": "fed-imp",
                "search-target-density": 0.7,
                "search-rounds-per-level": 2,
            },
        )
    )
    assert found.manifest.density.overall == pytest.approx(0.7, abs=0.01)
    assert_inside(found, dense)
    fleet = found.manifest.fleet
    assert fleet is not None
    assert (fleet.levels, fleet.rounds, fleet.devices) == (2, 4, 4)
    assert fleet.bytes_up > 0 and fleet.bytes_down > fleet.bytes_up  # the mask travels down
    assert not fleet.secagg
    # Round numbers run on across levels: level 1 holds rounds 3 and 4.
    level1 = RunLog(tmp_path / "search" / "level-001" / "rounds.jsonl").read()
    assert [line["round"] for line in level1] == [3, 4]
    # Level 1 trained the smaller network: its uplink per device is smaller than level 0's.
    level0 = RunLog(tmp_path / "search" / "level-000" / "rounds.jsonl").read()
    assert level1[0]["bytes"]["up_total"] < level0[0]["bytes"]["up_total"]
    assert (
        read_ticket(tmp_path / "found.ticket", allow_unsigned=True).content_id == found.content_id
    )


def test_fed_oneshot_prunes_once_to_the_target(
    dense_path: Path, dense: Ticket, tmp_path: Path
) -> None:
    found = search(
        find_config(
            dense_path, tmp_path, **{"search-method": "fed-oneshot", "search-target-density": 0.2}
        )
    )
    assert found.manifest.density.overall == pytest.approx(0.2, abs=0.01)
    assert found.manifest.fleet is not None and found.manifest.fleet.levels == 1
    assert_inside(found, dense)


def test_the_search_rounds_train_with_the_search_schedule_and_the_ticket_records_it(
    dense_path: Path, tmp_path: Path
) -> None:
    """search-optimizer, -lr and -batch-size replace the training keys in every round of the
    search (here FedSGD: one full-batch SGD step a round); the unset one keeps local-epochs."""
    grid = InProcessGrid(client_app.app, heart_nodes(dense_path))
    found = search(
        find_config(
            dense_path,
            tmp_path,
            **{
                "search-method": "fed-oneshot",
                "search-target-density": 0.5,
                "search-rounds-per-level": 2,
                "optimizer": "adam",
                "lr": 0.001,
                "search-optimizer": "sgd",
                "search-lr": 0.5,
                "search-batch-size": 4096,
            },
        ),
        grid,
    )
    told = [
        message.content.config_records[wire.CONFIG]
        for message in grid.sent
        if message.metadata.message_type == MessageType.TRAIN
    ]
    assert len(told) == 2 * 4  # two rounds, four devices
    for config in told:
        schedule = (config[wire.OPTIMIZER], config[wire.LR], config[wire.BATCH_SIZE])
        assert schedule == ("sgd", 0.5, 4096) and config[wire.LOCAL_EPOCHS] == 1
    train = found.manifest.method.train
    assert (train["optimizer"], train["lr"], train["batch_size"], train["epochs"]) == (
        "sgd",
        0.5,
        4096,
        1,
    )


def test_fed_snip_under_secure_aggregation_sends_saliency_once(
    dense_path: Path, dense: Ticket, tmp_path: Path
) -> None:
    found = search(
        find_config(
            dense_path,
            tmp_path,
            **{
                "search-method": "fed-snip",
                "search-target-density": 0.1,
                "secagg": True,
                "min-replies": 3,
            },
        )
    )
    assert found.manifest.density.overall == pytest.approx(0.1, abs=0.005)
    fleet = found.manifest.fleet
    assert fleet is not None and fleet.secagg and (fleet.rounds, fleet.devices) == (1, 4)
    assert_inside(found, dense)
    line = RunLog(tmp_path / "search" / "level-000" / "rounds.jsonl").read()[0]
    assert sorted(line["secagg"]["survivors"]) == sorted(line["participants"])


def test_a_search_under_differential_privacy_records_what_it_spent(
    dense_path: Path, dense: Ticket, tmp_path: Path
) -> None:
    """fed-imp under distributed DP: every level's rounds are Skellam releases, and the found
    ticket's manifest carries the epsilon of all of them together."""
    from server.privacy import Release, epsilon

    found = search(
        find_config(
            dense_path,
            tmp_path,
            **{
                "search-method": "fed-imp",
                "search-target-density": 0.7,
                "secagg": True,
                "min-replies": 3,
                "dp-noise-multiplier": 4.0,
                "dp-clip-norm": 0.5,
            },
        )
    )
    assert_inside(found, dense)
    fleet = found.manifest.fleet
    assert fleet is not None and fleet.levels == 2 and fleet.dp_epsilon is not None
    releases = []
    for level in ("level-000", "level-001"):
        for line in RunLog(tmp_path / "search" / level / "rounds.jsonl").read():
            assert line["secagg"]["dp"]["mechanism"] == "skellam"
            releases.append(Release.from_json(line["secagg"]["dp"]["release"]))
    assert len(releases) == fleet.rounds == 2
    assert fleet.dp_epsilon == pytest.approx(epsilon(releases, 1e-5))


def test_fed_snip_keeps_the_most_salient_weights_in_plaintext(
    dense_path: Path, tmp_path: Path
) -> None:
    """The mean saliency the server ranks is the devices' own: recompute it here."""
    found = search(
        find_config(
            dense_path, tmp_path, **{"search-method": "fed-snip", "search-target-density": 0.3}
        )
    )
    assert found.manifest.density.overall == pytest.approx(0.3, abs=0.005)
    # Every layer keeps something: the guard against a cut-off layer holds.
    assert all(mask.any() for mask in found.masks.values())


def test_synflow_needs_no_device_at_all(dense_path: Path, dense: Ticket, tmp_path: Path) -> None:
    grid = InProcessGrid(client_app.app, [])
    found = search(
        find_config(
            dense_path, tmp_path, **{"search-method": "synflow", "search-target-density": 0.05}
        ),
        grid,
    )
    fleet = found.manifest.fleet
    assert fleet is not None and (fleet.rounds, fleet.bytes_up, fleet.bytes_down) == (0, 0, 0)
    assert found.manifest.density.overall == pytest.approx(0.05, abs=0.005)
    assert_inside(found, dense)


def test_fed_early_bird_ends_a_level_once_the_mask_settles(
    dense_path: Path, tmp_path: Path
) -> None:
    config = find_config(
        dense_path,
        tmp_path,
        **{
            "search-method": "fed-early-bird",
            "search-target-density": 0.9,  # one level
            "search-rounds-per-level": 6,
            "search-early-bird-distance": 1.0,  # any two masks are "close": stop at once
        },
    )
    found = search(config)
    assert found.manifest.fleet is not None
    assert found.manifest.fleet.rounds == 2  # the first comparison needs two rounds
    history = found.manifest.metrics["search_levels"]
    assert [line["rounds"] for line in history] == [2]


class CrashingGrid(InProcessGrid):
    """Dies (as a killed ServerApp would) at its `crash_at`-th round trip."""

    def __init__(self, crash_at: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trips, self.crash_at = 0, crash_at

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.trips += 1
        if self.trips == self.crash_at:
            raise KeyboardInterrupt("killed")
        return super().send_and_receive(messages, timeout=timeout)


def test_a_killed_search_resumes_without_repeating_a_level(
    dense_path: Path, tmp_path: Path
) -> None:
    changes = {
        "search-method": "fed-imp",
        "search-target-density": 0.7,
        "search-rounds-per-level": 2,
    }
    whole = search(find_config(dense_path, tmp_path / "whole", **changes))

    config = find_config(dense_path, tmp_path / "killed", **changes)
    nodes = heart_nodes(dense_path)
    with pytest.raises(KeyboardInterrupt):
        search(config, CrashingGrid(5, client_app.app, nodes))  # level 1, round 3 (2 trips a round)
    run_dir = tmp_path / "killed" / "search"
    state = latest_state(
        run_dir,
        FindSettings.from_run(runconfig.parse(config)).fingerprint(whole.manifest.parent or ""),
    )
    assert state is not None and state.level == 1 and state.rounds == 2
    level0 = (run_dir / "level-000" / "checkpoints").stat().st_mtime_ns

    resumed = search(config)
    assert (run_dir / "level-000" / "checkpoints").stat().st_mtime_ns == level0  # not rerun
    assert [line["round"] for line in RunLog(run_dir / "level-001" / "rounds.jsonl").read()] == [
        3,
        4,
    ]
    for name, mask in whole.masks.items():
        np.testing.assert_array_equal(resumed.masks[name], mask)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"search-target-density": 0.4}, "search_target_density"),
        ({"search-lr": 0.5}, "local_schedule"),  # the search's own schedule key
        ({"lr": 0.01}, "local_schedule"),  # the run's, which the search rounds ran with
    ],
)
def test_a_resume_with_other_settings_is_refused(
    dense_path: Path, tmp_path: Path, changes: dict[str, Any], named: str
) -> None:
    first = {"search-method": "fed-oneshot", "search-target-density": 0.5}
    search(find_config(dense_path, tmp_path, **first))
    with pytest.raises(SearchStateError, match=rf"other settings \({named}\)"):
        search(find_config(dense_path, tmp_path, **(first | changes)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"search-method": "fed-lottery"}, "search-method: must be one of"),
        ({"search-target-density": 0.0}, "search-target-density"),
        ({"search-target-density": 1.5}, "search-target-density"),
        ({"search-out": ""}, "search-out is required"),
        ({"search-rewind-round": 2}, "search-rewind-round must be at most"),
    ],
)
def test_bad_search_settings_are_named(
    dense_path: Path, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(RunConfigError, match=message):
        FindSettings.from_run(runconfig.parse(find_config(dense_path, tmp_path, **changes)))


def test_a_fleet_that_cannot_install_the_ticket_is_refused(
    dense_path: Path, tmp_path: Path
) -> None:
    """The in-process nodes have no ticket cache: none installs, and the search says so."""
    config = find_config(dense_path, tmp_path, **{"search-push-ticket": True})
    with pytest.raises(SearchError, match="only 0 of 4 connected devices installed"):
        search(config)


def test_synflow_refuses_a_ticket_that_is_already_sparse(tmp_path: Path) -> None:
    from tests.inprocess import find_ticket

    sparse = find_ticket(tmp_path / "sparse.ticket", density=0.5)
    with pytest.raises(SearchError, match="needs a dense ticket"):
        search(
            find_config(sparse, tmp_path, **{"search-method": "synflow"}),
            InProcessGrid(client_app.app, []),
        )


def test_a_device_whose_saliency_is_not_finite_is_counted_and_left_out(
    dense_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One device's scores are NaN: its encoder refuses them, the round counts its failure,
    and the other three devices' saliency decides the mask."""
    real = numpy_mlp.connection_saliency  # what the ClientApp scores with
    calls: list[int] = []

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        scores, loss = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            scores = {name: score * float("nan") for name, score in scores.items()}
        return scores, loss

    monkeypatch.setattr(numpy_mlp, "connection_saliency", poisoned)
    found = search(
        find_config(
            dense_path, tmp_path, **{"search-method": "fed-snip", "search-target-density": 0.2}
        )
    )
    line = RunLog(tmp_path / "search" / "level-000" / "rounds.jsonl").read()[0]
    assert len(line["failures"]) + len(line["rejected"]) == 1
    assert len(line["participants"]) == 3
    assert found.manifest.fleet is not None and found.manifest.fleet.devices == 3
    assert all(np.isfinite(w).all() for w in found.weights.values())


def test_a_level_no_device_could_train_stops_the_search(dense_path: Path, tmp_path: Path) -> None:
    """Every device fails (no such partition): pruning W_k itself would find nothing."""
    nodes = heart_nodes(dense_path, **{"partition-id": 9})
    with pytest.raises(SearchError, match="level 0: no device's update was averaged in"):
        search(find_config(dense_path, tmp_path), InProcessGrid(client_app.app, nodes))
    assert latest_state(tmp_path / "search", {}) is None  # no level was recorded as done


def test_late_rewinding_rewinds_the_survivors_to_the_aggregate_after_round_k(
    dense_path: Path, dense: Ticket, tmp_path: Path
) -> None:
    """--rewind-round 1: W_k is level 0's global model after its first round (read here from
    that round's checkpoint), not W_0 and not any later aggregate; every later level rewinds
    to the same W_k, so the found ticket holds it on the weights it keeps."""
    found = search(
        find_config(
            dense_path,
            tmp_path,
            **{
                "search-method": "fed-imp",
                "search-target-density": 0.7,  # two levels
                "search-rounds-per-level": 2,
                "search-rewind-round": 1,
            },
        )
    )
    assert found.manifest.rewind_step == 1
    assert found.manifest.fleet is not None and found.manifest.fleet.levels == 2
    shapes = {name: weights.shape for name, weights in dense.weights.items()}
    run_dir = tmp_path / "search"

    def aggregate(level: int, server_round: int) -> dict[str, np.ndarray]:
        """The level's global model after `server_round`, unpacked over the level's mask."""
        if level == 0:
            mask = dense.masks
        else:  # the mask level 1 trained: the one its state file (after level 0) holds
            tensors, _ = read_tensor_file(run_dir / f"level-{level:03d}.state")
            mask = {n[5:]: t.astype(bool) for n, t in tensors.items() if n.startswith("mask/")}
        path = run_dir / f"level-{level:03d}" / "checkpoints" / f"round-{server_round:06d}.ckpt"
        tensors, _ = read_tensor_file(path)
        return PackLayout.from_masks(shapes, mask).unpack(tensors["packed"])

    w_k = aggregate(0, 1)
    others = {
        "W_0": dict(dense.weights),
        "level 0's last aggregate": aggregate(0, 2),
        "the final aggregate": aggregate(1, 4),
    }
    for name, mask in found.masks.items():
        np.testing.assert_array_equal(found.weights[name], w_k[name] * mask)
        for label, weights in others.items():
            assert not np.allclose(found.weights[name][mask], weights[name][mask]), label
