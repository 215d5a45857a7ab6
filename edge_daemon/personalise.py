"""Personalisation: fine-tune the latest global model on this device's own labelled readings.

The global model the server sent (edge_daemon/model_store.py) is unpacked over the active
ticket's mask (ticket/packing.py) and trained further, with that same mask, on the store's
labelled training rows: the output layer only (`personalise.layers: last`, the default) or
every surviving weight (`all`). Both models are then scored on the store's held-out rows (every
`StoreSpec.test_every`-th labelled reading, the rows the ClientApp evaluates on); the personal
model is kept, and used by `predict`, only when its held-out accuracy is higher (a tie keeps the
global model). Either way personal.json (edge_daemon/personal_record.py) records the outcome.

Nothing here is ever sent anywhere: the personal model and its record stay in the state
directory, mode 0600; no message, metric or reply carries them (ticket/wire.py has no key for
them), and the next global model the device trains on is the server's, not this one.

Numpy only (ticket/numpy_mlp.py): it never loads torch. `run_device` is what both callers use:
`edge-daemon personalise` on demand, and the daemon's loop through a short-lived child process
(`python -m edge_daemon.personalise --config daemon.yaml`, edge_daemon/personal_job.py).
"""

import argparse
import os
import sqlite3
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge_daemon.config import DaemonConfig, PersonaliseConfig
from edge_daemon.model_store import ModelHeader, load_model, read_header, save_model
from edge_daemon.paths import DaemonPaths
from edge_daemon.personal_record import BaseModel, PersonalRecord, save_record
from ticket.atomic import locked

if TYPE_CHECKING:
    from ticket.packing import PackLayout
    from ticket.train_config import EvalResult

Array = npt.NDArray[np.float32]


class PersonaliseError(Exception):
    """This device cannot personalise now (no global model, a ticket of another kind, ...)."""


@dataclass(frozen=True, eq=False)  # eq=False: holds arrays
class Rows:
    """The device's labelled readings, encoded: x float32 [N, F], y int64 [N]."""

    x_train: Array
    y_train: npt.NDArray[np.int64]
    x_held_out: Array
    y_held_out: npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)  # eq=False: holds arrays
class Outcome:
    personal: Mapping[str, Array] | None  # the fine-tuned parameters, kept only when `used`;
    #                                         None: none trained (too few rows)
    global_eval: "EvalResult | None"  # on the held-out rows; None: too few to score on
    personal_eval: "EvalResult | None"
    used: bool
    why: str


def fine_tune(
    params: Mapping[str, Array],
    masks: Mapping[str, npt.NDArray[np.bool_]],
    rows: Rows,
    settings: PersonaliseConfig,
    *,
    seed: int,
) -> Outcome:
    """Fine-tune `params` (a global model, zero where `masks` prune) and judge it against them."""
    from ticket import numpy_mlp
    from ticket.train_config import TrainConfig

    train, held_out = len(rows.y_train), len(rows.y_held_out)
    too_few = []
    if train < settings.min_train_rows:
        too_few.append(
            f"{train} labelled training rows (personalise.min_train_rows: "
            f"{settings.min_train_rows})"
        )
    if held_out < settings.min_held_out_rows:
        too_few.append(
            f"{held_out} held-out rows (personalise.min_held_out_rows: "
            f"{settings.min_held_out_rows})"
        )
    if too_few:
        # The global model is still scored where there is anything to score it on: `status`
        # shows how it does on this device's data.
        scored = numpy_mlp.evaluate(params, rows.x_held_out, rows.y_held_out) if held_out else None
        why = f"not personalised: only {' and '.join(too_few)}; predict uses the global model"
        return Outcome(None, scored, None, False, why)
    global_eval = numpy_mlp.evaluate(params, rows.x_held_out, rows.y_held_out)
    trainable = set(numpy_mlp.last_layer(params)) if settings.layers == "last" else None
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr)
    personal, _ = numpy_mlp.train_masked(
        params, masks, rows.x_train, rows.y_train, config, seed=seed, trainable=trainable
    )
    personal_eval = numpy_mlp.evaluate(personal, rows.x_held_out, rows.y_held_out)
    scores = (
        f"personal {personal_eval.accuracy:.3f} against global {global_eval.accuracy:.3f} "
        f"accuracy on {held_out} held-out rows"
    )
    if personal_eval.accuracy > global_eval.accuracy:
        return Outcome(personal, global_eval, personal_eval, True, f"personal model used: {scores}")
    why = f"global model kept: {scores} (the personal model must score higher)"
    return Outcome(personal, global_eval, personal_eval, False, why)


