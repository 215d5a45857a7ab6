"""The service loop of `fleet-server run` (server/service.py) over a scripted fleet.

The fake fleet stands for the SuperLink and the ServerApp: `follow` "trains" rounds by
appending run-log lines, one per poll, and honours a stop request after the round in flight
as server/training_run.py does. The ledger, the run directories, the stop requests and
service.json are the real files, so these tests pin down what the service does with them:
which ticket trains where, when it switches, idles, continues, retries or exits.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from server.config import FleetConfig, load_config
from server.delivery_record import DeliveryRecord, write_record
from server.deployments import DeploymentLedger
from server.fleet import FleetError
from server.node_snapshot import write_snapshot
from server.run_control import STOP_REQUEST, request_stop, stop_reason
from server.run_log import RunLog
from server.search_jobs import DONE, FAILED, SearchQueue, SearchRequest
from server.service import DELIVERY_RETRY_S, TrainingService, Work, online_node_ids
from server.service_state import IDLE, STOPPED, ServicePublisher, read_state
from server.superlink import COMPLETED
from ticket.runconfig import SearchSettings

A, B = "a" * 64, "b" * 64


class _EndLoopError(Exception):
    """Ends a test's service loop from inside the fake fleet."""


@dataclass
class FakeCli:
    stopped: list[int] = field(default_factory=list)

    def stop_run(self, run_id: int) -> None:
        self.stopped.append(run_id)


@dataclass
class FakeFleet:
    """Each `follow` is a Flower run: one round per poll up to num-rounds, or a stop request."""

    config: FleetConfig
    # Called after every round: lets a test deploy, roll back or stop the loop mid-run.
    after_round: Callable[["FakeFleet", int], None] = lambda fleet, r: None
    status: Callable[[int], str] = lambda attempt: COMPLETED
    ignore_stop: bool = False  # a ServerApp that never reads the stop request
    poll_s: float = 0.0
    cli: FakeCli = field(default_factory=FakeCli)
    lines: list[str] = field(default_factory=list)
    submitted: list[tuple[str, int]] = field(default_factory=list)  # (run dir name, num-rounds)
    superlink_checks: int = 0
    polls_left: int = 10_000  # a loop that never ends fails the test instead of hanging

    def out(self, line: str) -> None:
        self.lines.append(line)

    def check_superlink(self) -> None:
        self.superlink_checks += 1
        self.polls_left -= 1
        if self.polls_left <= 0:
            raise _EndLoopError("the loop did not end")

    def search(self, job: Any, on_level: Callable[[str], None]) -> str:
        self.submitted.append((job.run_dir.name, 0))
        on_level("level-001")
        job.out.write_bytes(b"a found ticket")
        return COMPLETED

    def print_new_rounds(self, log: RunLog, done: set[int], planned: int) -> None:
        for line in log.read():
            done.add(line["round"])

    def follow(self, run_config: dict[str, Any], *, label: str, on_poll: Any) -> str:
        run_dir = Path(str(run_config["run-dir"]))
        planned = int(run_config["num-rounds"])
        self.submitted.append((run_dir.name, planned))
        run_id = len(self.submitted)
        log = RunLog(run_dir / "rounds.jsonl")
        on_poll(None)
        while True:
            done = max((line["round"] for line in log.read()), default=0)
            if done >= planned or (not self.ignore_stop and stop_reason(run_dir) is not None):
                break
            log.append({"round": done + 1, "ticket": run_config["ticket-path"]})
            self.after_round(self, done + 1)
            on_poll(run_id)
            self.check_superlink()
        on_poll(run_id)
        return self.status(run_id)


def _config(tmp_path: Path, **run: Any) -> FleetConfig:
    keys = {"num_rounds": 3, "round_timeout_s": 1, **run}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "server.yaml"
    path.write_text(json.dumps({"state_dir": str(tmp_path / "state"), "run": keys}))
    return load_config(path)


def _deploy(config: FleetConfig, ticket_id: str, action: str = "deploy") -> None:
    ledger = DeploymentLedger(config.paths.deployments)
    ledger.keep_bundle(ticket_id, b"a signed bundle")
    ledger.record(action, ticket_id, succeeded=True, at=datetime.now(UTC))


