"""`edge-daemon predict`: class and probability per reading, computed on this device only.

    edge-daemon predict -c daemon.yaml [FILE|-] [--format csv|jsonl] [--stored] [--json]

Readings come from FILE (`-`: standard input), in the CSV format `ingest` reads or as JSON
lines, the label column optional; or, with `--stored`, the unlabelled readings in the store.
Nothing is written: not the store, not the daemon's state, and nothing leaves the device.
Each prediction says which model made it: `personal` (this device's fine-tuned copy of the
global model, when it scores better here: edge_daemon/personalise.py), `global`, or `untrained`
(no global model yet: the ticket's own weights). The network runs in numpy
(edge_daemon/predict.py), loaded inside `predict_command` only.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

from edge_daemon.config import load_config
from edge_daemon.exit_codes import HELP, ExitCode
from edge_daemon.paths import DaemonPaths
from edge_daemon.readings import SCHEMAS, Reading, ReadingsStore, StoreError, read_bounded
from edge_daemon.ticket_cache import TicketCache


def register(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", config: argparse.ArgumentParser
) -> None:
    predict = commands.add_parser(
        "predict",
        parents=[config],
        help="predict the class of readings with the latest global model, on this device",
        description="Prints row,class,probability,model per reading (row counts from 0). Uses "
        "the active ticket and the latest global model the server sent, or this device's "
        "personal model of it when that scores better on the device's own held-out readings "
        "(model: global or personal); before one arrived, the ticket's own weights (model: "
        "untrained, said on stderr too). Nothing is stored or sent.",
    )
    predict.add_argument(
        "file", nargs="?", type=Path, metavar="FILE", help="readings to predict; - for stdin"
    )
    predict.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        default=None,
        help="FILE's format (default: csv, or jsonl for a .jsonl/.ndjson file)",
    )
    predict.add_argument(
        "--stored", action="store_true", help="the store's unlabelled readings instead of FILE"
    )
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.set_defaults(handler=predict_command, name="predict")


def predict_command(args: argparse.Namespace) -> int:
    from edge_daemon import predict as core

    if args.stored == (args.file is not None):
        print("edge-daemon predict: error: give FILE (or -) or --stored, not both", file=sys.stderr)
        return ExitCode.USAGE
    config = load_config(args.config)
    paths = DaemonPaths(config.state_dir)
    schema = SCHEMAS[config.data.schema]()
    # The rows first: bad input is reported before a ticket or model is loaded.
    if args.stored:
        rows = _stored_rows(
            paths, config.data.schema, config.data.retention_rows, config.data.retention_days
        )
        source = "the store"
    else:
        fmt = core.input_format(None if str(args.file) == "-" else args.file, args.format)
        if str(args.file) == "-":
            data, name = sys.stdin.buffer.read(config.data.csv_limits.max_bytes + 1), "<stdin>"
        else:
            data, name = read_bounded(args.file, config.data.csv_limits), args.file.name
        rows = core.read_rows(data, name, schema, fmt=fmt, limits=config.data.csv_limits)
        source = name
    cache = TicketCache(paths.tickets_dir, config.fleet_key)
    try:
        predictor = core.load_predictor(
            paths, cache, config.data.schema, use_personal=config.personalise.enabled
        )
    except core.PredictError as error:
        print(f"edge-daemon predict: error: {error}", file=sys.stderr)
        print(f"  hint: {HELP[ExitCode.BAD_INPUT]}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    predictions = core.predict(predictor, rows)
    print(f"edge-daemon predict: model: {core.answered_by(predictor)}", file=sys.stderr)
    if predictor.note is not None:
        print(f"edge-daemon predict: note: {predictor.note}", file=sys.stderr)
    if not predictions:
        print(f"edge-daemon predict: note: no readings to predict ({source})", file=sys.stderr)
    if args.json:
        document = {**core.to_json(predictor, predictions), "source": source}
        print(json.dumps(document, indent=2))
        return ExitCode.OK
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["row", "class", "probability", "model"])
    for p in predictions:
        writer.writerow([p.row, p.label, f"{p.probability:.6f}", predictor.kind])
    return ExitCode.OK


def _stored_rows(
    paths: DaemonPaths, schema: str, retention_rows: int | None, retention_days: float | None
) -> list[Reading]:
    if not paths.readings_db.exists():  # never create a store to find it empty
        raise StoreError(f"{paths.readings_db}: no readings stored yet (edge-daemon ingest)")
    store = ReadingsStore(
        paths.readings_db,
        schema=schema,
        retention_rows=retention_rows,
        retention_days=retention_days,
    )
    with store:
        if retention_rows is not None or retention_days is not None:
            store.apply_retention()  # an expired reading is not predicted on either
        return store.unlabelled_rows()
