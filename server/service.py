"""`fleet-server run` as a service: the SuperLink stays up, and training follows the ledger.

The service's loop, over the processes FleetServer (server/fleet.py) starts and follows:

1. Work out what to train: run.ticket if server.yaml names one, else the active ticket of the
   deployment ledger, in its own run directory (runs/NAME-<id12>). Nothing to train (no
   ticket active yet, its rounds all done under `when_done: idle`, its bundle missing): the
   service idles and says why, and the SuperLink keeps serving the fleet so that devices stay
   connected and `ticket deploy` reaches them.
2. Train it: submit (or resume) its Flower run and follow it, printing each round. When the
   ledger's active ticket changes (`ticket deploy`, `ticket rollback`), ask the run to stop
   after the round in flight (server/run_control.py), so that round is checkpointed and kept;
   if it has not stopped a round timeout later, stop the Flower run (the round is then trained
   again on resume, never skipped). Then back to 1: the new ticket trains in its own run
   directory, and an old one resumes where it stopped if it becomes active again.
3. A fleet search that `fleet-server find` queued (server/search_jobs.py) comes before
   training: the run in progress is asked to stop after its round as for a switch, the search
   runs on the same SuperLink, and training then resumes.
4. When the run has trained num_rounds: `when_done: idle` waits for the next deploy,
   `continue` trains another num_rounds in the same run directory, `exit` ends the service.
   The run's last round pushes the final model to the fleet (server/final_model.py); while
   idle, a node online (nodes-online.json) that has not settled it gets it from a re-run of
   the finished run, which trains no round and only delivers (at once when the missing set
   changes, else again after DELIVERY_RETRY_S).
   A run that fails is retried after a growing pause (BACKOFF_S), sooner if the ledger moves.

Every change of what the service does is published to service.json (server/service_state.py)
for `fleet-server status` and the metrics endpoint.
"""

import contextlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.deployments import DeploymentLedger
from server.enrolment import EnrolmentError, EnrolmentRecords
from server.errors import FleetError, NoActiveTicketError
from server.node_snapshot import read_snapshot
from server.round_policy import check_goal_fits_fleet
from server.run_control import clear_stop, request_stop
from server.run_log import RunLog
from server.search_jobs import DONE, FAILED, RUNNING, JobError, SearchQueue
from server.service_state import (
    BACKOFF,
    IDLE,
    SEARCHING,
    SWITCHING,
    TRAINING,
    ServicePublisher,
)
from server.superlink import COMPLETED

if TYPE_CHECKING:
    from server.fleet import FleetServer, TrainingTarget

BACKOFF_S = (15.0, 30.0, 60.0, 120.0, 300.0)  # waits after 1, 2, 3, ... failed runs in a row
SWITCH_GRACE_S = 60.0  # beyond a round timeout, how long a stop request may take to land
DELIVERY_RETRY_S = 300.0  # before asking the same silent nodes again for the final model


@dataclass(frozen=True)
class Work:
    """A run to train now: `target` up to round `planned`."""

    target: "TrainingTarget"
    planned: int
    deliver_to: tuple[int, ...] = ()  # a finished run, re-run to send these nodes its model


@dataclass(frozen=True)
class Search:
    """A queued fleet search to run now."""

    name: str


@dataclass
class _Switch:
    """A stop asked of the run in progress, because another ticket became active."""

    reason: str = ""
    deadline: float = 0.0
    forced: bool = False

    @property
    def asked(self) -> bool:
        return bool(self.reason)


