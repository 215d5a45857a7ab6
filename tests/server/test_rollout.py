"""Rolling a signed ticket out to devices in-process: installed, rejected with why, offline."""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from edge_daemon import client_app
from edge_daemon.state import load_state
from server.rollout import (
    INSTALLED,
    OFFLINE,
    REJECTED,
    SKIPPED,
    CanaryCheck,
    CanaryScore,
    roll_out,
    write_outcome,
)
from server.rollout import _verdict as verdict
from server.rollout_progress import NO_DEVICE, PROGRESS_FILE, read_progress
from tests.inprocess import InProcessGrid, SilentNodeGrid, find_ticket, server_identity
from ticket.bundle import build_ticket, read_ticket, sign_ticket, write_ticket
from ticket.train_config import TrainConfig
from ticket_cli.cli import main as ticket_cli


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    for name in ("fleet", "other"):
        assert ticket_cli(["keygen", "--out", str(directory / name)]) == 0
    find_ticket(directory / "t.ticket", density=0.5, sign_key=directory / "fleet.key")
    # A ticket that cannot learn: all-zero weights keep every hidden unit dead (ReLU at 0 has
    # no gradient), so it predicts one class whatever it is trained on.
    good = read_ticket(directory / "t.ticket", allow_unsigned=True)
    zeros = {name: np.zeros_like(value) for name, value in good.weights.items()}
    dead = build_ticket(good.manifest, good.masks, zeros)
    write_ticket(
        directory / "dead.ticket", sign_ticket(dead, (directory / "fleet.key").read_bytes())
    )
    return directory


def _device(root: Path, name: str, fleet_key: Path) -> dict[str, bool | float | int | str]:
    return {
        "ticket-dir": str(root / name / "tickets"),
        "fleet-key": str(fleet_key),
        "state-path": str(root / name / "state.json"),
    }