def run_device(config: DaemonConfig, *, now: datetime | None = None) -> PersonalRecord:
    """Personalise the stored global model on the store's readings; record and return the outcome.

    PersonaliseError: no global model yet, or its ticket's network is not an MLP. Ticket cache
    errors (not cached, refused) and damaged stores propagate with their own messages.
    """
    paths = DaemonPaths(config.state_dir)
    try:
        header = read_header(paths.model_file)
    except FileNotFoundError:
        raise PersonaliseError(
            "no global model received yet: nothing to personalise (the device gets one when it "
            "first takes part in a round)"
        ) from None
    # The header of the values actually loaded: a round may replace the file meanwhile.
    header, layout, params, preprocessing = _global_model(config, paths, header)
    rows = _device_rows(config, paths, preprocessing)
    outcome = fine_tune(
        params, layout.masks, rows, config.personalise, seed=int(header.sha256[:8], 16)
    )
    record = PersonalRecord(
        base=BaseModel.of(header),
        layers=config.personalise.layers,
        epochs=config.personalise.epochs,
        train_rows=len(rows.y_train),
        held_out_rows=len(rows.y_held_out),
        global_accuracy=None if outcome.global_eval is None else outcome.global_eval.accuracy,
        global_loss=_loss(outcome.global_eval),
        personal_accuracy=None if outcome.personal_eval is None else outcome.personal_eval.accuracy,
        personal_loss=_loss(outcome.personal_eval),
        used=outcome.used,
        why=outcome.why,
        personal_sha256=None,
        at=now or datetime.now(UTC),
    )
    return _keep(paths, header, layout, outcome, record)


def _global_model(
    config: DaemonConfig, paths: DaemonPaths, header: ModelHeader
) -> tuple[ModelHeader, "PackLayout", dict[str, Array], Mapping[str, Any] | None]:
    """The stored global model's header, the ticket's layout (its mask), the model as parameters
    of the ticket's network, and the ticket's preprocessing; the ticket is verified against the
    fleet key."""
    from edge_daemon.ticket_cache import TicketCache
    from ticket import numpy_mlp
    from ticket.bundle import read_ticket
    from ticket.packing import PackLayout

    cache = TicketCache(paths.tickets_dir, config.fleet_key)
    file = cache.path(header.ticket_id)  # TicketNotCachedError when it is gone
    ticket = read_ticket(file, trusted_keys=[cache.fleet_key_path.read_bytes()])
    if not numpy_mlp.is_mlp(ticket.weights):
        raise PersonaliseError(
            f"ticket {ticket.content_id[:12]}: its {ticket.manifest.model.name} network is not "
            "a plain MLP, which is all personalisation trains"
        )
    layout = PackLayout.from_ticket(ticket)
    try:
        loaded, values = load_model(
            paths.model_file, ticket_id=ticket.content_id, count=layout.size
        )
    except FileNotFoundError:
        raise PersonaliseError(f"{paths.model_file}: gone while being read") from None
    return loaded, layout, layout.unpack(values), ticket.manifest.data.preprocessing