def _service(fleet: FakeFleet) -> TrainingService:
    publisher = ServicePublisher(fleet.config.paths.service_file, pid=1)
    return TrainingService(fleet, publisher)  # type: ignore[arg-type]


def _rounds(config: FleetConfig, ticket_id: str) -> list[int]:
    return [line["round"] for line in RunLog(config.run_dir(ticket_id) / "rounds.jsonl").read()]


def test_with_when_done_exit_the_active_ticket_trains_its_rounds_then_the_service_ends(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, when_done="exit")
    _deploy(config, A)
    fleet = FakeFleet(config)

    assert _service(fleet).serve() == COMPLETED

    assert _rounds(config, A) == [1, 2, 3]
    assert fleet.submitted == [(config.run_dir(A).name, 3)]


def test_a_deploy_mid_run_switches_after_the_round_and_a_rollback_resumes_the_old_run(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, num_rounds=4, when_done="exit")
    _deploy(config, A)

    def after_round(fleet: FakeFleet, server_round: int) -> None:
        trained = {name for name, _ in fleet.submitted}
        if server_round == 2 and trained == {config.run_dir(A).name}:
            _deploy(config, B)  # mid-run: A's round 3 must not start
        elif server_round == 1 and len(fleet.submitted) == 2:
            _deploy(config, A, "rollback")  # B trained one round

    fleet = FakeFleet(config, after_round=after_round)
    service = _service(fleet)

    assert service.serve() == COMPLETED

    a_dir, b_dir = config.run_dir(A).name, config.run_dir(B).name
    assert fleet.submitted == [(a_dir, 4), (b_dir, 4), (a_dir, 4)]
    assert _rounds(config, A) == [1, 2, 3, 4]  # resumed after round 2: none repeated, none lost
    assert _rounds(config, B) == [1]
    assert not (config.run_dir(A) / STOP_REQUEST).exists()  # withdrawn before A resumed
    assert any(
        "ticket bbbbbbbbbbbb is now active: round 3 finishes" in line for line in fleet.lines
    )
    state = read_state(config.paths.service_file)
    assert state is not None
    assert [(s.ticket, s.first_round, s.last_round) for s in state.segments] == [
        (A, 1, 2),
        (B, 1, 1),
        (A, 3, 4),
    ]
    outcomes = [s.outcome for s in state.segments]
    assert outcomes[0] == "switched: ticket bbbbbbbbbbbb is now active"
    assert outcomes[1] == "switched: ticket aaaaaaaaaaaa is now active"
    assert outcomes[2] == COMPLETED


def test_when_done_idle_serves_the_fleet_until_the_next_deploy(tmp_path: Path) -> None:
    config = _config(tmp_path, num_rounds=2)  # when_done: idle, the default
    _deploy(config, A)
    idle_polls = 0

    def polls(fleet: FakeFleet) -> None:
        nonlocal idle_polls
        state = read_state(config.paths.service_file)
        if state is not None and state.phase == IDLE:
            idle_polls += 1
            if idle_polls == 3:
                _deploy(config, B)
            if idle_polls == 3 + 3 and _rounds(config, B) == [1, 2]:
                raise _EndLoopError("B trained too")

    fleet = FakeFleet(config)
    original = fleet.check_superlink

    def check() -> None:
        original()
        polls(fleet)

    fleet.check_superlink = check  # type: ignore[method-assign]
    with pytest.raises(_EndLoopError, match="B trained too"):
        _service(fleet).serve()

    assert _rounds(config, A) == [1, 2] and _rounds(config, B) == [1, 2]
    assert any("ticket aaaaaaaaaaaa has trained its 2 rounds" in line for line in fleet.lines)