def test_each_device_installs_or_says_why_not(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    nodes = [
        _device(tmp_path, "a", fleet / "fleet.pub"),
        _device(tmp_path, "b", fleet / "other.pub"),  # trusts another fleet's key
        _device(tmp_path, "c", fleet / "fleet.pub"),  # will not answer
    ]
    grid = SilentNodeGrid(103, client_app.app, nodes)

    with server_identity():
        # 1 s: how long the silent node is waited for
        rollout = roll_out(grid, (fleet / "t.ticket").read_bytes(), ticket.content_id, timeout=1)

    by_node = {ack.node_id: ack for ack in rollout.acks}
    assert by_node[101].status == INSTALLED
    assert by_node[102].status == REJECTED and "not trusted" in by_node[102].reason
    assert by_node[103].status == OFFLINE
    assert not rollout.succeeded
    cached = tmp_path / "a" / "tickets" / f"{ticket.content_id}.ticket"
    assert cached.read_bytes() == (fleet / "t.ticket").read_bytes()
    assert load_state(tmp_path / "a" / "state.json").ticket_ids == (ticket.content_id,)
    assert not (tmp_path / "b" / "tickets").exists() or not any(
        (tmp_path / "b" / "tickets").iterdir()
    )
    document = write_outcome(rollout, tmp_path / "run").read_text()
    assert '"succeeded": false' in document


def test_a_tampered_bundle_is_rejected_everywhere(fleet: Path, tmp_path: Path) -> None:
    data = bytearray((fleet / "t.ticket").read_bytes())
    data[len(data) // 2] ^= 0x01
    nodes = [_device(tmp_path, name, fleet / "fleet.pub") for name in ("a", "b")]

    with server_identity():
        rollout = roll_out(InProcessGrid(client_app.app, nodes), bytes(data), "", timeout=30)

    assert [ack.status for ack in rollout.acks] == [REJECTED, REJECTED]


def test_a_failed_canary_stops_the_rollout(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    nodes = [_device(tmp_path, name, fleet / "other.pub") for name in "abcd"]  # all refuse

    with server_identity():
        rollout = roll_out(
            InProcessGrid(client_app.app, nodes),
            (fleet / "t.ticket").read_bytes(),
            ticket.content_id,
            timeout=30,
            canary_fraction=0.25,
        )

    canary = [ack for ack in rollout.acks if ack.canary]
    assert len(canary) == 1 and canary[0].status == REJECTED
    assert sorted(ack.status for ack in rollout.acks if not ack.canary) == [SKIPPED] * 3


def test_a_clean_canary_lets_the_rest_follow(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    nodes = [_device(tmp_path, name, fleet / "fleet.pub") for name in "abcd"]

    with server_identity():
        rollout = roll_out(
            InProcessGrid(client_app.app, nodes),
            (fleet / "t.ticket").read_bytes(),
            ticket.content_id,
            timeout=30,
            canary_fraction=0.5,
        )

    assert rollout.succeeded and sum(ack.canary for ack in rollout.acks) == 2


def test_the_serverapp_deploys_only_a_ticket_signed_by_the_fleet_key(
    fleet: Path, tmp_path: Path
) -> None:
    from server.server_app import DeploySettings, RunConfigError, run_deploy
    from ticket.errors import TicketError

    config = {
        "mode": "deploy",
        "ticket-path": str(fleet / "t.ticket"),
        "run-dir": str(tmp_path / "run"),
        "fleet-key": str(fleet / "fleet.pub"),
        "round-timeout-s": 30.0,
    }
    nodes = [_device(tmp_path, name, fleet / "fleet.pub") for name in "ab"]
    with server_identity():
        rollout = run_deploy(
            InProcessGrid(client_app.app, nodes), DeploySettings.from_run_config(config)
        )
    assert rollout.succeeded
    assert '"succeeded": true' in (tmp_path / "run" / "deploy.json").read_text()

    foreign = {**config, "fleet-key": str(fleet / "other.pub")}
    with pytest.raises(TicketError), server_identity():
        run_deploy(InProcessGrid(client_app.app, nodes), DeploySettings.from_run_config(foreign))
    with pytest.raises(RunConfigError, match="canary-fraction"):
        DeploySettings.from_run_config({**config, "canary-fraction": 1.5})


def _device_with_data(
    root: Path, index: int, fleet_key: Path
) -> dict[str, bool | float | int | str]:
    return {
        **_device(root, f"site-{index}", fleet_key),
        "dataset": "heart-uci",
        "partition": "natural",
        "partition-id": index,
        "num-partitions": 4,
    }


def _canary_rollout(fleet: Path, root: Path, candidate: str, baseline: str | None) -> object:
    key = fleet / "fleet.pub"
    nodes = [_device_with_data(root, index, key) for index in range(4)]
    grid = InProcessGrid(client_app.app, nodes)
    with server_identity():
        if baseline is not None:  # the active ticket is on every device already
            roll_out(grid, (fleet / baseline).read_bytes(), "", timeout=30)
        ticket = read_ticket(fleet / candidate, trusted_keys=[key.read_bytes()])
        check = CanaryCheck(
            candidate=ticket,
            baseline=None
            if baseline is None
            else read_ticket(fleet / baseline, allow_unsigned=True),
            train=TrainConfig(epochs=5, batch_size=32, lr=0.01),
            max_regression=0.02,
        )
        return roll_out(
            grid,
            (fleet / candidate).read_bytes(),
            ticket.content_id,
            timeout=30,
            canary_fraction=0.5,
            check=check,
        )


def test_a_canary_that_regresses_stops_the_rollout(fleet: Path, tmp_path: Path) -> None:
    rollout = _canary_rollout(fleet, tmp_path, "dead.ticket", baseline="t.ticket")

    assert not rollout.succeeded  # type: ignore[attr-defined]
    canary = rollout.canary  # type: ignore[attr-defined]
    assert not canary.passed and "the canary's evaluation regressed" in canary.reason
    assert canary.candidate.accuracy < canary.baseline.accuracy - 0.02
    assert set(canary.candidate.by_node) == set(canary.baseline.by_node)  # the two canaries
    rest = [ack for ack in rollout.acks if not ack.canary]  # type: ignore[attr-defined]
    assert len(rest) == 2 and all(ack.status == SKIPPED for ack in rest)
    assert all("regressed" in ack.reason for ack in rest)
    assert '"passed": false' in write_outcome(rollout, tmp_path / "run").read_text()  # type: ignore[arg-type]


def test_a_canary_that_learns_as_well_lets_the_rest_follow(fleet: Path, tmp_path: Path) -> None:
    rollout = _canary_rollout(fleet, tmp_path, "t.ticket", baseline="t.ticket")

    assert rollout.succeeded and rollout.canary.passed  # type: ignore[attr-defined]
    canary = rollout.canary  # type: ignore[attr-defined]
    assert canary.candidate.accuracy == canary.baseline.accuracy  # same ticket, same schedule
    assert canary.candidate.accuracy > 0.6 and canary.candidate.examples > 0


def test_with_no_active_ticket_the_canary_only_has_to_evaluate(fleet: Path, tmp_path: Path) -> None:
    rollout = _canary_rollout(fleet, tmp_path, "dead.ticket", baseline=None)

    assert rollout.succeeded  # type: ignore[attr-defined]
    assert "no active ticket to compare with" in rollout.canary.reason  # type: ignore[attr-defined]


def _score(accuracy: dict[int, float], errors: dict[int, str] | None = None) -> CanaryScore:
    return CanaryScore("t", accuracy, dict.fromkeys(accuracy, 10), errors or {})


def test_the_verdict_compares_only_devices_that_scored_both() -> None:
    candidate = _score({1: 0.80, 2: 0.70})
    # Device 3 lacks the new ticket; its high score for the old one must not count.
    baseline = _score({1: 0.80, 2: 0.72, 3: 0.99})
    assert verdict(candidate, baseline, 0.02).passed
    assert not verdict(candidate, baseline, 0.0).passed
    failed = verdict(_score({1: 0.8}, {2: "error 1003: no local data"}), baseline, 0.5)
    assert not failed.passed and "1 canary device(s) could not evaluate it" in failed.reason
    assert not verdict(_score({}), None, 0.5).passed
    assert not verdict(candidate, _score({}), 0.5).passed


@pytest.mark.parametrize(("min_installed", "succeeded"), [(0.6, True), (0.7, False)])
def test_a_rollout_succeeds_once_enough_devices_installed(
    fleet: Path, tmp_path: Path, min_installed: float, succeeded: bool
) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    keys = [fleet / "fleet.pub", fleet / "other.pub", fleet / "fleet.pub"]  # 2 of 3 install
    nodes = [_device(tmp_path, name, key) for name, key in zip("abc", keys, strict=True)]

    with server_identity():
        rollout = roll_out(
            InProcessGrid(client_app.app, nodes),
            (fleet / "t.ticket").read_bytes(),
            ticket.content_id,
            timeout=30,
            min_installed=min_installed,
        )

    assert rollout.installed_fraction == pytest.approx(2 / 3)
    assert rollout.succeeded is succeeded
    assert rollout.to_json()["min_installed"] == min_installed


# ---------------------------------------------------------------- progress as acks arrive


class OneReplyPerPull(InProcessGrid):
    """Releases one waiting reply per pull, and notes how many acks the progress file held
    at each pull: what the SuperLink looks like while devices answer one by one."""

    def __init__(self, progress: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress
        self.lines_at_pull: list[int] = []

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.lines_at_pull.append(len(read_progress(self.progress)[0]))
        first = [i for i in message_ids if i in self.waiting][:1]
        return super().pull_messages(first)


def _deploy_config(fleet: Path, run_dir: Path) -> dict[str, bool | float | int | str]:
    return {
        "mode": "deploy",
        "ticket-path": str(fleet / "t.ticket"),
        "run-dir": str(run_dir),
        "fleet-key": str(fleet / "fleet.pub"),
        "round-timeout-s": 30.0,
    }


def test_each_ack_reaches_the_progress_file_as_it_arrives(
    fleet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server import rollout as rollout_module
    from server.server_app import DeploySettings, run_deploy

    monkeypatch.setattr(rollout_module, "POLL_S", 0.0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / PROGRESS_FILE).write_text('{"node_id": 1, "status": "stale"}\n')  # a rerun's
    nodes = [_device(tmp_path, name, fleet / "fleet.pub") for name in "abc"]
    grid = OneReplyPerPull(run_dir / PROGRESS_FILE, client_app.app, nodes)

    with server_identity():
        rollout = run_deploy(grid, DeploySettings.from_run_config(_deploy_config(fleet, run_dir)))

    assert rollout.succeeded
    assert grid.lines_at_pull == [0, 1, 2]  # ack k was written before pull k + 1
    acks, _ = read_progress(run_dir / PROGRESS_FILE)
    assert [(ack["node_id"], ack["status"]) for ack in acks] == [
        (101, INSTALLED),
        (102, INSTALLED),
        (103, INSTALLED),
    ]


def test_the_silent_and_the_skipped_devices_are_reported_too(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    nodes = [_device(tmp_path, name, fleet / "other.pub") for name in "abcd"]  # all refuse
    heard: list[tuple[int, str]] = []

    with server_identity():
        rollout = roll_out(
            InProcessGrid(client_app.app, nodes),
            (fleet / "t.ticket").read_bytes(),
            ticket.content_id,
            timeout=1,
            canary_fraction=0.25,
            on_ack=lambda ack: heard.append((ack.node_id, ack.status)),
        )

    assert sorted(heard) == sorted((ack.node_id, ack.status) for ack in rollout.acks)
    assert rollout.reason == "the canary did not install cleanly"
    assert "the canary did not install cleanly" in write_outcome(rollout, tmp_path).read_text()


def test_a_rollout_with_no_device_connected_says_so(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)

    with server_identity():
        rollout = roll_out(InProcessGrid(client_app.app, []), b"", ticket.content_id, timeout=1)

    assert not rollout.succeeded and rollout.reason == NO_DEVICE == "no device connected"
    document = json.loads(write_outcome(rollout, tmp_path).read_text())
    assert document["reason"] == "no device connected" and document["nodes"] == []


def test_too_few_installs_is_the_reason(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    nodes = [
        _device(tmp_path, "a", fleet / "fleet.pub"),
        _device(tmp_path, "b", fleet / "other.pub"),
    ]

    with server_identity():
        rollout = roll_out(
            InProcessGrid(client_app.app, nodes),
            (fleet / "t.ticket").read_bytes(),
            ticket.content_id,
            timeout=1,
            min_installed=0.75,
        )

    assert rollout.reason == "1 of 2 devices installed it; 75% had to"
