"""Shared driver of the lottery-ticket benchmarks: run `ticket find` per seed, aggregate, record.

Each seed runs the real command in a subprocess, so the recorded wall time and peak RSS are
those a user of `ticket find` sees. Results go to bench/results/<name>.{json,md,png} with the
exact command lines that produced them.
"""

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ticket_cli.find_report import style_density_axis

RESULTS = Path(__file__).resolve().parent / "results"
CURVES = ("ticket", "reinit", "random")


def run_seed(find_args: list[str], seed: int, workroot: Path) -> dict[str, Any]:
    seed_dir = workroot / f"seed{seed}"
    # A fresh search every time: resuming an old work directory would record resume times.
    shutil.rmtree(seed_dir, ignore_errors=True)
    out = seed_dir / "bench.ticket"
    command = [
        str(Path(sys.executable).parent / "ticket"),
        "find",
        *find_args,
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--quiet",
        "--force",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if completed.returncode != 0:
        sys.exit(f"seed {seed} failed ({completed.returncode}):\n{completed.stderr}")
    report = json.loads(out.with_suffix(".json").read_text())
    return {
        "seed": seed,
        "command": shlex.join(command),
        "wall_s": wall_s,
        # ru_maxrss of children is the largest child so far; each seed runs alone, and a later
        # seed is only recorded when it raised the maximum, so this is an upper bound per seed.
        "peak_rss_mb": max(peak_kib, before) / 1024,
        "levels": report["levels"],
        "content_id": report["content_id"],
    }


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation per level and curve over seeds."""
    rows = []
    for index, level in enumerate(runs[0]["levels"]):
        row: dict[str, Any] = {"level": level["level"], "remaining_pct": 100 * level["density"]}
        for curve in CURVES:
            for metric in ("accuracy", "auc"):
                values = [_metric(run["levels"][index], curve, metric) for run in runs]
                present = [v for v in values if v is not None]
                if len(present) == len(values):
                    row[f"{curve}_{metric}_mean"] = statistics.fmean(present)
                    row[f"{curve}_{metric}_std"] = (
                        statistics.stdev(present) if len(present) > 1 else 0.0
                    )
        rows.append(row)
    return rows


def _metric(level: dict[str, Any], curve: str, metric: str) -> float | None:
    source = level["ticket"] if curve == "ticket" else level["controls"].get(curve)
    value = None if source is None else source.get(metric)
    return None if value is None else float(value)


def write_markdown(
    path: Path,
    *,
    name: str,
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    note: str,
    bench_command: str,
) -> None:
    metrics = ["accuracy"] + (["auc"] if "ticket_auc_mean" in rows[0] else [])
    lines = [f"# {name}", "", note, "", f"Produced by: `{bench_command}`", ""]
    header = (
        "| level | remaining | " + " | ".join(f"{c} {m}" for m in metrics for c in CURVES) + " |"
    )
    lines += [header, "|" + "---|" * (2 + len(metrics) * len(CURVES))]
    for row in rows:
        cells = [str(row["level"]), f"{row['remaining_pct']:.1f}%"]
        for metric in metrics:
            for curve in CURVES:
                mean = row.get(f"{curve}_{metric}_mean")
                cells.append(
                    "-"
                    if mean is None
                    else f"{100 * mean:.2f} ± {100 * row[f'{curve}_{metric}_std']:.2f}"
                )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± sample std over seeds, in percent.",
        "",
        "| seed | wall time (s) | peak RSS (MB) | ticket id |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['seed']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | `{r['content_id'][:16]}` |"
        for r in runs
    ]
    lines += ["", "Per-seed commands:", ""] + [f"    {r['command']}" for r in runs]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, title: str, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["accuracy"] + (["auc"] if "ticket_auc_mean" in rows[0] else [])
    figure, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
    x = [row["remaining_pct"] for row in rows]
    for axis, metric in zip(axes[0], metrics, strict=True):
        for curve in CURVES:
            mean = [100 * row[f"{curve}_{metric}_mean"] for row in rows]
            std = [100 * row[f"{curve}_{metric}_std"] for row in rows]
            axis.plot(x, mean, marker="o", markersize=3, label=curve)
            axis.fill_between(
                x,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                alpha=0.2,
            )
        axis.set_ylabel(f"test {metric} (%)")
        style_density_axis(axis, x)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(name: str, title: str, find_args: list[str], note: str, default_seeds: int) -> None:
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--seeds", type=int, default=default_seeds)
    parser.add_argument(
        "--workroot",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / f"ticketfleet-bench-{name}",
    )
    args = parser.parse_args()
    runs = [run_seed(find_args, seed, args.workroot) for seed in range(args.seeds)]
    rows = aggregate(runs)
    RESULTS.mkdir(exist_ok=True)
    bench_command = shlex.join(["python", f"bench/{name}.py", "--seeds", str(args.seeds)])
    document = {
        "benchmark": name,
        "command": bench_command,
        "note": note,
        "find_args": find_args,
        "levels": rows,
        "runs": runs,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    write_markdown(
        RESULTS / f"{name}.md",
        name=title,
        rows=rows,
        runs=runs,
        note=note,
        bench_command=bench_command,
    )
    plot(RESULTS / f"{name}.png", title, rows)
    print((RESULTS / f"{name}.md").read_text())
