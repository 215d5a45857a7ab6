"""What a finished search produces besides the ticket: its manifest, a JSON report and a plot."""

import io
import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from ticket import __version__
from ticket.atomic import atomic_write_bytes, atomic_write_text
from ticket.bundle import Ticket, build_ticket
from ticket.manifest import DataSpec, Density, Manifest, MethodSpec, ModelSpec
from ticket.masks import density, kept_count, layer_densities, total_count
from ticket_cli.find_runner import LevelRecord, SearchOutcome

REPORT_SCHEMA = "ticketfleet.find-report.v1"
CURVE_LABELS = {
    "ticket": "winning ticket (IMP, rewound)",
    "reinit": "random reinit",
    "random": "random pruning",
}


def build_level_ticket(
    outcome: SearchOutcome, *, created_at: datetime, parent: str | None, level: int = -1
) -> Ticket:
    """The (unsigned) ticket of one level of the search, the last by default: that level's
    mask over the rewound weights W_k, pruned entries zero."""
    manifest = build_manifest(outcome, created_at=created_at, parent=parent, level=level)
    masks = {n: m.numpy() for n, m in outcome.masks[level].items()}
    weights = {n: w.numpy() for n, w in outcome.rewind.items()}
    return build_ticket(
        manifest, masks, {n: w * masks[n] if n in masks else w for n, w in weights.items()}
    )


def build_manifest(
    outcome: SearchOutcome, *, created_at: datetime, parent: str | None, level: int = -1
) -> Manifest:
    """The ticket manifest (format version 1): what it is, how and on what it was found.

    `level` picks the search level the ticket is (the last by default); its metrics record
    every level up to that one, as the search went.
    """
    spec = outcome.spec
    index = range(len(outcome.levels))[level]  # IndexError past either end
    final, mask = outcome.levels[index], outcome.masks[index]
    return Manifest(
        model=ModelSpec(name=spec.model, args=outcome.model_args),
        data=DataSpec.from_json(outcome.dataset.describe(), at="data"),
        method=MethodSpec(
            name=spec.method,
            pruner=spec.pruner,
            rates={
                "rate": spec.rates.rate,
                "output_rate": spec.rates.output_rate,
                "layer_rates": dict(spec.rates.layer_rates),
            },
            target_density=spec.target_density,
            seed=spec.seed,
            train=asdict(spec.train),
            controls=tuple(spec.controls),
            search_fingerprint=spec.fingerprint(),
        ),
        rewind_step=spec.rewind_step,
        density=Density(overall=density(mask), layers=layer_densities(mask)),
        metrics={
            "final": final.ticket,
            "levels": [record.as_dict() for record in outcome.levels[: index + 1]],
        },
        parent=parent,
        created_at=created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool={"name": "ticketfleet", "version": __version__},
    )


def build_report(
    outcome: SearchOutcome, *, ticket_path: Path, content_id: str, plot_path: Path | None
) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "ticket": str(ticket_path),
        "content_id": content_id,
        "plot": None if plot_path is None else str(plot_path),
        "spec": outcome.spec.as_dict(),
        "kept_weights": kept_count(outcome.mask),
        "total_weights": total_count(outcome.mask),
        "levels": [level.as_dict() for level in outcome.levels],
    }


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def plot_levels(path: Path, levels: list[LevelRecord], *, title: str) -> None:
    """Test accuracy (and ROC-AUC when present) against % of weights remaining, log x axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    panels = ["accuracy"] + (["auc"] if levels[0].ticket.get("auc") is not None else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    remaining = [100 * level.density for level in levels]
    for axis, metric in zip(axes[0], panels, strict=True):
        for curve, label in CURVE_LABELS.items():
            values = [_curve_value(level, curve, metric) for level in levels]
            points = [(x, y) for x, y in zip(remaining, values, strict=True) if y is not None]
            if len(points) > 1:
                axis.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        style_density_axis(axis, remaining)
        axis.set_ylabel("test ROC-AUC" if metric == "auc" else "test accuracy")
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def style_density_axis(axis: Any, remaining_pct: list[float]) -> None:
    """Log x axis of % weights remaining, read left to right as pruning proceeds."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_xscale("log")
    axis.invert_xaxis()
    # Label every other level: log-scale default ticks would show only 10 and 100.
    axis.set_xticks(remaining_pct[::2])
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("weights remaining (%)")
    axis.grid(True, which="major", alpha=0.3)
    if axis.get_legend_handles_labels()[0]:  # a one-level search draws no curve
        axis.legend()


def _curve_value(level: LevelRecord, curve: str, metric: str) -> float | None:
    metrics = level.ticket if curve == "ticket" else level.controls.get(curve)
    if metrics is None:
        return None
    value = metrics.get(metric)
    return None if value is None else float(value)
