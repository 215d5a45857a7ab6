"""What a fleet search keeps between levels, and its file: a killed search resumes from it.

One state file per finished level, `level-NNN.state` (a ticket.tensorfile: the next level's
mask, W_k, and the bookkeeping as JSON meta), written atomically after the level's pruning
step. The level in progress resumes from its own round checkpoints (server/training_run.py),
so a restart repeats neither a finished level nor a finished round. Only aggregates are kept:
the mask, W_k and counts of rounds, bytes and participants, never a device's update.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ticket.errors import TicketError
from ticket.tensorfile import read_tensor_file, write_tensor_file

STATE_VERSION = 1
_MASK = "mask/"
_WEIGHT = "w_k/"
_NAME = re.compile(r"level-(\d{3,})\.state")


class SearchStateError(TicketError):
    """A search state file is damaged or belongs to another search."""


@dataclass(frozen=True, eq=False)
class SearchState:
    """The search after `level` finished levels: the mask the next level trains, and W_k."""

    level: int  # levels finished; the next one to run has this number
    mask: Mapping[str, np.ndarray]  # bool, full shapes: the mask of level `level`
    w_k: Mapping[str, np.ndarray]  # float32, every parameter: the rewind point
    settings: Mapping[str, Any]  # the search's settings: a resume must not change them
    rounds: int = 0  # federated rounds spent, over finished levels
    bytes_up: int = 0
    bytes_down: int = 0
    nodes: tuple[int, ...] = ()  # distinct node ids that had an update averaged in
    history: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)  # per finished level
    is_done: bool = False  # the mask is the ticket's: no level left to run


def state_path(directory: Path, level: int) -> Path:
    return directory / f"level-{level:03d}.state"


def save_state(directory: Path, state: SearchState) -> Path:
    """Write `state` as the file of its level (atomically); returns the path."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {
        **{_MASK + n: np.asarray(m, dtype=np.uint8) for n, m in state.mask.items()},
        **{_WEIGHT + n: np.asarray(w, dtype=np.float32) for n, w in state.w_k.items()},
    }
    meta = {
        "version": STATE_VERSION,
        "level": state.level,
        "settings": dict(state.settings),
        "rounds": state.rounds,
        "bytes_up": state.bytes_up,
        "bytes_down": state.bytes_down,
        "nodes": list(state.nodes),
        "history": [dict(line) for line in state.history],
        "is_done": state.is_done,
    }
    path = state_path(directory, state.level)
    write_tensor_file(path, tensors, meta)
    return path


def latest_state(directory: Path, settings: Mapping[str, Any]) -> SearchState | None:
    """The state of the last finished level in `directory`, or None when there is none.

    Raises SearchStateError when that file is damaged or was written with other settings.
    """
    levels = sorted(
        int(match.group(1))
        for path in (directory.iterdir() if directory.is_dir() else [])
        if (match := _NAME.fullmatch(path.name))
    )
    if not levels:
        return None
    path = state_path(directory, levels[-1])
    try:
        tensors, meta = read_tensor_file(path)
        state = _from_file(tensors, meta)
    except (TicketError, KeyError, TypeError, ValueError) as error:
        raise SearchStateError(f"{path}: not a usable search state: {error}") from None
    if state.level != levels[-1]:
        raise SearchStateError(f"{path}: holds level {state.level}")
    # A setting this version added is absent from a state an earlier version wrote: it is not
    # compared, so a search killed before an upgrade resumes after it.
    changed = sorted(k for k in state.settings if state.settings[k] != settings.get(k))
    if changed:
        raise SearchStateError(
            f"{path}: the search there ran with other settings ({', '.join(changed)}); "
            "use a new run directory"
        )
    return state


def _from_file(tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> SearchState:
    if meta["version"] != STATE_VERSION:
        raise SearchStateError(f"state version {meta['version']}, this reads {STATE_VERSION}")
    mask = {n[len(_MASK) :]: t.astype(np.bool_) for n, t in tensors.items() if n.startswith(_MASK)}
    w_k = {n[len(_WEIGHT) :]: t for n, t in tensors.items() if n.startswith(_WEIGHT)}
    return SearchState(
        level=int(meta["level"]),
        mask=mask,
        w_k=w_k,
        settings=dict(meta["settings"]),
        rounds=int(meta["rounds"]),
        bytes_up=int(meta["bytes_up"]),
        bytes_down=int(meta["bytes_down"]),
        nodes=tuple(int(n) for n in meta["nodes"]),
        history=tuple(dict(line) for line in meta["history"]),
        is_done=bool(meta["is_done"]),
    )
