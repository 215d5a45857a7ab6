"""The ticket hub under load: search latency over 10,000 cards, verified pull throughput, page load.

A real `ticket hub serve` process on loopback. Its index holds 10,000 entries: a few real,
signed tickets with signed cards published through the hub's own checks (hub/seed.py), and
index rows derived from them in one SQLite transaction, each with its own content id and a
spread of datasets, models, densities, accuracies, signers and parents (a publish verifies a
signature and fsyncs a blob per ticket; 10,000 of them would measure the disk, not the search).
Searches go through the client `ticket search --hub` uses (ticket_cli/hub_client.py); pulls
download and verify (content id, signature, card) real bundles; the page is loaded in
headless chromium (selenium) until its script has drawn what it fetched.

    python bench/hub.py        # about a minute

Results: bench/results/hub.{json,md}, with the command that made them.
"""

import argparse
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/hub.py` from a checkout

from hub.seed import seed_hub  # noqa: E402
from ticket import crypto  # noqa: E402
from ticket.bundle import build_ticket, read_ticket, sign_ticket, write_ticket  # noqa: E402
from ticket.manifest import DataSpec, Density, ModelSpec, measure_density  # noqa: E402
from ticket.models import build_model  # noqa: E402
from ticket_cli.hub_client import (  # noqa: E402
    HubClient,
    SearchQuery,
    fetch_verified,
    write_download,
)

RESULTS = ROOT / "bench" / "results"
GOLDEN = ROOT / "tests" / "ticket" / "golden" / "tiny.ticket"
DATASETS = ("heart-uci", "mnist", "cifar10", "fashion-mnist", "speech-commands")
MODELS = ("heart-mlp", "lenet-300-100", "conv-6")
SIGNERS = 4  # distinct publisher key ids among the synthetic rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=200, help="per kind of query")
    parser.add_argument("--pulls", type=int, default=20, help="per ticket size")
    parser.add_argument("--page-loads", type=int, default=20, help="per page")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-hub"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)

    key, pub = crypto.generate_signing_key()
    (args.work / "fleet.key").write_bytes(key)
    (args.work / "fleet.pub").write_bytes(pub)
    real = make_real_tickets(args.work / "tickets", key)
    root = args.work / "hub"
    started = time.perf_counter()
    seed_hub(root, list(real.values()), args.work / "fleet.pub", sign_key=args.work / "fleet.key")
    seeded_s = time.perf_counter() - started
    started = time.perf_counter()
    added = add_synthetic_rows(root / "index.sqlite3", args.cards - len(real), seed=0)
    rows_s = time.perf_counter() - started
    print(f"index: {len(real)} real + {added} derived rows ({rows_s:.2f} s)", flush=True)

    with serve(root, args.work / "serve.log") as url:
        client = HubClient(url)
        search = bench_search(client, args.searches, crypto.key_id(pub))
        pull = bench_pull(client, real, [pub], args.pulls, args.work / "pulled")
        page = bench_page(url, read_ticket(real["lenet"], allow_unsigned=True).content_id, args)

    document = {
        "command": shlex.join(["python", "bench/hub.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "cards": args.cards,
        "real_tickets": len(real),
        "seed_s": seeded_s,
        "derived_rows_s": rows_s,
        "search": search,
        "pull": pull,
        "page": page,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hub.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "hub.md").write_text(report(document))
    print((args.out / "hub.md").read_text())


# ---------------------------------------------------------------- the index


def make_real_tickets(directory: Path, key: bytes) -> dict[str, Path]:
    """Signed tickets that fit their models, from 8 KB (heart) to 1 MB (LeNet-300-100, dense)."""
    directory.mkdir(parents=True)
    golden = read_ticket(GOLDEN, allow_unsigned=True)
    made = {}
    for name, model, args, dataset, density in [
        ("heart", "heart-mlp", {"in_features": 27, "hidden": [16, 8]}, "heart-uci", 0.2),
        ("lenet-sparse", "lenet-300-100", {}, "mnist", 0.05),
        ("lenet", "lenet-300-100", {}, "mnist", 1.0),
    ]:
        network = build_model(model, args, seed=0)
        rng = np.random.default_rng(0)
        masks, weights = {}, {}
        for parameter, tensor in network.state_dict().items():
            values = tensor.numpy().astype(np.float32)
            if parameter.endswith("weight"):
                masks[parameter] = rng.random(values.shape) < density
                values = np.where(masks[parameter], values, np.float32(0))
            weights[parameter] = values
        levels = [
            {
                "density": d,
                "ticket": {"accuracy": 0.9 - 0.1 * (1 - d) ** 4},
                "controls": {
                    "random": {"accuracy": 0.9 - 0.3 * (1 - d)},
                    "reinit": {"accuracy": 0.9 - 0.25 * (1 - d)},
                },
            }
            for d in sorted({1.0, 0.8, 0.64, 0.41, 0.21, density}, reverse=True)
            if d >= density
        ]
        manifest = replace(
            golden.manifest,
            model=ModelSpec(name=model, args=args),
            data=DataSpec(name=dataset),
            density=Density(**measure_density(masks)),
            metrics={"levels": levels, "final": levels[-1]["ticket"]},
        )
        path = directory / f"{name}.ticket"
        write_ticket(path, sign_ticket(build_ticket(manifest, masks, weights), key))
        made[name] = path
    return made


def add_synthetic_rows(index: Path, count: int, *, seed: int) -> int:
    """`count` index rows copied from the real ones, each with its own id and facts."""
    rng = random.Random(seed)
    with sqlite3.connect(index) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(tickets)")]
        templates = db.execute("SELECT * FROM tickets").fetchall()
        signers = [f"{i:016x}" for i in range(1, SIGNERS)]
        ids: list[str] = []
        rows = []
        for i in range(count):
            row = dict(zip(columns, rng.choice(templates), strict=True))
            content_id = hashlib.sha256(f"synthetic {i}".encode()).hexdigest()
            accuracy = round(rng.uniform(0.5, 0.99), 4)
            signer = rng.choice([*signers, json.loads(row["verified_by"])[0]])
            row.update(
                content_id=content_id,
                task=rng.choice(DATASETS),
                model=rng.choice(MODELS),
                density=round(rng.uniform(0.01, 1.0), 4),
                accuracy=accuracy,
                metrics=json.dumps({"accuracy": accuracy}),
                signers=json.dumps([signer]),
                verified_by=json.dumps([signer]),
                parent=rng.choice(ids) if ids and rng.random() < 0.3 else None,
            )
            ids.append(content_id)
            rows.append(tuple(row[c] for c in columns))
        placeholders = ", ".join("?" * len(columns))
        db.executemany(f"INSERT INTO tickets VALUES ({placeholders})", rows)
    db.close()
    return count


# ---------------------------------------------------------------- the server


@contextmanager
def serve(root: Path, log: Path) -> Iterator[str]:
    """`ticket hub serve` in its own process on a free loopback port; killed by pid after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "ticket_cli.cli", "hub", "serve", "--root", str(root)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=output, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/api/v1/tickets?limit=1", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the hub did not start; see {log}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- measures


def bench_search(client: HubClient, repeats: int, signer: str) -> list[dict[str, Any]]:
    queries = [
        ("one dataset (an answer holds at most 1,000)", SearchQuery(dataset="mnist")),
        (
            "dataset + model + density range + min accuracy",
            SearchQuery(
                dataset="mnist",
                model="lenet-300-100",
                min_density=0.05,
                max_density=0.2,
                min_accuracy=0.9,
            ),
        ),
        ("signer (a JSON array in each row)", SearchQuery(signer=signer, max_density=0.1)),
        ("model, sparsest 10% of density", SearchQuery(model="conv-6", max_density=0.1)),
    ]
    measured = []
    for label, query in queries:
        found = len(client.search(query))  # warm: the first answer also opens the index
        times = _timed(lambda query=query: client.search(query), repeats)
        measured.append({"query": label, "results": found, **_percentiles(times)})
        print(f"search {label}: {found} results, p50 {measured[-1]['p50_ms']:.1f} ms", flush=True)
    return measured


def bench_pull(
    client: HubClient, real: dict[str, Path], keys: list[bytes], repeats: int, out: Path
) -> list[dict[str, Any]]:
    out.mkdir(parents=True)
    measured = []
    for name, path in real.items():
        content_id = read_ticket(path, allow_unsigned=True).content_id
        size = path.stat().st_size

        def pull(content_id: str = content_id, name: str = name) -> None:
            download = fetch_verified(client, content_id, keys)
            write_download(download, out / f"{name}.ticket", overwrite=True)

        pull()
        times = _timed(pull, repeats)
        median_s = statistics.median(times)
        measured.append(
            {
                "ticket": name,
                "bytes": size,
                "median_ms": 1000 * median_s,
                "mb_per_s": size / median_s / 1e6,
            }
        )
        print(f"pull {name}: {size:,} B, {size / median_s / 1e6:.1f} MB/s", flush=True)
    return measured


def bench_page(url: str, content_id: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    chromium, driver = _browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium never looks for a driver online
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1000,1400")
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    ready = (By.CSS_SELECTOR, "body[data-ready]")
    measured = []
    try:
        for label, page in [
            ("search page, no filter (its first 200 rows)", "/"),
            ("card page (plot, lineage, download)", f"/tickets/{content_id}"),
        ]:
            in_page: list[float] = []

            def load(page: str = page, in_page: list[float] = in_page) -> None:
                browser.get(url + page)
                body = WebDriverWait(browser, 30, poll_frequency=0.005).until(
                    expected_conditions.presence_of_element_located(ready)
                )
                in_page.append(float(body.get_attribute("data-ready-ms") or "nan") / 1000)

            load()
            in_page.clear()
            times = _timed(load, args.page_loads)
            measured.append(
                {
                    "page": label,
                    **_percentiles(times),
                    **{f"in_page_{k}": v for k, v in _percentiles(in_page).items()},
                }
            )
            print(f"page {label}: p50 {measured[-1]['in_page_p50_ms']:.0f} ms", flush=True)
    finally:
        browser.quit()
    return measured


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        sys.exit("bench/hub.py needs chromium and chromedriver: run `make browser`")
    return chromium, driver


def _timed(action: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def _percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(times), "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * p99}


# ---------------------------------------------------------------- report


def report(document: dict[str, Any]) -> str:
    lines = [
        "# The ticket hub: search, verified pull, page load",
        "",
        f"Produced by: `{document['command']}` ({document['machine']}).",
        "",
        f"One `ticket hub serve` process on loopback; its index holds {document['cards']:,} "
        f"cards: {document['real_tickets']} real signed tickets with signed cards, published "
        f"through the hub's checks by `hub.seed.seed_hub` ({document['seed_s']:.2f} s), and "
        f"{document['cards'] - document['real_tickets']:,} index rows derived from them in one "
        f"SQLite transaction ({document['derived_rows_s']:.2f} s), each with its own content id "
        f"and a spread of {len(DATASETS)} datasets, {len(MODELS)} models, densities, "
        "accuracies, signers and parents. Times are the client's (`HubClient`, what "
        "`ticket search/pull --hub` use): request, JSON decoding and, for a pull, the checks.",
        "",
        "## Search latency",
        "",
        "| query | results | n | p50 | p99 |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {s['query']} | {s['results']:,} | {s['n']} | {s['p50_ms']:.1f} ms "
            f"| {s['p99_ms']:.1f} ms |"
            for s in document["search"]
        ),
        "",
        "## Pull throughput, with verification",
        "",
        "Entry, bundle and card downloaded; content id, signature and card checked; both "
        "written atomically (fsync). Median of the runs. A small ticket's time is three "
        "requests and two fsyncs, not bandwidth; the dense LeNet-300-100 shows the rate.",
        "",
        "| ticket | bytes | median | throughput |",
        "|---|---:|---:|---:|",
        *(
            f"| {p['ticket']} | {p['bytes']:,} | {p['median_ms']:.1f} ms "
            f"| {p['mb_per_s']:.1f} MB/s |"
            for p in document["pull"]
        ),
        "",
        "## Page load in headless chromium",
        "",
        "In the page: from navigation start until its script has drawn what it fetched "
        "(`performance.now()` when it sets `body[data-ready]`); from outside: selenium's "
        "`get()` until that attribute is seen. One browser for all loads: the static files "
        "may come from its HTTP cache, the API's answers (no validators) do not.",
        "",
        "| page | n | in the page p50 | p99 | from outside p50 | p99 |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {p['page']} | {p['n']} | {p['in_page_p50_ms']:.0f} ms "
            f"| {p['in_page_p99_ms']:.0f} ms | {p['p50_ms']:.0f} ms | {p['p99_ms']:.0f} ms |"
            for p in document["page"]
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
