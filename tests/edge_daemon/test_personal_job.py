"""The daemon's personalisation trigger against a fake clock and fake child processes."""

import logging
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge_daemon.model_store import read_header, save_model
from edge_daemon.paths import DaemonPaths
from edge_daemon.personal_job import SETTLE_S, TIMEOUT_S, PersonalJob, personalise_command
from edge_daemon.personal_record import BaseModel, PersonalRecord, save_record
from tests.edge_daemon.test_supervisor import FakeWorld

TICKET_A, TICKET_B = "a" * 64, "b" * 64
AT = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


@dataclass
class Round:
    """Whether the node has a ClientApp, i.e. a round is in flight."""

    in_flight: bool = False

    def __call__(self) -> bool:
        return self.in_flight


def _job(tmp_path: Path) -> tuple[PersonalJob, FakeWorld, Round]:
    world, round_ = FakeWorld(), Round()
    job = PersonalJob(
        argv=["personalise"],
        env={},
        log_path=tmp_path / "personalise.log",
        paths=DaemonPaths(tmp_path / "state"),
        is_round_in_flight=round_,
        launcher=world.launch,
        kill_group=world.kill_group,
    )
    return job, world, round_


def _global(
    job: PersonalJob, server_round: int, *, final: bool = False, ticket: str = TICKET_A
) -> str:
    """Store a global model as a round (or the final push) would; its values' SHA-256."""
    save_model(
        job.paths.model_file,
        np.full(4, server_round + (0.5 if final else 0.0), np.float32),
        ticket_id=ticket,
        run_id=1,
        server_round=server_round,
        received_at=AT,
        final=final,
    )
    return read_header(job.paths.model_file).sha256


def _finish(job: PersonalJob, world: FakeWorld, status: int = 0) -> None:
    """The running fake child records an outcome for the stored global model and exits."""
    if status == 0:
        header = read_header(job.paths.model_file)
        record = PersonalRecord(
            BaseModel.of(header), "last", 20, 99, 24, 0.5, 0.7, 0.8, 0.4, True, "better",
            "d" * 64, AT,
        )  # fmt: skip
        save_record(job.paths.personal_record_file, record)
    world.processes[-1].status = status


def _ticks(job: PersonalJob, start: float, until: float, *, may_run: bool = True) -> float:
    now = start
    while now <= until:
        job.tick(now, may_run=may_run)
        now += 1.0
    return now


def test_nothing_starts_without_a_global_model(tmp_path: Path) -> None:
    job, world, _ = _job(tmp_path)

    _ticks(job, 0.0, 2 * SETTLE_S)

    assert world.processes == [] and job.runs == 0


def test_a_new_global_model_is_personalised_once_after_it_settles(tmp_path: Path) -> None:
    job, world, _ = _job(tmp_path)
    _global(job, 3)

    now = _ticks(job, 0.0, SETTLE_S - 1)
    assert world.processes == []  # a run sends a new model every round: wait for quiet
    now = _ticks(job, now, SETTLE_S + 1)
    assert len(world.processes) == 1 and job.process is not None
    now = _ticks(job, now, now + 5)
    assert len(world.processes) == 1  # still running: not started twice

    _finish(job, world)
    _ticks(job, now, now + 3 * SETTLE_S)

    assert len(world.processes) == 1 and job.process is None and job.last_exit == 0
    assert (world.processes[0].pid, signal.SIGKILL) in world.signals  # its group is swept


def test_the_next_rounds_model_and_the_final_push_are_personalised_afresh(
    tmp_path: Path,
) -> None:
    job, world, _ = _job(tmp_path)
    _global(job, 3)
    now = _ticks(job, 0.0, SETTLE_S + 1)
    _finish(job, world)

    _global(job, 4)  # the next round's instruction carried a new model
    now = _ticks(job, now, now + SETTLE_S + 1)
    assert len(world.processes) == 2
    _finish(job, world)
    _global(job, 4, final=True)  # after the last round the server pushes the final model
    now = _ticks(job, now, now + SETTLE_S + 1)

    assert len(world.processes) == 3
    _finish(job, world)
    _ticks(job, now, now + 2 * SETTLE_S)
    assert len(world.processes) == 3