def _device_rows(
    config: DaemonConfig, paths: DaemonPaths, preprocessing: Mapping[str, Any] | None
) -> Rows:
    """The store's labelled readings split as the ClientApp splits them (local_data.py); none
    (recorded as too few) when nothing labelled is stored."""
    from edge_daemon.local_data import LocalDataError, StoreSpec, load_store_data
    from edge_daemon.readings import ReadingsStore, StoreError

    empty = Rows(
        np.zeros((0, 0), dtype=np.float32),
        np.zeros(0, dtype=np.int64),
        np.zeros((0, 0), dtype=np.float32),
        np.zeros(0, dtype=np.int64),
    )
    if not paths.readings_db.exists():  # never create a store to find it empty
        return empty
    spec = StoreSpec(
        paths.readings_db,
        schema=config.data.schema,
        retention_rows=config.data.retention_rows,
        retention_days=config.data.retention_days,
    )
    try:
        data = load_store_data(spec, preprocessing)
    except LocalDataError as error:
        try:
            with ReadingsStore(paths.readings_db, schema=config.data.schema) as store:
                is_empty = store.count() == 0  # retention expired them all, or only unlabelled
        except (StoreError, sqlite3.Error):
            is_empty = False  # damaged: the error below says so
        if is_empty:
            return empty
        # A damaged store is bad input the owner can mend (exit 3, like ingest's), not a
        # reason this device cannot personalise now.
        raise StoreError(f"{paths.readings_db}: cannot be used ({error})") from None
    return Rows(data.x_train, data.y_train, data.x_test, data.y_test)


def _keep(
    paths: DaemonPaths,
    header: ModelHeader,
    layout: "PackLayout",
    outcome: Outcome,
    record: PersonalRecord,
) -> PersonalRecord:
    """Write the personal model (when used) before its record, and drop a stale one after.

    `predict` uses the personal model only when the record names its values' SHA-256 and the
    current global model as its base, so a kill between the two writes leaves a consistent
    choice: the old record (whose base or digest no longer matches) or the new one.
    """
    with locked(paths.personal_record_file):  # one writer at a time per device
        if outcome.used and outcome.personal is not None:
            values = layout.pack(outcome.personal)  # float32 [k]: the same mask as the global
            save_model(
                paths.personal_model_file,
                values,
                ticket_id=header.ticket_id,
                run_id=header.run_id,
                server_round=header.server_round,
                received_at=record.at,
                final=header.final,
                replace_later=True,
            )
            digest = read_header(paths.personal_model_file).sha256
            record = replace(record, personal_sha256=digest)
        save_record(paths.personal_record_file, record)
        if not outcome.used:
            paths.personal_model_file.unlink(missing_ok=True)
    return record


def _loss(result: "EvalResult | None") -> float | None:
    """The mean cross-entropy; None when not scored, or not finite (JSON has no inf)."""
    return None if result is None or not np.isfinite(result.loss) else float(result.loss)


def describe(record: PersonalRecord) -> str:
    """One line for the owner (and the daemon's log): which model predict uses, and why."""
    base = record.base
    return (
        f"{base.describe()} (ticket {base.ticket_id[:12]}), {record.train_rows} training and "
        f"{record.held_out_rows} held-out rows, layers {record.layers}: {record.why}"
    )


def main(argv: list[str] | None = None) -> int:
    """The daemon's child process: personalise once, print the outcome, exit (exit_codes.py)."""
    from edge_daemon.config import ConfigError, load_config
    from edge_daemon.exit_codes import ExitCode, exit_code_for
    from edge_daemon.readings import StoreError
    from edge_daemon.state import StateError
    from edge_daemon.ticket_cache import TicketCacheError
    from ticket.errors import TicketError

    parser = argparse.ArgumentParser(prog="edge_daemon.personalise")
    parser.add_argument("--config", required=True, help="daemon.yaml")
    parser.add_argument("--nice", type=int, default=0, help="lower this process's priority")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # training yields the CPU to whatever the device is there for
    expected = (ConfigError, PersonaliseError, TicketCacheError, TicketError, StateError)
    try:
        record = run_device(load_config(args.config))
    except (*expected, StoreError, OSError) as error:
        print(f"personalise: {error}", file=sys.stderr)
        return int(exit_code_for(error))
    print(f"personalise: {describe(record)}")
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
