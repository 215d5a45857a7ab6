"""Predictions on this device: the active ticket's network, holding the latest global model
or this device's personal model of it.

The network's parameters are the ticket's own (its rewound weights W_k), replaced by the values
of the last global model the server sent (edge_daemon/model_store.py) through the ticket's
PackLayout; or, when personal.json says the device's fine-tuned copy of that very global model
scores better on the device's held-out readings (edge_daemon/personalise.py), by that personal
model's values. Readings are encoded by the ticket's own preprocessing
(edge_daemon.local_data.readings_encoder), exactly as for training. The forward pass is numpy
(ticket/numpy_mlp.py): neither `predict` nor the local endpoint's worker loads torch. Nothing
here sends anything anywhere.

The active ticket is the one the latest global model was packed over; before any model
arrived, the ticket installed last (state.json's ticket_ids) that is still cached.
"""

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_daemon.model_store import (
    ModelHeader,
    ModelOfAnotherTicketError,
    ModelStoreError,
    load_model,
    read_header,
)
from edge_daemon.paths import DaemonPaths
from edge_daemon.personal_record import PersonalRecord, PersonalRecordError, load_record
from edge_daemon.readings import CsvLimits, IngestError, Reading, RowSchema, parse_csv
from edge_daemon.state import load_state
from edge_daemon.ticket_cache import TicketCache, TicketNotCachedError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ticket.bundle import Ticket
    from ticket.data.heart_encoding import HeartPreprocessor
    from ticket.packing import PackLayout

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


GLOBAL, PERSONAL, UNTRAINED_KIND = "global", "personal", "untrained"  # which model predicted


@dataclass(frozen=True, eq=False)  # eq=False: holds arrays
class Predictor:
    ticket: "Ticket"
    params: Mapping[str, "npt.NDArray[np.float32]"]  # the network's, by torch's names
    encoder: "HeartPreprocessor"
    header: ModelHeader | None  # the stored global model loaded; None: the ticket's W_k
    note: str | None  # printed beside the predictions, e.g. UNTRAINED
    kind: str = GLOBAL  # GLOBAL, PERSONAL or UNTRAINED_KIND
    personal: PersonalRecord | None = None  # the record of the personal model in use


def load_predictor(
    paths: DaemonPaths, cache: TicketCache, schema: str, *, use_personal: bool = True
) -> Predictor:
    """The active ticket's network with the model `predict` should use loaded into it;
    `use_personal` False (daemon.yaml personalise.enabled: false): never the personal model."""
    from edge_daemon.local_data import LocalDataError, readings_encoder
    from ticket import numpy_mlp
    from ticket.bundle import read_ticket
    from ticket.errors import TicketError
    from ticket.packing import PackLayout

    active = active_ticket(paths, cache)
    file = cache.path(active.ticket_id)  # verified against the fleet key again
    try:
        ticket = read_ticket(file, trusted_keys=[cache.fleet_key_path.read_bytes()])
    except TicketError as error:
        raise PredictError(f"{file}: the ticket cannot be read: {error}") from None
    if not numpy_mlp.is_mlp(ticket.weights):
        raise PredictError(
            f"ticket {active.ticket_id[:12]}: its {ticket.manifest.model.name} network is not a "
            "plain MLP, which is all this device predicts with"
        )
    try:
        encoder = readings_encoder(schema, ticket.manifest.data.preprocessing)
    except LocalDataError as error:
        raise PredictError(f"ticket {active.ticket_id[:12]}: {error}") from None
    layout = PackLayout.from_ticket(ticket)
    try:
        header, values = load_model(
            paths.model_file, ticket_id=ticket.content_id, count=layout.size
        )
    except FileNotFoundError:
        return Predictor(ticket, dict(ticket.weights), encoder, None, UNTRAINED, UNTRAINED_KIND)
    except ModelOfAnotherTicketError as error:
        untrained = f"untrained: {error}; predicting with the ticket's own W_k"
        return Predictor(ticket, dict(ticket.weights), encoder, None, untrained, UNTRAINED_KIND)
    personal, note = _personal(paths, layout, header) if use_personal else (None, None)
    if personal is not None:
        record, values = personal
        return Predictor(ticket, layout.unpack(values), encoder, header, None, PERSONAL, record)
    return Predictor(ticket, layout.unpack(values), encoder, header, note, GLOBAL)


def _personal(
    paths: DaemonPaths, layout: "PackLayout", header: ModelHeader
) -> tuple[tuple[PersonalRecord, "npt.NDArray[np.float32]"] | None, str | None]:
    """The personal model, when personal.json says it beats `header`'s global model; else
    None and, when something is wrong with it, a note saying why the global model is used."""
    try:
        record = load_record(paths.personal_record_file)
    except PersonalRecordError as error:
        return None, f"{error}; predicting with the global model"
    if record is None or not record.used or not record.base.is_base_of(header):
        return None, None  # none, not better, or made from another (older) global model
    try:
        stored, values = load_model(
            paths.personal_model_file, ticket_id=header.ticket_id, count=layout.size
        )
    except (FileNotFoundError, ModelStoreError) as error:
        reason = "it is missing" if isinstance(error, FileNotFoundError) else str(error)
        return None, f"personal model not used ({reason}); predicting with the global model"
    if stored.sha256 != record.personal_sha256:
        note = "the personal model does not match personal.json; predicting with the global model"
        return None, note
    return (record, values), None


@dataclass(frozen=True)
class Prediction:
    row: int  # 0-based, in input order
    label: int  # the predicted class index
    probability: float  # of that class
    probabilities: tuple[float, ...]  # of every class


def predict(predictor: Predictor, rows: Sequence[Reading]) -> list[Prediction]:
    """The class and its softmax probability for each reading."""
    from ticket import numpy_mlp

    if not rows:
        return []
    features = predictor.encoder.transform(rows)  # float32 [N, F]
    probabilities = numpy_mlp.probabilities(predictor.params, features)  # [N, C]
    best = probabilities.argmax(axis=1)  # [N]
    return [
        Prediction(i, int(best[i]), float(probabilities[i, best[i]]), tuple(map(float, row)))
        for i, row in enumerate(probabilities.tolist())
    ]


def answered_by(predictor: Predictor) -> str:
    """One line naming the model that predicts: personal or global, and which global model."""
    header = predictor.header
    if header is None:
        return "untrained: the ticket's own weights W_k (no global model of it received yet)"
    final = "final " if header.final else ""
    which = f"{final}global model of run {header.run_id} (after round {header.after_round})"
    if predictor.kind == PERSONAL:
        return f"personal: fine-tuned on this device from the {which}"
    return f"global: the {which}"


def to_json(predictor: Predictor, predictions: Sequence[Prediction]) -> dict[str, Any]:
    """`predict --json`'s document (and the local endpoint's response), less its `source`."""
    header = predictor.header
    model = None
    if header is not None:
        model = {
            "run_id": header.run_id,
            "server_round": header.server_round,
            "final": header.final,
            "after_round": header.after_round,
            "received_at": header.received_at.isoformat(),
        }
    record = predictor.personal
    personal = None
    if record is not None:
        personal = {
            "made_at": record.at.isoformat(),
            "layers": record.layers,
            "held_out_rows": record.held_out_rows,
            "global_accuracy": record.global_accuracy,
            "personal_accuracy": record.personal_accuracy,
        }
    return {
        "ticket_id": predictor.ticket.content_id,
        "model_kind": predictor.kind,
        "answered_by": answered_by(predictor),
        "model": model,
        "personal": personal,
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
