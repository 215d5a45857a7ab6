"""Training hyperparameters and evaluation results, shared by the torch and numpy trainers.

Torch-free on purpose: the device's ClientApp trains with ticket/numpy_mlp.py and must not pay
torch's import (~2.4 s, ~220 MB) to read its own settings.
"""

from dataclasses import dataclass

from ticket.errors import TicketError

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run; recorded verbatim in a ticket's manifest."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise TicketError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise TicketError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise TicketError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise TicketError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )

    def steps_per_epoch(self, examples: int) -> int:
        return -(-examples // self.batch_size)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    auc: float | None  # binary tasks only
    examples: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "auc": self.auc,
            "examples": self.examples,
        }
