"""The run log: one JSON line per finished round, appended line-atomically, and its plot.

A line: {"round", "finished_at", "participants", "failures", "rejected", "bytes", "train",
"federated_eval", "evaluate_failures", "evaluate_rejected", "server_eval", "ticket"}, plus
"round_trips" (message round trips by step) when counted and "secagg" under secure aggregation
(server/secagg_round.py), and round management's "closed" (how the train trip closed:
"goal", "deadline", "all", "timeout"), "wall_s" (seconds its message trips took) and "late"
(replies drained in this round for closed rounds' messages and discarded: a list of {"node",
"round" it was for, "stage"}); node ids are JSON object keys (strings). "ticket" is the content
id of the ticket the round trained. Lines from older versions lack "ticket" and the round
management keys: read them with .get.
- "failures"/"rejected" (train) and "evaluate_failures"/"evaluate_rejected": node -> reason;
  a node may be in both stages' maps. Lines from older versions lack the evaluate_* keys
  and federated_eval's "auc": read them with .get.
- "bytes": {"down", "up"} node -> payload bytes and their totals; "down" is every instruction
  of the round, train plus (under federated evaluation) evaluate.
- "federated_eval": null, or the example-weighted means {"loss", "accuracy", "auc"} of the
  nodes' evaluations; "auc" is over the nodes that could compute it (null if none could).
The checkpoint is the source of truth: a restarted run trims the log to the
checkpointed round and restores that round's line from the checkpoint if a crash lost it.
"""

import io
import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticket.atomic import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # both import torch (and flwr); `fleet-server status` reads logs without them
    from server.strategy import RoundRecord
    from ticket.train_config import EvalResult


class RunLogError(Exception):
    """The run log holds a line that is not a round record."""


def round_line(
    record: "RoundRecord", server_eval: "EvalResult | None", finished_at: datetime
) -> dict[str, Any]:
    """The JSON-able log line of one finished round."""
    line = {
        "round": record.server_round,
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "participants": sorted(record.accepted),
        "failures": _by_node(record.failures),
        "rejected": _by_node(record.rejected),
        "bytes": {
            "down": _by_node(record.bytes_down),
            "up": _by_node(record.bytes_up),
            "down_total": sum(record.bytes_down.values()),
            "up_total": sum(record.bytes_up.values()),
        },
        "train": {"loss": record.train_metrics.get("train-loss")},
        "federated_eval": (
            {key: record.evaluate_metrics.get(key) for key in ("loss", "accuracy", "auc")}
            if record.evaluate_metrics
            else None
        ),
        "evaluate_failures": _by_node(record.evaluate_failures),
        "evaluate_rejected": _by_node(record.evaluate_rejected),
        "server_eval": None if server_eval is None else server_eval.as_dict(),
    }
    if record.round_trips:  # message round trips by step, and their total
        line["round_trips"] = {
            **record.round_trips,
            "total": sum(record.round_trips.values()),
        }
    if record.secagg is not None:  # members, survivors, who dropped at which stage, abort
        line["secagg"] = record.secagg
    line["closed"] = record.closed
    line["wall_s"] = round(record.wall_s, 3)
    line["late"] = list(record.late)
    return line


class RunLog:
    """`rounds.jsonl`: append one line per round; fsync'd so a line survives a crash."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, line: Mapping[str, Any]) -> None:
        data = (json.dumps(dict(line), sort_keys=True, allow_nan=True) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write of the whole line to an O_APPEND file, then fsync: a crash leaves at most
        # a torn last line, which `reconcile` drops.
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def read(self) -> list[dict[str, Any]]:
        """Every complete line (a torn last line, with no newline, is left out)."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        lines: list[dict[str, Any]] = []
        for number, raw in enumerate(complete.splitlines(), start=1):
            try:
                line = json.loads(raw)
            except ValueError as error:
                raise RunLogError(f"{self.path}:{number}: not JSON: {error}") from error
            if not isinstance(line, dict) or not isinstance(line.get("round"), int):
                raise RunLogError(f"{self.path}:{number}: not a round record")
            lines.append(line)
        return lines

    def reconcile(self, last_round: int, last_line: Mapping[str, Any] | None) -> None:
        """Make the log hold exactly one line per round up to `last_round`, the checkpoint's.

        Lines of later rounds (from a run killed before their checkpoint) and a torn last line
        are dropped; `last_line` is appended when the crash came between checkpoint and log.
        """
        lines = self.read()
        kept = [line for line in lines if line["round"] <= last_round]
        if last_line is not None and not any(line["round"] == last_round for line in kept):
            kept.append(dict(last_line))
        text = "".join(json.dumps(line, sort_keys=True, allow_nan=True) + "\n" for line in kept)
        current = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        if text != current:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text)


def plot_run(jsonl_path: Path, png_path: Path, *, title: str = "") -> None:
    """Accuracy (and ROC-AUC) per round, and cumulative uplink bytes, from a run log."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    lines = sorted(RunLog(jsonl_path).read(), key=lambda line: int(line["round"]))
    rounds = [int(line["round"]) for line in lines]
    figure, (quality, uplink) = plt.subplots(1, 2, figsize=(11, 4.2))
    curves = {  # label -> (section, key, line style); federated accuracy often overlays server
        "server accuracy": ("server_eval", "accuracy", "-"),
        "server ROC-AUC": ("server_eval", "auc", "-"),
        "federated accuracy": ("federated_eval", "accuracy", "--"),
        "federated ROC-AUC": ("federated_eval", "auc", "--"),
    }
    for label, (section, key, style) in curves.items():
        points = [
            (r, float(line[section][key]))
            for r, line in zip(rounds, lines, strict=True)
            if isinstance(line.get(section), dict) and line[section].get(key) is not None
        ]
        if points:
            quality.plot(
                *zip(*points, strict=True), linestyle=style, marker="o", markersize=3, label=label
            )
    quality.set_xlabel("round")
    quality.set_ylabel("accuracy / ROC-AUC")
    quality.grid(True, alpha=0.3)
    if quality.get_legend_handles_labels()[0]:
        quality.legend()
    total, cumulative = 0, []
    for line in lines:
        total += int(line["bytes"]["up_total"])
        cumulative.append(total)
    uplink.plot(rounds, cumulative, marker="o", markersize=3)
    uplink.set_xlabel("round")
    uplink.set_ylabel("cumulative uplink bytes (all nodes)")
    uplink.grid(True, alpha=0.3)
    for axes in (quality, uplink):  # rounds are whole: no tick at round 1.5
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title or Path(jsonl_path).name)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(Path(png_path), buffer.getvalue())


def _by_node(values: Mapping[int, Any]) -> dict[str, Any]:
    return {str(node): values[node] for node in sorted(values)}
