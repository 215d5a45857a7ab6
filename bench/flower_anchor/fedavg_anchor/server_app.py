"""The anchor's ServerApp: Flower's own `FedAvg` (flwr.serverapp.strategy), unchanged but for
a run-log line per round, so bench/scale.py reads it as it reads the project's runs."""

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedavg_anchor.task import dense_model, round_line
from server.run_log import RunLog
from ticket import runconfig

app = ServerApp()


class LoggedFedAvg(FedAvg):
    """FedAvg; each round also appends its train trip's wall time (sampling, sending, waiting,
    aggregating), who answered and the bytes each way to `log`."""

    def __init__(self, log: RunLog | None, **options: Any) -> None:
        super().__init__(**options)
        self.log = log
        self._began = 0.0
        self._down: dict[int, int] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._began = time.monotonic()
        messages = list(super().configure_train(server_round, arrays, config, grid))
        size = _size(arrays)
        self._down = {message.metadata.dst_node_id: size for message in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        wall = time.monotonic() - self._began
        answered = [reply for reply in replies if not reply.has_error()]
        if self.log is not None:
            line = round_line(
                server_round,
                wall_s=wall,
                participants=[reply.metadata.src_node_id for reply in answered],
                failures={
                    reply.metadata.src_node_id: reply.error.reason
                    for reply in replies
                    if reply.has_error()
                },
                down=self._down,
                up={
                    reply.metadata.src_node_id: _size(reply.content.array_records["arrays"])
                    for reply in answered
                },
            )
            self.log.append(line)
        return result


def _size(arrays: ArrayRecord) -> int:
    """Bytes of the arrays' payloads (float32 values plus numpy's small headers)."""
    return sum(len(array.data) for array in arrays.values())


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = runconfig.parse(context.run_config)
    settings = run.training
    log = None
    if run.placement.run_dir is not None:
        run.placement.run_dir.mkdir(parents=True, exist_ok=True)
        log = RunLog(run.placement.run_dir / "rounds.jsonl")
    strategy = LoggedFedAvg(
        log,
        fraction_train=settings.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=settings.min_nodes,
        min_available_nodes=settings.min_nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(dense_model(settings.seed).state_dict()),
        num_rounds=settings.num_rounds,
        timeout=settings.round_timeout_s,
    )
