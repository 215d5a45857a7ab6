"""`fleet-server status` and the metrics endpoint, from a rounds.jsonl fixture."""

import json
import urllib.request
from pathlib import Path
from typing import Any

from server.delivery_record import DeliveryRecord, write_record
from server.metrics import serve_metrics
from server.run_status import format_summary, read_summary

ACCURACY = [0.0, 0.81, 0.82, 0.83, 0.84]  # the server's, by round


def _line(server_round: int, **changes: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "round": server_round,
        "finished_at": f"2025-01-01T10:0{server_round}:00+00:00",
        "participants": [7, 8],
        "failures": {"9": "timeout"},
        "rejected": {},
        "bytes": {"up": {"7": 100, "8": 100}, "down": {"7": 300, "8": 300, "9": 300},
                  "up_total": 200, "down_total": 900},
        "train": {"loss": 0.4},
        "federated_eval": {"loss": 0.5, "accuracy": 0.7},
        "server_eval": {"loss": 0.45, "accuracy": ACCURACY[server_round], "auc": 0.9},
    }  # fmt: skip
    return {**line, **changes}


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "main"
    run_dir.mkdir(parents=True)
    late = [{"node": 9, "round": 2, "stage": "train"}]
    lines = [  # round 1 from before round management: no closed, wall_s, late
        _line(1),
        _line(2, failures={}, server_eval=None, closed="goal", wall_s=3.5, late=[]),
        _line(3, participants=[7], closed="deadline", wall_s=30.1, late=late),
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (run_dir / "rounds.jsonl").write_text(text + '{"round": 4, "torn')  # a torn last line
    return run_dir


def test_status_sums_the_run_log(tmp_path: Path) -> None:
    summary = read_summary(_run_dir(tmp_path), rounds_planned=5, run_id=12, run_status="running")

    assert summary.last_round == 3
    assert [s.participants for s in summary.rounds] == [2, 2, 1]
    assert [s.dropouts for s in summary.rounds] == [1, 0, 1]
    assert [(s.closed, s.late) for s in summary.rounds] == [(None, 0), ("goal", 0), ("deadline", 1)]
    # Server accuracy where the server evaluated, the nodes' own where it did not.
    assert [s.accuracy for s in summary.rounds] == [0.81, 0.7, 0.83]
    assert (summary.bytes_up_total, summary.bytes_down_total) == (600, 2700)
    document = summary.as_dict()
    assert document["run_id"] == 12 and document["accuracy"] == 0.83
    assert json.loads(json.dumps(document)) == document
    text = format_summary(summary)
    assert "run 12: running; round 3/5" in text and "0.830" in text


def test_status_reports_the_privacy_a_dp_run_spent_so_far(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dp = {"mechanism": "skellam", "epsilon": 2.5, "delta": 1e-5, "rounds_charged": 1}
    lines = [
        _line(1, secagg={"dp": dp}),
        _line(2, secagg={"aborted": "too few", "dp": None}),  # released nothing
        _line(3, secagg={"dp": {**dp, "epsilon": 3.75, "rounds_charged": 2}}),
    ]
    (run_dir / "rounds.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    summary = read_summary(run_dir, rounds_planned=5)

    assert summary.privacy == (3.75, 1e-5, 2)
    assert summary.as_dict()["epsilon"] == 3.75
    assert "privacy: epsilon 3.75 at delta 1e-05 over 2 released round(s)" in format_summary(
        summary
    )
    plain = read_summary(_run_dir(tmp_path), rounds_planned=5)
    assert plain.privacy is None and "privacy" not in format_summary(plain)
    server = serve_metrics(lambda: read_summary(run_dir, rounds_planned=5), port=0)
    try:
        assert _scrape(server.server_port)["ticketfleet_dp_epsilon"] == 3.75
    finally:
        server.shutdown()
        server.server_close()


def test_status_of_a_run_not_started_yet(tmp_path: Path) -> None:
    summary = read_summary(tmp_path / "nothing", rounds_planned=3)

    assert summary.last_round == 0 and summary.accuracy is None
    assert "no run submitted yet" in format_summary(summary)


def test_status_says_who_holds_the_final_model(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    assert "final model" not in format_summary(read_summary(run_dir, rounds_planned=3))
    record = DeliveryRecord("a" * 64, 3, kept={7: "t", 8: "t"}, refused={9: "no model store"})
    write_record(run_dir, record)

    summary = read_summary(run_dir, rounds_planned=3)

    assert (
        "final model (round 3): kept by 2 node(s), refused by 1, 0 silent "
        "(node 9: no model store; --json lists all)" in format_summary(summary)
    )
    assert summary.as_dict()["final_model"]["refused"] == {"9": "no model store"}
    (run_dir / "final-model.json").write_text("[]")
    damaged = read_summary(run_dir, rounds_planned=3)
    assert "final model: " in format_summary(damaged) and "final-model.json" in str(
        damaged.as_dict()["final_model"]["error"]
    )


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_the_metrics_endpoint_serves_the_same_figures(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    server = serve_metrics(lambda: read_summary(run_dir, rounds_planned=5), port=0)
    try:
        samples = _scrape(server.server_port)
        with (run_dir / "rounds.jsonl").open("a") as log:  # the torn line completes: round 4
            log.write('"}\n')
        (run_dir / "rounds.jsonl").write_text(
            (run_dir / "rounds.jsonl").read_text().replace('{"round": 4, "torn"}\n', "")
            + json.dumps(_line(4))
            + "\n"
        )
        later = _scrape(server.server_port)
    finally:
        server.shutdown()
        server.server_close()

    assert samples["ticketfleet_rounds_completed_total"] == 3
    assert samples["ticketfleet_rounds_planned"] == 5
    assert samples["ticketfleet_round_participants"] == 1
    assert samples["ticketfleet_round_dropouts"] == 1
    assert samples["ticketfleet_node_failures_total"] == 2
    assert samples["ticketfleet_accuracy"] == 0.83
    assert samples["ticketfleet_bytes_up_total"] == 600
    assert samples["ticketfleet_bytes_down_total"] == 2700
    assert later["ticketfleet_rounds_completed_total"] == 4  # read at every scrape
    assert "ticketfleet_dp_epsilon" not in samples  # no DP: no privacy figure
