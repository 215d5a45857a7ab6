"""Predictions on this device: the active ticket's network, holding the latest global model.

The network is rebuilt as the ClientApp builds it (ticket.bundle.load_ticket: the ticket's
model with its rewound weights W_k), then given the values of the last global model the server
sent (edge_daemon/model_store.py) through the ticket's PackLayout. Readings are encoded by the
ticket's own preprocessing (edge_daemon.local_data.readings_encoder), exactly as for training.
Nothing here sends anything anywhere.

The active ticket is the one the latest global model was packed over; before any model
arrived, the ticket installed last (state.json's ticket_ids) that is still cached.
"""

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_daemon.model_store import ModelHeader, ModelOfAnotherTicketError, load_model, read_header
from edge_daemon.paths import DaemonPaths
from edge_daemon.readings import CsvLimits, IngestError, Reading, RowSchema, parse_csv
from edge_daemon.state import load_state
from edge_daemon.ticket_cache import TicketCache, TicketNotCachedError

if TYPE_CHECKING:
    from torch import nn

    from ticket.bundle import Ticket
    from ticket.data.heart_encoding import HeartPreprocessor

UNTRAINED = "untrained: no global model received yet; predicting with the ticket's own W_k"
FORMATS = ("csv", "jsonl")


class NoActiveTicketError(TicketNotCachedError):
    """No ticket is installed on this device, so there is no network to predict with."""


class PredictError(Exception):
    """The active ticket cannot predict on this device's readings (message says why)."""


@dataclass(frozen=True)
class ActiveTicket:
    ticket_id: str
    why: str  # how it was chosen, for the owner


def active_ticket(paths: DaemonPaths, cache: TicketCache) -> ActiveTicket:
    """The ticket `predict` and `schema` use; no torch is loaded to find it."""
    try:
        header = read_header(paths.model_file)
    except FileNotFoundError:
        header = None
    if header is not None and cache.has(header.ticket_id):
        return ActiveTicket(header.ticket_id, "the ticket of the latest global model")
    installed = [t for t in load_state(paths.state_file).ticket_ids if cache.has(t)]
    cached = cache.ids()
    if installed or len(cached) == 1:
        chosen = installed[-1] if installed else cached[0]
        return ActiveTicket(chosen, "the ticket installed last (no global model received yet)")
    if cached:
        raise NoActiveTicketError(
            f"{len(cached)} tickets are cached in {cache.tickets_dir} but none is recorded as "
            "installed and no global model was received: cannot tell which one is active"
        )
    raise NoActiveTicketError(
        f"no ticket is installed on this device ({cache.tickets_dir} is empty): add one with "
        "`edge-daemon tickets add`, or wait for the fleet to deploy one"
    )


# eq=False: holds a torch module.
@dataclass(frozen=True, eq=False)
class Predictor:
    ticket: "Ticket"
    model: "nn.Module"
    encoder: "HeartPreprocessor"
    header: ModelHeader | None  # the stored global model loaded; None: the ticket's W_k
    note: str | None  # printed beside the predictions, e.g. UNTRAINED


def load_predictor(paths: DaemonPaths, cache: TicketCache, schema: str) -> Predictor:
    """The active ticket's network with the latest global model of that ticket loaded."""
    from edge_daemon.local_data import LocalDataError, readings_encoder
    from ticket.bundle import load_ticket
    from ticket.errors import TicketError
    from ticket.packing import PackLayout
    from ticket.train import load_weights

    active = active_ticket(paths, cache)
    file = cache.path(active.ticket_id)  # verified against the fleet key again
    try:
        ticket, model = load_ticket(
            file, trusted_keys=[cache.fleet_key_path.read_bytes()], allow_unsigned=False
        )
    except TicketError as error:
        raise PredictError(f"{file}: the ticket's network cannot be built: {error}") from None
    try:
        encoder = readings_encoder(schema, ticket.manifest.data.preprocessing)
    except LocalDataError as error:
        raise PredictError(f"ticket {active.ticket_id[:12]}: {error}") from None
    layout = PackLayout.from_ticket(ticket)
    header, note = None, None
    try:
        header, values = load_model(
            paths.model_file, ticket_id=ticket.content_id, count=layout.size
        )
    except FileNotFoundError:
        note = UNTRAINED
    except ModelOfAnotherTicketError as error:
        note = f"untrained: {error}; predicting with the ticket's own W_k"
    else:
        load_weights(model, layout.unpack_torch(values))
    return Predictor(ticket, model, encoder, header, note)


