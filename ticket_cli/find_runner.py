"""The resumable lottery-ticket search behind `ticket find`.

Every level's outcome is written atomically to the work directory as soon as it exists, and
every step first looks for its output there, so a search killed at any point resumes where it
stopped and never recomputes a finished level (open_lth's lottery runner does the same).
"""

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ticket.atomic import atomic_write_text
from ticket.data import Dataset, load_dataset
from ticket.errors import TicketError
from ticket.lottery import (
    SearchSpec,
    Weights,
    check_rewind_step,
    initial_weights,
    masked,
    train_level,
)
from ticket.masks import Mask, density, full_mask, layer_densities
from ticket.models import ModelArgumentError, build_model
from ticket.prune import (
    METHODS,
    PRUNERS,
    check_reachable,
    derive_seed,
    expected_levels,
    random_mask_like,
)
from ticket.tensorfile import read_tensor_file, write_tensor_file

SPEC_FILE = "search.json"


class WorkdirMismatchError(TicketError):
    """The work directory holds a search made with a different configuration."""


@dataclass(frozen=True)
class LevelRecord:
    level: int
    density: float
    layers: dict[str, float]
    ticket: dict[str, Any]
    controls: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "density": self.density,
            "layers": self.layers,
            "ticket": self.ticket,
            "controls": self.controls,
        }


@dataclass(frozen=True)
class SearchOutcome:
    spec: SearchSpec
    dataset: Dataset
    model_args: dict[str, Any]
    mask: Mask  # the last level's: the ticket's
    rewind: Weights
    levels: list[LevelRecord]
    masks: list[Mask]  # one per level, levels[i]'s at masks[i]; masks[-1] is `mask`