def test_a_new_tickets_model_is_personalised_afresh(tmp_path: Path) -> None:
    job, world, _ = _job(tmp_path)
    _global(job, 3)
    now = _ticks(job, 0.0, SETTLE_S + 1)
    _finish(job, world)

    _global(job, 1, ticket=TICKET_B)  # the operator deployed another ticket
    _ticks(job, now, now + SETTLE_S + 1)

    assert len(world.processes) == 2


def test_a_model_personalised_already_is_not_started_again(tmp_path: Path) -> None:
    job, world, _ = _job(tmp_path)
    _global(job, 3)
    world.processes.append(world.launch([], {}, tmp_path / "log"))  # `edge-daemon personalise`
    _finish(job, world)
    world.processes.clear()

    _ticks(job, 0.0, 3 * SETTLE_S)

    assert world.processes == []


def test_nothing_starts_while_the_device_may_not_train_or_a_round_is_in_flight(
    tmp_path: Path,
) -> None:
    job, world, round_ = _job(tmp_path)
    _global(job, 3)

    now = _ticks(job, 0.0, 2 * SETTLE_S, may_run=False)
    assert world.processes == []
    round_.in_flight = True
    now = _ticks(job, now, now + 10)
    assert world.processes == []

    round_.in_flight = False
    _ticks(job, now, now + 1)
    assert len(world.processes) == 1


@pytest.mark.parametrize("cause", ["ineligible", "round"])
def test_a_child_is_killed_when_the_device_lapses_or_a_round_starts_and_tried_again(
    tmp_path: Path, cause: str
) -> None:
    job, world, round_ = _job(tmp_path)
    _global(job, 3)
    now = _ticks(job, 0.0, SETTLE_S + 1)
    child = world.processes[0]

    if cause == "round":
        round_.in_flight = True
    now = _ticks(job, now, now, may_run=cause != "ineligible")

    assert child.status == -signal.SIGKILL and job.process is None
    round_.in_flight = False
    _ticks(job, now, now + 1)
    assert len(world.processes) == 2  # the same model, once the device may again


def test_a_failed_child_is_logged_and_not_retried_for_that_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job, world, _ = _job(tmp_path)
    _global(job, 3)
    now = _ticks(job, 0.0, SETTLE_S + 1)

    with caplog.at_level(logging.WARNING, logger="edge_daemon.personal_job"):
        _finish(job, world, status=3)
        now = _ticks(job, now, now + 3 * SETTLE_S)

    assert len(world.processes) == 1 and job.last_exit == 3
    assert "personalisation failed with status 3" in caplog.text
    assert str(job.log_path) in caplog.text
    _global(job, 4)
    _ticks(job, now, now + SETTLE_S + 1)
    assert len(world.processes) == 2  # the next global model is tried


def test_a_child_past_its_timeout_is_killed_and_that_model_not_retried(tmp_path: Path) -> None:
    job, world, _ = _job(tmp_path)
    _global(job, 3)
    now = _ticks(job, 0.0, SETTLE_S + 1)

    now = _ticks(job, now, now + TIMEOUT_S + 1)

    assert world.processes[0].status == -signal.SIGKILL and job.process is None
    _ticks(job, now, now + 3 * SETTLE_S)
    assert len(world.processes) == 1


def test_a_damaged_record_or_model_starts_nothing_it_cannot_use(tmp_path: Path) -> None:
    job, world, _ = _job(tmp_path)
    _global(job, 3)
    job.paths.personal_record_file.write_text("{damaged")  # rewritten by the next run

    now = _ticks(job, 0.0, SETTLE_S + 1)
    assert len(world.processes) == 1
    world.processes[-1].status = 0
    job.paths.model_file.write_bytes(b"not a model")
    _ticks(job, now, now + 3 * SETTLE_S)

    assert len(world.processes) == 1  # nothing to personalise in a damaged model file


def test_stop_kills_the_running_child(tmp_path: Path) -> None:
    job, world, _ = _job(tmp_path)
    _global(job, 3)
    _ticks(job, 0.0, SETTLE_S + 1)

    job.stop()

    assert world.processes[0].status == -signal.SIGKILL and job.process is None
    job.stop()  # nothing running: nothing to do


def test_the_childs_command_runs_the_personalise_module_niced(tmp_path: Path) -> None:
    argv = personalise_command(tmp_path / "daemon.yaml")

    assert argv[1:] == [
        *("-m", "edge_daemon.personalise", "--config", str(tmp_path / "daemon.yaml")),
        *("--nice", "10"),
    ]