@dataclass(frozen=True)
class Prediction:
    row: int  # 0-based, in input order
    label: int  # the predicted class index
    probability: float  # of that class
    probabilities: tuple[float, ...]  # of every class


def predict(predictor: Predictor, rows: Sequence[Reading]) -> list[Prediction]:
    """The class and its softmax probability for each reading."""
    import torch

    from ticket.train import logits_of

    if not rows:
        return []
    features = torch.from_numpy(predictor.encoder.transform(rows))  # float32 [N, F]
    probabilities = torch.softmax(logits_of(predictor.model, features), dim=1)  # [N, C]
    best = probabilities.argmax(dim=1)
    return [
        Prediction(i, int(best[i]), float(probabilities[i, best[i]]), tuple(map(float, row)))
        for i, row in enumerate(probabilities.tolist())
    ]


def to_json(predictor: Predictor, predictions: Sequence[Prediction]) -> dict[str, Any]:
    """`predict --json`'s document (and the local endpoint's response), less its `source`."""
    header = predictor.header
    model = None
    if header is not None:
        model = {
            "run_id": header.run_id,
            "server_round": header.server_round,
            "received_at": header.received_at.isoformat(),
        }
    return {
        "ticket_id": predictor.ticket.content_id,
        "model": model,
        "note": predictor.note,
        "predictions": [
            {
                "row": p.row,
                "class": p.label,
                "probability": p.probability,
                "probabilities": list(p.probabilities),
            }
            for p in predictions
        ],
    }


def read_rows(
    data: bytes, source: str, schema: RowSchema, *, fmt: str, limits: CsvLimits
) -> list[Reading]:
    """Readings to predict, as CSV (the ingest format) or JSON lines; the label is optional."""
    if fmt == "csv":
        return parse_csv(data, source, schema, limits=limits, label_optional=True)[0]
    return _parse_jsonl(data, source, schema, limits)


def _parse_jsonl(data: bytes, source: str, schema: RowSchema, limits: CsvLimits) -> list[Reading]:
    """One JSON object per line, column -> a number, a string, or null (not recorded)."""
    if len(data) > limits.max_bytes:
        raise IngestError(source, f"larger than the limit of {limits.max_bytes} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise IngestError(source, "not UTF-8 text", line=line) from None
    readings: list[Reading] = []
    for line, record in enumerate(io.StringIO(text, newline=None), start=1):
        if not record.strip():
            continue
        row = len(readings)
        if len(record) > limits.max_record_chars:
            rule = f"a record longer than {limits.max_record_chars} characters"
            raise IngestError(source, rule, line=line, row=row)
        if row >= limits.max_rows:
            rule = f"more than the limit of {limits.max_rows} rows (data.max_csv_rows)"
            raise IngestError(source, rule, line=line, row=row)
        try:
            item = json.loads(record)
        except ValueError:
            raise IngestError(source, "not a JSON object", line=line, row=row) from None
        if not isinstance(item, dict):
            raise IngestError(source, "not a JSON object", line=line, row=row)
        reading: Reading = {}
        for name in schema.columns:
            if name not in item and name != schema.label:
                raise IngestError(source, "missing", line=line, column=name, row=row)
            raw = item.get(name)
            if isinstance(raw, bool) or not (raw is None or isinstance(raw, str | int | float)):
                rule = "expected a number, a string or null"
                raise IngestError(source, rule, line=line, column=name, row=row)
            try:
                reading[name] = schema.parse_cell(name, "" if raw is None else str(raw))
            except ValueError as error:
                raise IngestError(source, str(error), line=line, column=name, row=row) from None
        readings.append(reading)
    return readings


def input_format(path: Path | None, fmt: str | None) -> str:
    """`--format`, else the file's suffix (.jsonl, .ndjson: JSON lines), else CSV."""
    if fmt is not None:
        return fmt
    return "jsonl" if path is not None and path.suffix in (".jsonl", ".ndjson") else "csv"
