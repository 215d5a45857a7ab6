"""Default training hyperparameters per dataset, used when a command does not override them.

Kept out of the model classes on purpose: the same model trains differently on different data.
"""

from ticket.registry import Registry
from ticket.train_config import TrainConfig

DEFAULT_TRAINING: Registry[TrainConfig] = Registry(
    "training recipe",
    {
        # 643 training rows: past ~10 epochs the dense net overfits (bench/results/lth_heart.md).
        "heart-uci": TrainConfig(epochs=10, batch_size=32, lr=1e-3),
        # Frankle & Carbin: Adam 1.2e-3, batch 60. They train 50k iterations (50 epochs);
        # 5 epochs (5k iterations) fits a 2-core machine and reaches ~98% dense.
        "mnist": TrainConfig(epochs=5, batch_size=60, lr=1.2e-3),
    },
)
