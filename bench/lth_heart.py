"""The lottery-ticket table for heart-mlp on the 4-hospital UCI heart data (accuracy, ROC-AUC)."""

from lth import main

NOTE = (
    "heart-mlp (35 -> 64 -> 32 -> 2, 4,352 prunable weights) on heart-uci, all four hospitals "
    "pooled (643 training / 277 test rows, fixed per-hospital split), IMP layer-wise, 20% per "
    "level (output layer 10%), rewind to step 0, Adam 1e-3, batch 32, 10 epochs per level "
    "(the default recipe: longer training overfits the dense net). Metrics are on the pooled "
    "test rows at the end of training."
)

if __name__ == "__main__":
    main(
        "lth_heart",
        "heart-mlp on heart-uci: winning ticket vs controls",
        ["--model", "heart-mlp", "--data", "heart-uci", "--target-density", "0.036"],
        NOTE,
        default_seeds=5,
    )
