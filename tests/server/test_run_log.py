"""The run log: round lines, line-atomic appends, reconciliation after a crash, the plot."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.run_log import RunLog, RunLogError, plot_run, round_line
from server.strategy import RoundRecord
from ticket.train_config import EvalResult

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _record(server_round: int) -> RoundRecord:
    return RoundRecord(
        server_round,
        bytes_down={102: 100, 101: 100, 103: 100},
        bytes_up={101: 60, 102: 60, 103: 7},
        accepted=[102, 101],
        failures={104: "error 1003: no local data"},
        rejected={103: "truncated"},
        train_metrics={"train-loss": 0.5},
        evaluate_metrics={"loss": 0.6, "accuracy": 0.75},
        closed="deadline",
        wall_s=12.34567,
        late=[{"node": 105, "round": server_round - 1, "stage": "train"}],
    )


def test_a_round_line_has_every_field_keyed_by_node() -> None:
    server_eval = EvalResult(loss=0.4, accuracy=0.8, auc=0.9, examples=277)

    line = round_line(_record(3), server_eval, WHEN)

    assert line == {
        "round": 3,
        "finished_at": "2026-01-02T03:04:05+00:00",
        "participants": [101, 102],
        "failures": {"104": "error 1003: no local data"},
        "rejected": {"103": "truncated"},
        "bytes": {
            "down": {"101": 100, "102": 100, "103": 100},
            "up": {"101": 60, "102": 60, "103": 7},
            "down_total": 300,
            "up_total": 127,
        },
        "train": {"loss": 0.5},
        "federated_eval": {"loss": 0.6, "accuracy": 0.75, "auc": None},
        "evaluate_failures": {},
        "evaluate_rejected": {},
        "server_eval": {"loss": 0.4, "accuracy": 0.8, "auc": 0.9, "examples": 277},
        "closed": "deadline",
        "wall_s": 12.346,
        "late": [{"node": 105, "round": 2, "stage": "train"}],
    }
    json.dumps(line, allow_nan=False)  # plain JSON


def test_a_round_line_keeps_federated_roc_auc_and_evaluate_rejects() -> None:
    record = _record(3)
    record.evaluate_metrics = {"loss": 0.6, "accuracy": 0.75, "auc": 0.875}
    record.evaluate_failures = {104: "no reply before the round timeout"}
    record.evaluate_rejected = {102: "evaluation has no 'loss'"}

    line = round_line(record, None, WHEN)

    assert line["federated_eval"] == {"loss": 0.6, "accuracy": 0.75, "auc": 0.875}
    assert line["evaluate_failures"] == {"104": "no reply before the round timeout"}
    assert line["evaluate_rejected"] == {"102": "evaluation has no 'loss'"}
    assert line["rejected"] == {"103": "truncated"}  # the train stage's, kept apart


def test_a_round_without_evaluation_logs_null() -> None:
    line = round_line(RoundRecord(1), None, WHEN)

    assert line["federated_eval"] is None and line["server_eval"] is None
    assert line["train"] == {"loss": None}


def test_append_writes_one_line_per_round(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "run" / "rounds.jsonl")

    for server_round in (1, 2):
        log.append(round_line(_record(server_round), None, WHEN))

    text = log.path.read_text()
    assert text.count("\n") == 2 and text.endswith("\n")
    assert [line["round"] for line in log.read()] == [1, 2]


def test_read_leaves_out_a_torn_last_line(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "rounds.jsonl")
    log.append({"round": 1})
    with log.path.open("a") as handle:
        handle.write('{"round": 2, "bytes"')  # killed mid-write

    assert log.read() == [{"round": 1}]


def test_read_refuses_a_line_that_is_not_a_round(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "rounds.jsonl")
    log.path.write_text('{"round": 1}\n[1, 2]\n')

    with pytest.raises(RunLogError, match=r"rounds\.jsonl:2: not a round record"):
        log.read()


def test_reconcile_trims_later_rounds_and_restores_the_checkpointed_one(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "rounds.jsonl")
    log.append({"round": 1})
    log.path.write_text(log.path.read_text() + '{"round": 3}\n{"round": 4, "x"')

    log.reconcile(2, {"round": 2, "restored": True})

    assert log.read() == [{"round": 1}, {"round": 2, "restored": True}]
    assert log.path.read_text().endswith("\n")


def test_reconcile_of_a_fresh_run_creates_nothing(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "new" / "rounds.jsonl")

    log.reconcile(0, None)

    assert not log.path.parent.exists()


def test_reconcile_can_restore_into_a_missing_directory(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "new" / "rounds.jsonl")

    log.reconcile(1, {"round": 1})

    assert log.read() == [{"round": 1}]


def test_reconcile_leaves_a_consistent_log_alone(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "rounds.jsonl")
    log.append({"round": 1})
    before = log.path.stat().st_mtime_ns

    log.reconcile(1, {"round": 1, "other": "copy"})

    assert log.read() == [{"round": 1}]
    assert log.path.stat().st_mtime_ns == before


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "rounds.jsonl")
    server_eval = EvalResult(loss=0.4, accuracy=0.8, auc=0.9, examples=277)
    for server_round in (1, 2, 3):
        log.append(round_line(_record(server_round), server_eval, WHEN))

    plot_run(log.path, tmp_path / "rounds.png")

    assert (tmp_path / "rounds.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
