"""The deployment ledger: what is active follows the events; damage is an error naming the file."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.deployments import DEPLOY, ROLLBACK, DeploymentLedger, LedgerError

A, B, C = "a" * 64, "b" * 64, "c" * 64
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _deploy(ledger: DeploymentLedger, ticket_id: str, *, succeeded: bool = True) -> None:
    ledger.record(DEPLOY, ticket_id, succeeded=succeeded, at=NOW, counts={"installed": 3})


def test_a_successful_deploy_activates_and_a_failed_one_does_not(tmp_path: Path) -> None:
    ledger = DeploymentLedger(tmp_path)
    assert ledger.active() is None and ledger.events() == []

    _deploy(ledger, A)
    _deploy(ledger, B, succeeded=False)

    assert ledger.active() == A and ledger.previous() is None
    assert [event.succeeded for event in ledger.events()] == [True, False]


def test_rollbacks_walk_back_through_the_activations(tmp_path: Path) -> None:
    ledger = DeploymentLedger(tmp_path)
    for ticket_id in (A, B, B, C):  # deploying the active ticket again activates nothing new
        _deploy(ledger, ticket_id)
    assert ledger.history() == [A, B, C]

    ledger.record(ROLLBACK, B, succeeded=True, at=NOW)
    assert (ledger.active(), ledger.previous()) == (B, A)
    ledger.record(ROLLBACK, A, succeeded=False, at=NOW)  # a failed rollback changes nothing
    assert ledger.active() == B
    ledger.record(ROLLBACK, A, succeeded=True, at=NOW)
    assert (ledger.active(), ledger.previous()) == (A, None)


def test_a_rollback_to_anything_but_the_previous_ticket_is_refused(tmp_path: Path) -> None:
    ledger = DeploymentLedger(tmp_path)
    _deploy(ledger, A)
    _deploy(ledger, B)
    before = ledger.file.read_bytes()

    with pytest.raises(LedgerError, match="the ticket before the active one is aaaaaaaaaaaa"):
        ledger.record(ROLLBACK, C, succeeded=True, at=NOW)

    assert ledger.file.read_bytes() == before


def test_events_keep_who_installed_it_and_the_canary(tmp_path: Path) -> None:
    ledger = DeploymentLedger(tmp_path)
    nodes = [{"node_id": 7, "status": "installed", "reason": "", "canary": True}]
    canary = {"passed": True, "reason": "accuracy 0.8 against 0.79"}

    ledger.record(DEPLOY, A, succeeded=True, at=NOW, canary=canary, nodes=nodes)

    [event] = DeploymentLedger(tmp_path).events()
    assert (event.nodes, event.canary, event.at) == (nodes, canary, "2026-12-01T12:00:00+00:00")


def test_bundles_are_kept_by_content_id(tmp_path: Path) -> None:
    ledger = DeploymentLedger(tmp_path)
    path = ledger.keep_bundle(A, b"signed bytes")
    assert path == tmp_path / "tickets" / f"{A}.ticket" and path.read_bytes() == b"signed bytes"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "unreadable"),
        (json.dumps({"format": 9, "events": []}), "not a format-1 deployment ledger"),
        (json.dumps({"format": 1, "events": {}}), "events must be a list"),
        (json.dumps({"format": 1, "events": [{"action": "deploy"}]}), r"events\[0\]"),
        (
            json.dumps(
                {
                    "format": 1,
                    "events": [{"action": "x", "ticket_id": A, "at": "t", "succeeded": True}],
                }
            ),
            "action must be one of",
        ),
    ],
)
def test_a_damaged_ledger_is_an_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "ledger.json").write_text(text)
    with pytest.raises(LedgerError, match=message) as error:
        DeploymentLedger(tmp_path).active()
    assert str(tmp_path / "ledger.json") in str(error.value)