def test_when_done_continue_trains_num_rounds_more_in_the_same_run(tmp_path: Path) -> None:
    config = _config(tmp_path, num_rounds=2, when_done="continue")
    _deploy(config, A)

    def after_round(fleet: FakeFleet, server_round: int) -> None:
        if server_round == 5:
            raise _EndLoopError("five rounds")

    fleet = FakeFleet(config, after_round=after_round)
    with pytest.raises(_EndLoopError):
        _service(fleet).serve()

    name = config.run_dir(A).name
    assert fleet.submitted == [(name, 2), (name, 4), (name, 6)]
    assert _rounds(config, A) == [1, 2, 3, 4, 5]


def test_no_active_ticket_or_a_missing_bundle_idles_with_the_reason(tmp_path: Path) -> None:
    config = _config(tmp_path)
    service = _service(FakeFleet(config))
    assert "no ticket is active yet" in str(service.next_work())

    _deploy(config, A)
    DeploymentLedger(config.paths.deployments).bundle(A).unlink()
    reason = str(service.next_work())
    assert f"its bundle {DeploymentLedger(config.paths.deployments).bundle(A)}" in reason
    assert "is missing" in reason and "ticket deploy" in reason

    config.paths.deployments.joinpath("ledger.json").write_text("{broken")
    assert str(service.next_work()).startswith("cannot train:")


def test_a_failed_run_is_retried_after_a_pause_and_with_exit_ends_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.service.BACKOFF_S", (0.0,))
    config = _config(tmp_path, num_rounds=3)
    _deploy(config, A)
    attempts: list[int] = []

    def status(attempt: int) -> str:
        attempts.append(attempt)
        if attempt == 3:
            raise _EndLoopError("third try")
        return "finished:failed"

    def fail_after_one_round(fleet: FakeFleet, server_round: int) -> None:
        request_stop(config.run_dir(A), "the ServerApp crashed")  # ends the fake run early

    fleet = FakeFleet(config, status=status, after_round=fail_after_one_round, ignore_stop=False)
    with pytest.raises(_EndLoopError):
        _service(fleet).serve()
    assert attempts == [1, 2, 3]
    assert _rounds(config, A) == [1, 2, 3]  # each try resumed after the last
    assert any("ended finished:failed; trying again" in line for line in fleet.lines)

    exiting = _config(tmp_path / "exit", when_done="exit")
    _deploy(exiting, A)
    assert _service(FakeFleet(exiting, status=lambda _: "finished:failed")).serve() == (
        "finished:failed"
    )


def test_a_run_that_ignores_the_stop_request_is_stopped_a_round_timeout_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.service.SWITCH_GRACE_S", -10.0)  # the deadline has passed
    config = _config(tmp_path, num_rounds=3, when_done="exit")
    _deploy(config, A)

    def after_round(fleet: FakeFleet, server_round: int) -> None:
        if server_round == 1 and len(fleet.submitted) == 1:
            _deploy(config, B)

    fleet = FakeFleet(config, after_round=after_round, ignore_stop=True)
    _service(fleet).serve()
    assert fleet.cli.stopped == [1]
    assert any("did not stop after its round; stopping it" in line for line in fleet.lines)


def test_service_state_survives_a_restart_with_the_open_segment_marked(tmp_path: Path) -> None:
    path = tmp_path / "service.json"
    first = ServicePublisher(path, pid=1)
    first.begin_segment(A, tmp_path / "runs" / "a", 1)
    first.progress(run_id=7, last_round=2)

    second = ServicePublisher(path, pid=2)

    (segment,) = second.state.segments
    assert (segment.ticket, segment.run_id, segment.last_round) == (A, 7, 2)
    assert segment.outcome == "interrupted: the service stopped"
    second.update(phase=STOPPED)
    state = read_state(path)
    assert state is not None and state.pid == 2 and state.phase == STOPPED


def test_an_unreadable_service_file_reads_as_no_state(tmp_path: Path) -> None:
    path = tmp_path / "service.json"
    path.write_text("{not json")
    assert read_state(path) is None
    path.write_text(json.dumps({"format": 99}))
    assert read_state(path) is None


def test_next_work_is_the_configured_ticket_when_server_yaml_names_one(tmp_path: Path) -> None:
    ticket = tmp_path / "t.ticket"
    ticket.write_bytes(b"x")
    config = _config(tmp_path, ticket=str(ticket))
    work = _service(FakeFleet(config)).next_work()
    assert isinstance(work, Work) and work.target.ticket == ticket and work.planned == 3


