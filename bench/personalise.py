"""Personalisation on the real fed-heart split: global vs personal accuracy, per hospital.

Each of the four UCI heart-disease hospitals is one device. Per seed:

1. a ticket: `ticket find` on heart-uci (all four hospitals), density 0.1, as fed-heart's
   ticket arm (bench/comm.py);
2. global models of that ticket, with the project's own functions in-process (no Flower):
   `fedavg`, fed-heart's schedule (30 rounds, every hospital each round, 2 local epochs, batch
   32, Adam 1e-3: ticket/numpy_mlp.py's train_masked as the ClientApp trains, ticket/fedavg.py's
   weighted_mean as the server averages); `fedavg-without`, the same schedule over the other
   three hospitals only (a device whose hospital never trained the global model: one that
   joins the fleet after the run); and `central`, the ticket trained on the four hospitals'
   pooled training rows (heart-uci's recipe: 10 epochs);
3. per hospital, a device: the hospital's training rows (the fixed split, ticket/data/heart.py)
   ingested into a real readings store and read back as the ClientApp and
   edge_daemon/personalise.py read it (every 5th labelled reading held out on the device),
   then `fine_tune` with daemon.yaml's default `personalise:` settings, `layers: last` and
   `layers: all`. The device keeps the personal model only if it beats the global one on its
   own held-out rows.

Every model is then scored on the hospital's *test* rows of the fixed split, which neither the
global model nor the device ever trained on or chose with. "kept" is the model the device
would predict with (personal where it won on the device, else global).

    python bench/personalise.py                  # 5 seeds; writes bench/results/personalise.md
    python bench/personalise.py --seeds 1 --no-write
"""

