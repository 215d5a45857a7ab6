"""One level of a lottery-ticket search: train a masked network from given weights, evaluate it.

Pure: the data, the weights, the mask and the seeds come in; weights and metrics go out. The
resumable loop over levels, with its files, lives in `ticket_cli.find_runner`.
"""

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ticket.data import Dataset
from ticket.errors import TicketError
from ticket.masks import Mask
from ticket.models import build_model
from ticket.prune import CONTROLS, METHODS, PRUNERS, PruningRates, derive_seed
from ticket.train import evaluate, load_weights, snapshot, train_masked
from ticket.train_config import EvalResult, TrainConfig

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SearchSpec:
    """Everything that determines a ticket search; its hash names the search's work directory."""

    model: str
    data: str
    target_density: float
    train: TrainConfig
    model_args: Mapping[str, Any] = field(default_factory=dict)
    sites: tuple[str, ...] | None = None
    train_rows: int | None = None  # train on the first N training rows only (None: all)
    method: str = "imp"
    pruner: str = "magnitude-layerwise"
    rates: PruningRates = field(default_factory=PruningRates)
    rewind_step: int = 0
    seed: int = 0
    controls: tuple[str, ...] = CONTROLS

    def __post_init__(self) -> None:
        METHODS[self.method]  # raise UnknownNameError early, listing the choices
        PRUNERS[self.pruner]
        if not 0.0 < self.target_density <= 1.0:
            raise TicketError(f"target density must be in (0, 1], got {self.target_density}")
        if self.train.epochs < 1:
            # Zero epochs would "train" every level without a single step and only fail at
            # the end, when the NaN loss cannot be written into the manifest.
            raise TicketError(
                f"a search trains every level: epochs must be >= 1, got {self.train.epochs}"
            )
        if self.train_rows is not None and self.train_rows < 1:
            raise TicketError(f"train rows must be >= 1, got {self.train_rows}")
        if self.rewind_step < 0:
            raise TicketError(f"rewind step must be >= 0, got {self.rewind_step}")
        unknown = sorted(set(self.controls) - set(CONTROLS))
        if unknown:
            raise TicketError(
                f"unknown control(s) {', '.join(unknown)}; choose from {', '.join(CONTROLS)}"
            )

    def as_dict(self) -> dict[str, Any]:
        spec = asdict(self)
        spec["rates"] = {
            "rate": self.rates.rate,
            "output_rate": self.rates.output_rate,
            "layer_rates": dict(self.rates.layer_rates),
        }
        spec["model_args"] = dict(self.model_args)
        if self.train_rows is None:
            # Absent, not null: a search on all rows keeps the fingerprint (and the work
            # directory) it had before the key existed.
            del spec["train_rows"]
        return spec

    def fingerprint(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class LevelOutcome:
    trained: Weights
    result: EvalResult
    train_loss: float
    rewind: Weights | None  # W_k, captured only when asked for


def initial_weights(
    spec: SearchSpec, model_args: Mapping[str, Any], *, label: str = "init"
) -> Weights:
    return snapshot(build_model(spec.model, model_args, derive_seed(spec.seed, label)))


def check_rewind_step(spec: SearchSpec, examples: int) -> None:
    """Raise TicketError when training on `examples` rows never reaches the rewind step."""
    steps = spec.train.epochs * spec.train.steps_per_epoch(examples)
    if spec.rewind_step > steps:
        raise TicketError(
            f"rewind step {spec.rewind_step} is past the end of training ({steps} steps)"
        )


def train_level(
    spec: SearchSpec,
    model_args: Mapping[str, Any],
    dataset: Dataset,
    start: Mapping[str, torch.Tensor],
    mask: Mask,
    *,
    capture_rewind: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> LevelOutcome:
    """Train from `start` with `mask` fixed, on the search's fixed data order; evaluate on test."""
    model = build_model(spec.model, model_args, seed=0)  # weights replaced just below
    load_weights(model, start)
    rewind: Weights = {}

    def capture(step: int, current: torch.nn.Module) -> None:
        if step == spec.rewind_step:
            rewind.update(snapshot(current))

    loss = train_masked(
        model,
        mask,
        dataset.x_train,
        dataset.y_train,
        spec.train,
        seed=derive_seed(spec.seed, "data-order"),
        on_step=capture if capture_rewind else None,
        on_epoch=on_epoch,
    )
    if capture_rewind and not rewind:
        check_rewind_step(spec, dataset.x_train.shape[0])
        raise TicketError(f"rewind step {spec.rewind_step} was not reached")
    return LevelOutcome(
        trained=snapshot(model),
        result=evaluate(model, dataset.x_test, dataset.y_test),
        train_loss=loss,
        rewind=rewind or None,
    )


def masked(weights: Mapping[str, torch.Tensor], mask: Mask) -> Weights:
    """`weights` with every pruned entry set to zero."""
    return {n: w * mask[n] if n in mask else w.clone() for n, w in weights.items()}