def test_a_missing_active_bundle_stops_fleet_server_run_before_it_starts(tmp_path: Path) -> None:
    from server.fleet import FleetServer, init_state

    config = _config(tmp_path)
    init_state(config)
    _deploy(config, A)
    bundle = DeploymentLedger(config.paths.deployments).bundle(A)
    bundle.unlink()
    with pytest.raises(FleetError, match=f"has no bundle \\({bundle} is missing\\)"):
        FleetServer(config).run()


def _queue_search(config: FleetConfig, tmp_path: Path, name: str = "find-heart") -> SearchQueue:
    queue = SearchQueue(config.paths.jobs_dir)
    out = tmp_path / f"{name}.ticket"
    settings = SearchSettings(search_method="fed-oneshot", search_out=out)
    queue.submit(SearchRequest(name, tmp_path / "dense.ticket", out, settings))
    return queue


def test_a_queued_search_runs_after_the_round_in_progress_then_training_resumes(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, num_rounds=4, when_done="exit")
    _deploy(config, A)
    queue: SearchQueue | None = None

    def after_round(fleet: FakeFleet, server_round: int) -> None:
        nonlocal queue
        if server_round == 2 and queue is None:
            queue = _queue_search(config, tmp_path)

    fleet = FakeFleet(config, after_round=after_round)
    _service(fleet).serve()

    a_dir = config.run_dir(A).name
    assert fleet.submitted == [(a_dir, 4), ("find-heart", 0), (a_dir, 4)]
    assert _rounds(config, A) == [1, 2, 3, 4]
    assert queue is not None
    status = queue.status("find-heart")
    assert status is not None and (status.state, status.detail) == (DONE, COMPLETED)
    assert (tmp_path / "find-heart.ticket").read_bytes() == b"a found ticket"
    assert any("fleet search find-heart is queued: round 3 finishes" in x for x in fleet.lines)


def test_a_damaged_search_job_fails_that_job_and_the_service_goes_on(tmp_path: Path) -> None:
    config = _config(tmp_path, when_done="exit")
    _deploy(config, A)
    queue = _queue_search(config, tmp_path)
    (config.paths.jobs_dir / "find-heart.json").write_text("{damaged")

    fleet = FakeFleet(config)
    assert _service(fleet).serve() == COMPLETED

    status = queue.status("find-heart")
    assert status is not None and status.state == FAILED and "not JSON" in status.detail
    assert _rounds(config, A) == [1, 2, 3]


def test_a_round_goal_above_the_enrolled_fleet_waits_naming_the_key(tmp_path: Path) -> None:
    from server.enrolment import Enrolment, EnrolmentRecords

    config = _config(tmp_path, round_goal=2, round_deadline_s=1)
    _deploy(config, A)
    service = _service(FakeFleet(config))
    reason = str(service.next_work())
    assert "run.round_goal is 2, but only 0 node(s) are enrolled" in reason

    records = EnrolmentRecords(config.paths.nodes_file)
    for node in (11, 12):
        records.add(
            Enrolment(node, f"clinic-{node}", f"SHA256:{node}", "ecdsa-sha2-nistp384 x", "")
        )
    assert isinstance(service.next_work(), Work)


def test_the_node_refresher_writes_what_the_superlink_lists_and_removes_it_at_the_end(
    tmp_path: Path,
) -> None:
    from server.node_snapshot import NodeRefresher, read_snapshot

    path = tmp_path / "nodes-online.json"
    calls: list[int] = []

    def list_nodes() -> list[dict[str, Any]]:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the SuperLink is restarting")
        return [{"node-id": len(calls), "status": "online"}]

    refresher = NodeRefresher(path, list_nodes, interval_s=3600)
    refresher.refresh()
    refresher.refresh()  # fails: the last snapshot stays
    snapshot = read_snapshot(path)
    assert snapshot is not None and snapshot.nodes == [{"node-id": 1, "status": "online"}]
    with refresher:  # the thread refreshes at once, then waits
        pass
    assert not path.exists()
    path.write_text("{torn")
    assert read_snapshot(path) is None


