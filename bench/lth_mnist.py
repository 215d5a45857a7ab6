"""Frankle & Carbin's LeNet-300-100 experiment on real MNIST: ticket vs reinit vs random pruning."""

from lth import main

EPOCHS = 5

NOTE = (
    "LeNet-300-100 on the full MNIST 60k/10k, IMP layer-wise, 20% per level (output layer 10%), "
    "rewind to step 0 (initialisation), Adam 1.2e-3, batch 60. SHORTENED SCHEDULE: the paper "
    f"trains 50k iterations per level; here {EPOCHS} epochs = {EPOCHS * 1000} iterations per "
    "level, to fit 16 levels x 3 variants x 3 seeds on a 2-core CPU. Accuracy is the test "
    "accuracy at the end of training (no early stopping)."
)

if __name__ == "__main__":
    main(
        "lth_mnist",
        "LeNet-300-100 on MNIST: winning ticket vs controls",
        [
            "--model",
            "lenet-300-100",
            "--data",
            "mnist",
            "--target-density",
            "0.036",
            "--epochs",
            str(EPOCHS),
        ],
        NOTE,
        default_seeds=3,
    )
