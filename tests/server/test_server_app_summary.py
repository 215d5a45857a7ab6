"""The ServerApp's summary file: how a launcher outside the ServerApp process reads the rounds."""

import json
from pathlib import Path

from flwr.app import MetricRecord
from flwr.serverapp.strategy import Result

from server.server_app import write_summary


def test_summary_lists_every_round_with_train_and_evaluate_metrics(tmp_path: Path) -> None:
    result = Result(
        train_metrics_clientapp={
            1: MetricRecord({"participants": 2, "bytes-up": 10}),
            2: MetricRecord({"participants": 1, "bytes-up": 5}),
        },
        evaluate_metrics_clientapp={1: MetricRecord({"accuracy": 0.5})},
    )
    path = tmp_path / "out" / "rounds.json"

    write_summary(path, result)

    rounds = json.loads(path.read_text())["rounds"]
    assert rounds == [
        {"round": 1, "train": {"participants": 2, "bytes-up": 10}, "evaluate": {"accuracy": 0.5}},
        {"round": 2, "train": {"participants": 1, "bytes-up": 5}, "evaluate": {}},
    ]
    assert [p.name for p in path.parent.iterdir()] == ["rounds.json"]  # no partial left