import argparse
import csv
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/personalise.py` from a checkout

from edge_daemon.config import PersonaliseConfig  # noqa: E402
from edge_daemon.local_data import StoreSpec, load_store_data  # noqa: E402
from edge_daemon.personalise import Rows, fine_tune  # noqa: E402
from edge_daemon.readings import ReadingsStore  # noqa: E402
from ticket import numpy_mlp  # noqa: E402
from ticket.bundle import Ticket, read_ticket  # noqa: E402
from ticket.data.heart import HEART_SITES, is_test_row, read_heart_rows  # noqa: E402
from ticket.data.heart_encoding import HeartPreprocessor  # noqa: E402
from ticket.fedavg import weighted_mean  # noqa: E402
from ticket.packing import PackLayout  # noqa: E402
from ticket.recipes import DEFAULT_TRAINING  # noqa: E402
from ticket.train_config import TrainConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "personalise.md"
KINDS = {
    "fedavg": "the fleet's global model, every hospital trained it",
    "fedavg-without": "a global model the device's own hospital never trained",
    "central": "the ticket trained centrally on the pooled training rows",
}
DENSITY = 0.1
ROUNDS, LOCAL = 30, TrainConfig(epochs=2, batch_size=32, lr=1e-3)  # bench/comm.py fed-heart
CSV_COLUMNS = ["id", "age", "sex", "dataset", "cp", "trestbps", "chol", "fbs", "restecg"]
CSV_COLUMNS += ["thalch", "exang", "oldpeak", "slope", "ca", "thal", "num"]
Params = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Site:
    name: str
    train: list[dict[str, str]]  # the fixed split's training rows, in CSV order
    test: list[dict[str, str]]


@dataclass(frozen=True)
class Result:
    seed: int
    global_kind: str  # "fedavg" or "central"
    site: str
    layers: str
    device_train: int
    device_held_out: int
    test_rows: int
    device_global: float  # accuracy on the device's held-out rows
    device_personal: float
    used: bool
    test_global: float  # accuracy on the hospital's fixed-split test rows
    test_personal: float
    test_kept: float


def sites() -> list[Site]:
    rows = read_heart_rows()
    chosen = []
    for name in HEART_SITES:
        mine = [row for row in rows if row["dataset"] == name]
        chosen.append(
            Site(
                name,
                [row for row in mine if not is_test_row(name, row["id"])],
                [row for row in mine if is_test_row(name, row["id"])],
            )
        )
    return chosen


def find_ticket(seed: int, work: Path) -> Ticket:
    from ticket_cli.cli import main

    out = work / f"seed{seed}.ticket"
    args = ["find", "--model", "heart-mlp", "--data", "heart-uci", "--controls", "none"]
    args += ["--target-density", str(DENSITY), "--seed", str(seed), "--out", str(out)]
    if main([*args, "--quiet", "--force"]) != 0:
        sys.exit(f"ticket find failed for seed {seed}")
    return read_ticket(out, allow_unsigned=True)


def fedavg_model(
    ticket: Ticket, encoded: Sequence[tuple[np.ndarray, np.ndarray]], seed: int
) -> Params:
    """fed-heart's schedule in-process: each round every hospital trains from the global
    model, and the server averages the packed updates weighted by training rows."""
    layout = PackLayout.from_ticket(ticket)
    values = layout.pack(ticket.weights)  # round 1 starts from W_k
    for server_round in range(1, ROUNDS + 1):
        params = layout.unpack(values)
        updates = []
        for index, (x, y) in enumerate(encoded):
            trained, _ = numpy_mlp.train_masked(
                params, ticket.masks, x, y, LOCAL, seed=seed * 1_000 + server_round * 10 + index
            )
            updates.append(layout.pack(trained))
        values = weighted_mean(updates, [len(y) for _, y in encoded])
    return layout.unpack(values)


def central_model(
    ticket: Ticket, encoded: Sequence[tuple[np.ndarray, np.ndarray]], seed: int
) -> Params:
    x = np.concatenate([x for x, _ in encoded])
    y = np.concatenate([y for _, y in encoded])
    trained, _ = numpy_mlp.train_masked(
        ticket.weights, ticket.masks, x, y, DEFAULT_TRAINING["heart-uci"], seed=seed
    )
    return trained


def device_rows(site: Site, preprocessing: Mapping[str, object], work: Path) -> Rows:
    """The hospital's training rows as a device holds them: ingested, then read back."""
    path = work / f"{site.name}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(site.train)
    db = work / f"{site.name}.sqlite3"
    db.unlink(missing_ok=True)
    with ReadingsStore(db) as store:
        store.ingest_csv(path)
    data = load_store_data(StoreSpec(db), dict(preprocessing))
    return Rows(data.x_train, data.y_train, data.x_test, data.y_test)


def accuracy(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return numpy_mlp.evaluate(params, x, y).accuracy


def run_seed(seed: int, work: Path, hospitals: Sequence[Site]) -> list[Result]:
    ticket = find_ticket(seed, work)
    preprocessing = ticket.manifest.data.preprocessing
    if preprocessing is None:
        sys.exit(f"seed {seed}: the ticket carries no preprocessing to encode readings with")
    encoder = HeartPreprocessor.from_json(preprocessing)
    encoded = [(encoder.transform(s.train), encoder.labels(s.train)) for s in hospitals]
    shared = {
        "fedavg": fedavg_model(ticket, encoded, seed),
        "central": central_model(ticket, encoded, seed),
    }
    results = []
    for index, site in enumerate(hospitals):
        rows = device_rows(site, preprocessing, work)
        x_test, y_test = encoder.transform(site.test), encoder.labels(site.test)
        others = [pair for j, pair in enumerate(encoded) if j != index]
        models = {**shared, "fedavg-without": fedavg_model(ticket, others, seed)}
        for kind, params in models.items():
            for layers in ("last", "all"):
                settings = replace(PersonaliseConfig(), layers=layers)
                outcome = fine_tune(params, ticket.masks, rows, settings, seed=seed)
                if outcome.personal is None or outcome.personal_eval is None:
                    sys.exit(f"{site.name}: not personalised: {outcome.why}")
                if outcome.global_eval is None:
                    sys.exit(f"{site.name}: no held-out rows on the device")
                personal = accuracy(outcome.personal, x_test, y_test)
                base = accuracy(params, x_test, y_test)
                results.append(
                    Result(
                        seed,
                        kind,
                        site.name,
                        layers,
                        len(rows.y_train),
                        len(rows.y_held_out),
                        len(y_test),
                        outcome.global_eval.accuracy,
                        outcome.personal_eval.accuracy,
                        outcome.used,
                        base,
                        personal,
                        personal if outcome.used else base,
                    )
                )
    return results


def _mean(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _pooled(results: Sequence[Result], key: str) -> float:
    """Accuracy over the hospitals' test rows together (each hospital weighted by its rows)."""
    total = sum(float(getattr(r, key)) * r.test_rows for r in results)
    return total / sum(r.test_rows for r in results)


def _rows_of(name: str, results: Sequence[Result], seed: int) -> list[Result]:
    return [r for r in results if r.seed == seed and name in (r.site, "all four")]


def table(results: Sequence[Result], kind: str) -> list[str]:
    """Test accuracy per hospital: global, and personal / kept for each `layers` setting."""
    lines = [
        "| hospital | device train / held-out | test rows | global | personal (last) "
        "| kept (last) | kept - global (last) | personal kept (last) | personal (all) "
        "| kept (all) | kept - global (all) | personal kept (all) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mine = [r for r in results if r.global_kind == kind]
    seeds = sorted({r.seed for r in mine})
    for name in [*HEART_SITES, "all four"]:
        one = [r for r in _rows_of(name, mine, seeds[0]) if r.layers == "last"]
        cells = [
            name,
            f"{sum(r.device_train for r in one)} / {sum(r.device_held_out for r in one)}",
            str(sum(r.test_rows for r in one)),
        ]
        for layers in ("last", "all"):
            per_seed = [
                [r for r in _rows_of(name, mine, seed) if r.layers == layers] for seed in seeds
            ]
            base = [_pooled(rs, "test_global") for rs in per_seed]
            kept = [_pooled(rs, "test_kept") for rs in per_seed]
            if layers == "last":
                cells.append(_mean(base))
            gain = statistics.mean(k - b for k, b in zip(kept, base, strict=True))
            used = sum(r.used for rs in per_seed for r in rs)
            cells += [
                _mean([_pooled(rs, "test_personal") for rs in per_seed]),
                _mean(kept),
                f"{100 * gain:+.1f}",
                f"{used} of {sum(len(rs) for rs in per_seed)}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def device_table(results: Sequence[Result], kind: str) -> list[str]:
    """Accuracy on the device's own held-out rows: what `edge-daemon status` shows."""
    lines = [
        "| hospital | global | personal (last) | personal (all) |",
        "|---|---|---|---|",
    ]
    mine = [r for r in results if r.global_kind == kind and r.site != "all four"]
    for name in HEART_SITES:
        cells = [name]
        columns = [("device_global", "last"), ("device_personal", "last")]
        for key, layers in [*columns, ("device_personal", "all")]:
            cells.append(
                _mean([getattr(r, key) for r in mine if r.site == name and r.layers == layers])
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(results: Sequence[Result], seeds: int, command: str, wall_s: float) -> str:
    defaults = PersonaliseConfig()
    out = [
        "# Personalisation on fed-heart: global vs personal accuracy per hospital",
        "",
        f"Produced by: `{command}` ({len(os.sched_getaffinity(0))} core(s) allowed, "
        f"{platform.machine()}, Python {platform.python_version()}, {wall_s:.0f} s wall).",
        "",
        "Each of the four UCI heart-disease hospitals is one device. Per seed (the ticket's "
        f"`ticket find` seed): a heart-mlp ticket at density {DENSITY} found on all four "
        "hospitals, and global models of it trained with the project's own functions "
        "in-process (no Flower, no server; the global models are trained here, by this "
        "script): **fedavg**, fed-heart's schedule (30 rounds, every hospital each round, 2 "
        "local epochs, batch 32, Adam 1e-3; ticket/numpy_mlp.py train_masked on each hospital "
        "as the ClientApp trains, ticket/fedavg.py weighted_mean as the server averages); "
        "**fedavg-without**, the same over the other three hospitals only, so the device's "
        "hospital never trained it (a device that joins the fleet after the run); and "
        "**central**, the ticket trained on the pooled training rows of all four (heart-uci "
        "recipe, 10 epochs). Each device holds its hospital's training rows of the fixed split "
        "(ticket/data/heart.py), ingested into a real readings store and read back as the "
        "daemon reads them: every 5th labelled reading is held out on the device. It "
        "personalises with `edge_daemon.personalise.fine_tune` and daemon.yaml's default "
        f"settings (epochs {defaults.epochs}, lr {defaults.lr}, batch {defaults.batch_size}), "
        "with `layers: last` (the default) and with `layers: all`, and keeps the personal model "
        "only when it beats the global one on the device's held-out rows.",
        "",
        "Accuracy in the first table of each section is on the hospital's *test* rows of the "
        "fixed split, which no model trained on and no device chose with. **personal**: the "
        "fine-tuned model, kept or not. **kept**: the model the device predicts with "
        "(personal where it won on the device, else global); **kept - global** in percentage "
        "points; **personal kept**: how often the device kept its personal model (hospitals x "
        "seeds). The second table is accuracy on the device's own held-out rows, the figures "
        "`edge-daemon status` shows; the personal one there is optimistic for a kept model, "
        "since the same rows choose it. "
        f'Mean ± sample std over {seeds} seeds, in percent; "all four" pools the four '
        "hospitals' test rows.",
    ]
    for kind, title in KINDS.items():
        out += ["", f"## {kind}: {title}", ""]
        out += table(results, kind)
        out += ["", "On the device's own held-out rows (`edge-daemon status`):", ""]
        out += device_table(results, kind)
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    hospitals = sites()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="ticketfleet-bench-personalise-") as work:
        for seed in range(args.seeds):
            results += run_seed(seed, Path(work), hospitals)
            print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = [f"OMP_NUM_THREADS={threads}"] if threads else []
    if len(os.sched_getaffinity(0)) == 1:
        prefix += ["taskset", "-c", str(next(iter(os.sched_getaffinity(0))))]
    command = shlex.join([*prefix, "python", "bench/personalise.py", *(argv or sys.argv[1:])])
    text = report(results, args.seeds, command, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
