"""Per-round checkpoints of a training run: the global packed vector after each round.

One tensor file per finished round, `checkpoints/round-000003.ckpt` in the run directory, written
atomically after the round's aggregation and evaluation and before the next round starts. Each
records the ticket id and the run's settings, so a restart resumes only the run it belongs to.
"""

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ticket.tensorfile import TensorFileError, canonical_json, read_tensor_file, write_tensor_file

CHECKPOINT_FORMAT = "ticketfleet.server-checkpoint.v1"
VECTOR_KEY = "packed"
_NAME = re.compile(r"round-(\d{6})\.ckpt")
_META_KEYS = frozenset({"format", "round", "ticket_id", "settings", "fingerprint", "record"})


class CheckpointError(Exception):
    """A checkpoint is damaged, or belongs to another ticket or other settings."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    server_round: int  # the last finished round
    vector: npt.NDArray[np.float32]  # [n] the global packed vector after that round
    record: dict[str, Any]  # that round's run-log line (restores a line lost to a crash)


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of `settings`."""
    return hashlib.sha256(canonical_json(dict(settings))).hexdigest()


class RunCheckpoint:
    """The checkpoints of one run (one ticket, one set of settings) under `directory`."""

    def __init__(
        self, directory: Path, *, ticket_id: str, size: int, settings: Mapping[str, Any]
    ) -> None:
        self.directory = Path(directory)
        self.ticket_id = ticket_id
        self.size = size  # n, the packed vector's length
        self.settings = dict(settings)  # JSON-able: what must not change across a resume
        self.fingerprint = settings_fingerprint(self.settings)

    def path(self, server_round: int) -> Path:
        return self.directory / f"round-{server_round:06d}.ckpt"

    def save(
        self, server_round: int, vector: npt.NDArray[np.float32], record: Mapping[str, Any]
    ) -> Path:
        """Write round `server_round`'s checkpoint atomically; returns its path."""
        if vector.shape != (self.size,):
            raise CheckpointError(f"vector has shape {list(vector.shape)}, expected [{self.size}]")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(server_round)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "round": server_round,
            "ticket_id": self.ticket_id,
            "settings": self.settings,
            "fingerprint": self.fingerprint,
            "record": dict(record),
        }
        write_tensor_file(path, {VECTOR_KEY: vector.astype(np.float32, copy=False)}, meta)
        return path

    def latest(self) -> Checkpoint | None:
        """The last finished round's checkpoint, or None for a fresh run.

        Raises CheckpointError (naming the file and what is wrong) rather than fall back to an
        older checkpoint: a damaged or foreign file needs an operator, not a guess.
        """
        rounds = sorted(
            int(match.group(1))
            for path in (self.directory.iterdir() if self.directory.is_dir() else ())
            if (match := _NAME.fullmatch(path.name))
        )
        if not rounds:
            return None
        return self.load(rounds[-1])

    def load(self, server_round: int) -> Checkpoint:
        path = self.path(server_round)
        try:
            tensors, meta = read_tensor_file(path)
        except (OSError, TensorFileError) as error:
            raise CheckpointError(f"{path}: unreadable checkpoint: {error}") from error
        self._check_meta(path, meta, server_round)
        vector = tensors.get(VECTOR_KEY)
        if set(tensors) != {VECTOR_KEY} or vector is None:
            raise CheckpointError(f"{path}: expected exactly one tensor {VECTOR_KEY!r}")
        if vector.dtype != np.float32 or vector.shape != (self.size,):
            raise CheckpointError(
                f"{path}: {VECTOR_KEY} is {vector.dtype} {list(vector.shape)}, "
                f"this ticket needs float32 [{self.size}]"
            )
        if not np.isfinite(vector).all():
            raise CheckpointError(f"{path}: {VECTOR_KEY} holds NaN or Inf")
        return Checkpoint(server_round, vector, meta["record"])

    def _check_meta(self, path: Path, meta: dict[str, Any], server_round: int) -> None:
        if set(meta) != _META_KEYS or meta["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        if meta["round"] != server_round:
            raise CheckpointError(
                f"{path}: meta.round is {meta['round']!r}, the file name says {server_round}"
            )
        if meta["ticket_id"] != self.ticket_id:
            raise CheckpointError(
                f"{path}: meta.ticket_id is {meta['ticket_id']}, but this run trains "
                f"{self.ticket_id}; use another run directory"
            )
        if meta["fingerprint"] != self.fingerprint or meta["settings"] != self.settings:
            changed = _changed_keys(meta["settings"], self.settings)
            raise CheckpointError(
                f"{path}: written with other settings (changed: {', '.join(changed) or '?'}); "
                "use another run directory or the original settings"
            )
        if not isinstance(meta["record"], dict):
            raise CheckpointError(f"{path}: meta.record must be an object")


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON objects."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix or "settings"] if old != new else []
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}.{key}" if prefix else str(key)
        changed += _changed_keys(old.get(key), new.get(key), dotted)
    return changed