class TrainingService:
    """The loop of the module docstring; `serve()` returns only under `when_done: exit`."""

    def __init__(self, fleet: "FleetServer", publisher: ServicePublisher) -> None:
        self.fleet = fleet
        self.config = fleet.config
        self.publisher = publisher
        self._failed_in_a_row = 0
        self.queue = SearchQueue(self.config.paths.jobs_dir)
        # (run dir, nodes asked) -> when: the same silent nodes are not asked on every poll.
        self._delivered: dict[tuple[str, tuple[int, ...]], float] = {}

    def serve(self) -> str:
        while True:
            work = self._wait_for_work()
            if work is None:  # when_done: exit, and nothing is left to train
                return COMPLETED
            if isinstance(work, Search):
                self._search(work)
                continue
            status, switched = self._train(work)
            if switched or status == COMPLETED:
                self._failed_in_a_row = 0
                continue
            if self.config.run.when_done == "exit":
                return status
            self._back_off(work, status)

    # -- what to train -------------------------------------------------------------------------

    def _wait_for_work(self) -> Work | Search | None:
        said = None
        while True:
            self.fleet.check_superlink()
            found = self.next_work()
            if not isinstance(found, str):
                return found
            if found != said:
                self.fleet.out(found)
                self.publisher.update(phase=IDLE, detail=found, run_id=None, run_status=None)
                said = found
            time.sleep(self.fleet.poll_s)

    def next_work(self) -> Work | Search | str | None:
        """The search or run to do now, or why there is none (a sentence), or None to exit."""
        if pending := self.queue.pending():
            return Search(pending[0])
        target = self._target()
        if isinstance(target, str):
            return target
        done, rounds = last_round(target), self.config.run.num_rounds
        if done < rounds:
            return Work(target, rounds)
        return self._after_done(target, done)

    def _after_done(self, target: "TrainingTarget", done: int) -> Work | str | None:
        """What follows a run that trained its num_rounds (`run.when_done`)."""
        rounds, when_done = self.config.run.num_rounds, self.config.run.when_done
        if when_done == "continue":
            return Work(target, done - done % rounds + rounds)
        if when_done == "exit":
            return None
        if missing := self._final_model_due(target):
            return Work(target, done, deliver_to=missing)
        which = "run.ticket" if target.ticket_id is None else f"ticket {target.ticket_id[:12]}"
        return (
            f"{which} has trained its {rounds} rounds ({target.run_dir}); idle until "
            "`ticket deploy` makes another ticket active"
        )

    def _final_model_due(self, target: "TrainingTarget") -> tuple[int, ...]:
        """Online nodes that have not settled the finished run's final model, unless these
        very nodes were asked less than DELIVERY_RETRY_S ago."""
        from server.delivery_record import DeliveryRecordError, load_record, nodes_missing

        try:
            record = load_record(target.run_dir)
        except DeliveryRecordError as error:
            self.fleet.out(f"final model delivery: {error}")
            return ()
        snapshot = read_snapshot(self.config.paths.nodes_snapshot)
        if record is None or snapshot is None:
            return ()
        missing = tuple(nodes_missing(record, online_node_ids(snapshot.nodes)))
        key = (str(target.run_dir), missing)
        if not missing or time.monotonic() - self._delivered.get(key, -math.inf) < (
            DELIVERY_RETRY_S
        ):
            return ()
        return missing

    def _fleet_too_small(self) -> str | None:
        """Why run.round_goal cannot be met by the enrolled fleet (None: it can, or no
        enrolment is kept). Waiting says so; the next `fleet-server enroll` can lift it."""
        if not self.config.node_auth or self.config.run.round_goal == 0:
            return None
        try:
            enrolled = len(EnrolmentRecords(self.config.paths.nodes_file).read())
        except EnrolmentError as error:
            return f"cannot count the enrolled nodes: {error}"
        return check_goal_fits_fleet(self.config.run.round_goal, enrolled)

    def _target(self) -> "TrainingTarget | str":
        """What the ledger (or run.ticket) says to train, or why it cannot be trained now."""
        from server.fleet import training_target

        try:
            target = training_target(self.config)
        except NoActiveTicketError:
            return (
                "no ticket is active yet: the SuperLink serves the fleet until "
                "`ticket deploy FILE -c server.yaml` rolls one out"
            )
        except FleetError as error:  # a damaged ledger: say so and keep serving the fleet
            return f"cannot train: {error}"
        if not target.ticket.is_file():
            return (
                f"cannot train the active ticket {target.ticket_id}: its bundle {target.ticket} "
                f"is missing from the deployment ledger ({self.config.paths.deployments}); "
                "roll it out again with `ticket deploy FILE -c server.yaml`"
            )
        return self._fleet_too_small() or target

    # -- training ------------------------------------------------------------------------------

    def _train(self, work: Work) -> tuple[str, bool]:
        """Submit (or resume) `work`'s run and follow it; (its status, whether we switched)."""
        fleet, target = self.fleet, work.target
        run_dir = target.run_dir
        clear_stop(run_dir)  # a request left by a service that switched, then was killed
        log = RunLog(run_dir / "rounds.jsonl")
        done = {line["round"] for line in log.read()}
        first = max(done, default=0) + 1
        if work.deliver_to:
            self._delivered[(str(run_dir), work.deliver_to)] = time.monotonic()
            fleet.out(
                f"sending the final model of {run_dir} to {len(work.deliver_to)} node(s) "
                "online that have not kept it"
            )
        elif target.ticket_id is not None:
            fleet.out(f"training the active ticket {target.ticket_id[:12]}")
        if done and not work.deliver_to:
            fleet.out(f"resuming {run_dir} after round {max(done)} of {work.planned}")
        which = "run.ticket" if target.ticket_id is None else target.ticket_id[:12]
        self.publisher.begin_segment(target.ticket_id, run_dir, first)
        self.publisher.update(
            phase=TRAINING,
            detail=(
                f"sending the final model of {which} to {len(work.deliver_to)} node(s)"
                if work.deliver_to
                else f"training {which}: rounds {first}..{work.planned}"
            ),
            ticket=target.ticket_id,
            run_dir=str(run_dir),
            rounds_planned=work.planned,
            run_id=None,
            run_status=None,
        )
        switch = _Switch()

        def poll(run_id: int | None) -> None:
            fleet.print_new_rounds(log, done, work.planned)
            self.publisher.progress(run_id=run_id, last_round=max(done, default=0))
            if run_id is not None:
                self.publisher.update(run_id=run_id, run_status="running")
            if not switch.asked:
                self._switch_if_moved(target, switch, max(done, default=0))
            elif switch.asked and not switch.forced and time.monotonic() > switch.deadline:
                switch.forced = True
                if run_id is not None:
                    fleet.out(f"run {run_id} did not stop after its round; stopping it")
                    fleet.cli.stop_run(run_id)

        status = fleet.follow(
            self.config.run_config(target.ticket, run_dir, num_rounds=work.planned),
            label=f"{work.planned} rounds, {run_dir}",
            on_poll=poll,
        )
        last = max(done, default=0)
        fleet.out(f"{status}; {last}/{work.planned} rounds")
        outcome = f"switched: {switch.reason}" if switch.asked else status
        self.publisher.progress(last_round=last)
        self.publisher.update(run_status=status)
        self.publisher.end_segment(outcome)
        return status, switch.asked

    def _switch_if_moved(self, target: "TrainingTarget", switch: _Switch, last: int) -> None:
        """Ask the run to stop after its round if a search is queued or the ledger's active
        ticket is another."""
        from server.deployments import LedgerError

        if pending := self.queue.pending():
            switch.reason = f"fleet search {pending[0]} is queued"
        elif target.ticket_id is None:
            return  # run.ticket: what the ledger says does not concern this run
        else:
            try:
                active = DeploymentLedger(self.config.paths.deployments).active()
            except LedgerError:
                return  # a damaged ledger is reported once the run ends; keep training
            if active == target.ticket_id:
                return
            switch.reason = (
                f"ticket {active[:12]} is now active" if active else "no ticket is active any more"
            )
        switch.deadline = time.monotonic() + self.config.run.round_timeout_s + SWITCH_GRACE_S
        request_stop(target.run_dir, switch.reason)
        self.fleet.out(f"{switch.reason}: round {last + 1} finishes, then training switches")
        detail = f"{switch.reason}; finishing round {last + 1}"
        self.publisher.update(phase=SWITCHING, detail=detail)

    def _search(self, search: Search) -> None:
        """Run the queued fleet search `search`, recording where it got to in its job status."""
        from server.fleet import SearchJob

        queue, name = self.queue, search.name
        try:
            request = queue.request(name)
        except JobError as error:
            self.fleet.out(f"fleet search {name}: {error}")
            queue.set_status(name, FAILED, str(error))
            return
        run_dir = self.config.paths.run_dir(name)
        job = SearchJob(request.ticket, run_dir, request.out, request.settings, request.plaintext)
        detail = f"fleet search {name}: {request.settings.search_method} in {run_dir}"
        self.fleet.out(detail)
        self.publisher.update(
            phase=SEARCHING, detail=detail, ticket=None, run_dir=str(run_dir), run_id=None
        )
        queue.set_status(name, RUNNING, "submitted")
        try:
            status = self.fleet.search(
                job, on_level=lambda level: queue.set_status(name, RUNNING, f"{level} finished")
            )
        except Exception as error:  # recorded for `find` to report, then the service stops
            queue.set_status(name, FAILED, f"{type(error).__name__}: {error}")
            raise
        if status == COMPLETED and request.out.is_file():
            queue.set_status(name, DONE, status)
        else:
            queue.set_status(name, FAILED, f"{status}; see {self.config.paths.logs_dir}")

    def _back_off(self, work: Work, status: str) -> None:
        """Wait before the next try after a failed run; cut short if the ledger moves."""
        pause = BACKOFF_S[min(self._failed_in_a_row, len(BACKOFF_S) - 1)]
        self._failed_in_a_row += 1
        detail = (
            f"the run in {work.target.run_dir} ended {status}; trying again in {pause:.0f} s "
            f"(logs in {self.config.paths.logs_dir})"
        )
        self.fleet.out(detail)
        self.publisher.update(phase=BACKOFF, detail=detail)
        until = time.monotonic() + pause
        while time.monotonic() < until:
            self.fleet.check_superlink()
            found = self.next_work()
            if isinstance(found, Search) or (
                isinstance(found, Work) and found.target != work.target
            ):
                return
            time.sleep(self.fleet.poll_s)


def online_node_ids(nodes: Iterable[Mapping[str, Any]]) -> set[int]:
    """The ids of the nodes `flwr supernode list` says are online."""
    online = set()
    for node in nodes:
        node_id = node.get("node-id")
        if node.get("status") == "online" and isinstance(node_id, int | str):
            with contextlib.suppress(ValueError):
                online.add(int(node_id))
    return online


def last_round(target: "TrainingTarget") -> int:
    """The last round the run directory of `target` logged (0: none yet)."""
    lines = RunLog(target.run_dir / "rounds.jsonl").read()
    return max((line["round"] for line in lines), default=0)