class SearchRunner:
    """Runs (or resumes) one search in `workdir`; `progress` shows tqdm bars on stderr."""

    def __init__(self, spec: SearchSpec, workdir: Path, *, progress: bool = True) -> None:
        self.spec = spec
        self.workdir = workdir
        self.progress = progress
        # Set by run() once the data and the rewind point are known.
        self._dataset: Dataset
        self._model_args: dict[str, Any]
        self._rewind: Weights

    def run(self) -> SearchOutcome:
        template, rates, levels_total = self._plan()
        self._claim_workdir()
        spec, dataset, model_args = self.spec, self._dataset, self._model_args
        with self._bar(levels_total, "levels", leave=True) as level_bar:
            trained, mask, record = self._dense_level(template)
            rewind = self._rewind = self._load_tensors("rewind.tensors")
            records, masks = [record], [mask]
            level_bar.update(1)
            level = 0
            while (
                fractions := METHODS[spec.method](mask, rates, spec.target_density, level)
            ) is not None:
                level += 1
                trained, mask, record = self._pruned_level(level, trained, mask, fractions)
                records.append(record)
                masks.append(mask)
                level_bar.set_postfix(
                    density=f"{record.density:.3f}", acc=f"{record.ticket['accuracy']:.4f}"
                )
                level_bar.update(1)
        return SearchOutcome(spec, dataset, model_args, mask, rewind, records, masks)

    def _plan(self) -> tuple[Mask, dict[str, float], int]:
        """Load the data and check every setting: (full mask, per-layer rates, level count).

        All of it runs before the work directory is claimed: a claimed directory records the
        settings, so a typo caught only later would leave one behind that refuses the
        corrected command.
        """
        spec = self.spec
        dataset = load_dataset(spec.data, sites=spec.sites)
        if spec.train_rows is not None:
            dataset = dataset.first_train_rows(spec.train_rows)
        self._dataset = dataset
        model_args = self._model_args = merged_model_args(dataset, spec.model_args)
        template = full_mask(build_model(spec.model, model_args, seed=0))
        rates = spec.rates.per_layer(list(template))
        sizes = {name: keep.numel() for name, keep in template.items()}
        check_reachable(spec.method, sizes, rates, spec.target_density)
        check_rewind_step(spec, dataset.x_train.shape[0])
        return template, rates, 1 + expected_levels(spec.method, sizes, rates, spec.target_density)

    # ------------------------------------------------------------------ levels

    def _dense_level(self, mask: Mask) -> tuple[Weights, Mask, LevelRecord]:
        dataset, model_args = self._dataset, self._model_args
        path = self.workdir / "level-000.tensors"
        if not path.exists():
            start = initial_weights(self.spec, model_args)
            with self._epoch_bar("level 0: dense") as on_epoch:
                outcome = train_level(
                    self.spec,
                    model_args,
                    dataset,
                    start,
                    mask,
                    capture_rewind=True,
                    on_epoch=on_epoch,
                )
            if outcome.rewind is None:  # train_level raises first; this narrows the type
                raise TicketError("rewind weights were not captured")
            self._save_tensors("rewind.tensors", outcome.rewind, {})
            metrics = {**outcome.result.as_dict(), "train_loss": outcome.train_loss}
            self._save_level(path, outcome.trained, mask, metrics)
        trained, mask, metrics = self._load_level(path)
        # At full density both controls are the dense network itself.
        record = LevelRecord(
            0, 1.0, layer_densities(mask), metrics, {c: metrics for c in self.spec.controls}
        )
        return trained, mask, record

    def _pruned_level(
        self, level: int, previous: Weights, previous_mask: Mask, fractions: dict[str, float]
    ) -> tuple[Weights, Mask, LevelRecord]:
        spec, dataset, model_args, rewind = self.spec, self._dataset, self._model_args, self._rewind
        path = self.workdir / f"level-{level:03d}.tensors"
        if not path.exists():
            generator = torch.Generator().manual_seed(derive_seed(spec.seed, "prune", level))
            mask = PRUNERS[spec.pruner](previous, previous_mask, fractions, generator)
            with self._epoch_bar(f"level {level}: ticket") as on_epoch:
                outcome = train_level(
                    spec, model_args, dataset, masked(rewind, mask), mask, on_epoch=on_epoch
                )
            metrics = {**outcome.result.as_dict(), "train_loss": outcome.train_loss}
            self._save_level(path, outcome.trained, mask, metrics)
        trained, mask, metrics = self._load_level(path)
        controls = {name: self._control(name, level, mask) for name in spec.controls}
        return (
            trained,
            mask,
            LevelRecord(level, density(mask), layer_densities(mask), metrics, controls),
        )

    def _control(self, name: str, level: int, mask: Mask) -> dict[str, Any]:
        dataset, model_args, rewind = self._dataset, self._model_args, self._rewind
        path = self.workdir / f"level-{level:03d}.{name}.json"
        if path.exists():
            metrics: dict[str, Any] = json.loads(path.read_text())
            return metrics
        if name == "reinit":
            control_mask, start = (
                mask,
                initial_weights(self.spec, model_args, label=f"reinit:{level}"),
            )
        else:
            generator = torch.Generator().manual_seed(derive_seed(self.spec.seed, "random", level))
            control_mask, start = random_mask_like(mask, generator), rewind
        with self._epoch_bar(f"level {level}: {name}") as on_epoch:
            outcome = train_level(
                self.spec,
                model_args,
                dataset,
                masked(start, control_mask),
                control_mask,
                on_epoch=on_epoch,
            )
        metrics = {**outcome.result.as_dict(), "train_loss": outcome.train_loss}
        atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True))
        return metrics

    # ------------------------------------------------------------------ files

    def _claim_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        spec_path = self.workdir / SPEC_FILE
        wanted = {"fingerprint": self.spec.fingerprint(), "spec": self.spec.as_dict()}
        if spec_path.exists():
            try:
                found = json.loads(spec_path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise WorkdirMismatchError(
                    f"{spec_path}: unreadable ({error}); delete the work directory"
                ) from error
            if not isinstance(found, dict):
                raise WorkdirMismatchError(
                    f"{spec_path}: not a search record; delete the work directory"
                )
            if found.get("fingerprint") != wanted["fingerprint"]:
                old_spec = found.get("spec")
                differing = _differing_keys(
                    old_spec if isinstance(old_spec, dict) else {}, _as_json(wanted["spec"])
                )
                raise WorkdirMismatchError(
                    f"work directory {self.workdir} holds a search with different settings "
                    f"({', '.join(differing) or 'unknown'}); use another --workdir or delete it"
                )
            return
        atomic_write_text(spec_path, json.dumps(wanted, indent=2, sort_keys=True))

    def _save_tensors(
        self, name: str, weights: Mapping[str, torch.Tensor], meta: dict[str, Any]
    ) -> None:
        arrays = {n: w.detach().numpy().astype(np.float32) for n, w in weights.items()}
        write_tensor_file(self.workdir / name, arrays, meta)

    def _load_tensors(self, name: str) -> Weights:
        arrays, _ = read_tensor_file(self.workdir / name)
        return {n: torch.from_numpy(a.copy()) for n, a in arrays.items()}

    def _save_level(
        self, path: Path, trained: Weights, mask: Mask, metrics: dict[str, Any]
    ) -> None:
        arrays = {f"trained/{n}": w.numpy().astype(np.float32) for n, w in trained.items()}
        arrays.update({f"mask/{n}": m.numpy().astype(np.uint8) for n, m in mask.items()})
        write_tensor_file(path, arrays, {"metrics": metrics})

    def _load_level(self, path: Path) -> tuple[Weights, Mask, dict[str, Any]]:
        arrays, meta = read_tensor_file(path)
        trained = {
            n.removeprefix("trained/"): torch.from_numpy(a.copy())
            for n, a in arrays.items()
            if n.startswith("trained/")
        }
        mask = {
            n.removeprefix("mask/"): torch.from_numpy(a.astype(np.bool_))
            for n, a in arrays.items()
            if n.startswith("mask/")
        }
        return trained, mask, dict(meta["metrics"])

    # ------------------------------------------------------------------ progress

    def _bar(self, total: int, desc: str, *, leave: bool) -> "tqdm[Any]":
        return tqdm(total=total, desc=desc, leave=leave, disable=not self.progress, unit="level")

    @contextmanager
    def _epoch_bar(self, desc: str) -> Iterator[Callable[[int, float], None]]:
        with tqdm(
            total=self.spec.train.epochs,
            desc=desc,
            leave=False,
            disable=not self.progress,
            unit="epoch",
        ) as bar:

            def on_epoch(epoch: int, loss: float) -> None:
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)

            yield on_epoch


def merged_model_args(dataset: Dataset, requested: Mapping[str, Any]) -> dict[str, Any]:
    """The data's model arguments (input width, classes) plus the requested ones.

    A requested value may repeat what the data fixes but not contradict it: a network built
    for other input widths or class counts fails only once training starts, with a shape error
    that names no argument.
    """
    fixed = dataset.model_args()
    for key, value in requested.items():
        if key in fixed and value != fixed[key]:
            raise ModelArgumentError(
                f"model argument {key}={json.dumps(value)}: {dataset.name} fixes "
                f"{key} at {fixed[key]}"
            )
    return {**fixed, **requested}


def _as_json(value: Any) -> Any:
    """`value` as it reads back from search.json: tuples become lists, keys strings."""
    return json.loads(json.dumps(value))


def _differing_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    differing: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differing += _differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            differing.append(f"{prefix}{key}")
    return differing