def _online(config: FleetConfig, *node_ids: int, offline: tuple[int, ...] = ()) -> None:
    nodes = [{"node-id": n, "status": "online"} for n in node_ids]
    nodes += [{"node-id": n, "status": "offline"} for n in offline]
    write_snapshot(config.paths.nodes_snapshot, nodes, datetime.now(UTC))


def _finished(config: FleetConfig, ticket_id: str, rounds: int, record: DeliveryRecord) -> None:
    log = RunLog(config.run_dir(ticket_id) / "rounds.jsonl")
    for server_round in range(1, rounds + 1):
        log.append({"round": server_round, "ticket": ticket_id})
    write_record(config.run_dir(ticket_id), record)


def test_an_idle_service_re_runs_a_finished_run_for_online_nodes_that_missed_its_model(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, num_rounds=2)  # when_done: idle
    _deploy(config, A)
    record = DeliveryRecord(A, 2, kept={1: "t"}, refused={2: "no model store"}, silent=[3])
    _finished(config, A, 2, record)
    _online(config, 1, 2, 3, 4, offline=(5,))
    service = _service(FakeFleet(config))

    work = service.next_work()

    # 1 kept it and 2 refused it (asking again gets the same answer); 5 is offline.
    assert work == Work(service._target(), 2, deliver_to=(3, 4))  # type: ignore[arg-type]


def test_the_same_silent_nodes_are_asked_again_only_after_the_retry_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, num_rounds=2)
    _deploy(config, A)
    _finished(config, A, 2, DeliveryRecord(A, 2, silent=[3]))
    _online(config, 3)
    fleet = FakeFleet(config)
    service = _service(fleet)
    clock = [1000.0]
    monkeypatch.setattr("server.service.time.monotonic", lambda: clock[0])

    first = service.next_work()
    assert isinstance(first, Work) and first.deliver_to == (3,)
    service._train(first)  # 3 stays silent: the fake run trains nothing and delivers nothing

    assert fleet.submitted == [(config.run_dir(A).name, 2)]  # the finished run, no new round
    assert any("sending the final model" in line for line in fleet.lines)
    assert isinstance(service.next_work(), str)  # idle: 3 was just asked
    _online(config, 3, 4)
    assert service.next_work() == Work(first.target, 2, deliver_to=(3, 4))  # a new node: now
    _online(config, 3)
    clock[0] += DELIVERY_RETRY_S + 1
    assert service.next_work() == Work(first.target, 2, deliver_to=(3,))


def test_no_delivery_run_without_a_record_a_snapshot_or_anyone_missing(tmp_path: Path) -> None:
    config = _config(tmp_path, num_rounds=2)
    _deploy(config, A)
    service = _service(FakeFleet(config))
    _finished(config, A, 2, DeliveryRecord(A, 2, kept={1: "t"}))
    assert isinstance(service.next_work(), str)  # no snapshot: nobody known online
    _online(config, 1)
    assert isinstance(service.next_work(), str)  # everyone online holds it
    (config.run_dir(A) / "final-model.json").unlink()
    assert isinstance(service.next_work(), str)  # the run pushed nothing (stopped, say)


def test_a_damaged_delivery_record_is_said_and_the_service_idles(tmp_path: Path) -> None:
    config = _config(tmp_path, num_rounds=2)
    _deploy(config, A)
    _finished(config, A, 2, DeliveryRecord(A, 2))
    (config.run_dir(A) / "final-model.json").write_text("{not json")
    _online(config, 1)
    fleet = FakeFleet(config)

    assert isinstance(_service(fleet).next_work(), str)
    assert any("final-model.json: not JSON" in line for line in fleet.lines)


def test_online_node_ids_reads_the_superlinks_listing() -> None:
    listed = [
        {"node-id": 7, "status": "online"},
        {"node-id": "8", "status": "online"},
        {"node-id": 9, "status": "offline"},
        {"node-id": "x", "status": "online"},
        {"status": "online"},
    ]
    assert online_node_ids(listed) == {7, 8}
