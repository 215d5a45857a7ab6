"""Secure aggregation's cost: bits on the wire, client crypto, server unmask time, round trips,
and a real loopback deployment (secure vs plaintext wall time and accuracy).

1. In process, pure layer (ticket/secagg, no Flower): one full round for k = 10k values and
   n in {5, 20, 100} devices, and k = 100k with n in {5, 20, 100, 1000}. Uplink per device
   per round = everything a device sends in a steady-state round (masked vector + next
   round's key advert + share bundle +
   unmask response), against the plaintext packed float32 update (32 bits/value) and Flower's
   SecAgg+ (dense int64: 64 bits/value, FLOWER.md). Client crypto = CPU time of a device's four
   protocol steps (keys, shares, quantise + mask, reveal). Server unmask time = CPU time of
   adding the masked vectors, building the unmask requests, taking the responses and
   removing the masks, with no dropout and with 10% of the devices lost before masking.
   Client DP = CPU time of distributed differential privacy's extra step on one device (clip
   to an L2 norm, add its Gaussian share of the noise; ticket/secagg/privacy.py).
2. In process, Flower glue (InProcessGrid, heart-uci, 4 devices, 3 rounds): message round
   trips per round as counted in the round log.
3. Loopback (a real SuperLink and 4 SuperNodes): the heart ticket for 3 rounds, plaintext and
   secure, same seed: wall time per round and final accuracy on the pooled held-out rows.

    python bench/secagg.py                 # everything (~7 min on 2 cores)
    python bench/secagg.py --no-loopback   # parts 1 and 2 only (~3 min)

Results: bench/results/secagg.{json,md}, with the command that made them.
"""

import argparse
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/secagg.py` from a checkout

from ticket import crypto, secagg  # noqa: E402
from ticket.codec import HEADER_BYTES  # noqa: E402
from ticket.secagg import SecAggParams, ServerRound  # noqa: E402
from ticket.secagg.privacy import SkellamParams, privatize  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PARAMS = SecAggParams(clip=0.25, levels=2**14)


def one_round(n: int, k: int, *, dropped: int, seed: int) -> dict[str, Any]:
    """A full round in process: bytes each way, client CPU per step, server CPU, error."""
    rng = np.random.default_rng(seed)
    nodes = tuple(range(1, n + 1))
    inputs = {u: np.clip(rng.normal(0, 0.05, k), -0.25, 0.25).astype(np.float32) for u in nodes}
    # Enrolled as fleet-server enrolls (keys made outside the timing): every advert signed,
    # every neighbour's signature and certificate checked, as in a real fleet.
    fleet_private, fleet_public = crypto.generate_signing_key()
    identity_keys = {u: crypto.generate_identity_key() for u in nodes}
    roster = {}
    for u, key in identity_keys.items():
        identity = crypto.identity_public_key(key)
        roster[u] = secagg.Enrolled(identity, secagg.certify(fleet_private, u, identity))
    trust = secagg.PeerTrust(fleet_public)
    server = ServerRound(run_id=1, round=2, params=PARAMS, length=k, roster=roster)
    cpu: dict[int, float] = dict.fromkeys(nodes, 0.0)
    up: dict[int, int] = dict.fromkeys(nodes, 0)
    down: dict[int, int] = dict.fromkeys(nodes, 0)
    secrets, states = {}, {}
    for u in nodes:
        t = time.process_time()
        advert, secrets[u] = secagg.advertise_keys(
            run_id=1, round=2, node_id=u, identity_key=identity_keys[u]
        )
        cpu[u] += time.process_time() - t
        up[u] += len(advert)
        server.add_advert(u, advert)
    for u, bundle in server.key_bundles().items():
        down[u] += len(bundle)
        t = time.process_time()
        shares, states[u] = secagg.distribute_shares(bundle, secrets[u], trust=trust)
        cpu[u] += time.process_time() - t
        up[u] += len(shares)
        server.add_share_bundle(u, shares)
    lost = set(random.Random(seed).sample(nodes, dropped))
    server_cpu = 0.0
    masked_bytes = 0
    for u, request in server.mask_requests().items():
        down[u] += len(request)
        t = time.process_time()
        masked, states[u] = secagg.mask_input(
            request, states[u], inputs[u], rng=np.random.default_rng(u)
        )
        cpu[u] += time.process_time() - t
        if u in lost:
            continue
        up[u] += len(masked)
        masked_bytes = len(masked)
        t = time.process_time()
        server.add_masked_input(u, masked)
        server_cpu += time.process_time() - t
    t = time.process_time()
    requests = server.unmask_requests()
    server_cpu += time.process_time() - t
    for u, request in requests.items():
        down[u] += len(request)
        t = time.process_time()
        reply, states[u] = secagg.reveal_shares(request, states[u])
        cpu[u] += time.process_time() - t
        up[u] += len(reply)
        t = time.process_time()
        server.add_unmask_response(u, reply)
        server_cpu += time.process_time() - t
    t = time.process_time()
    result = server.result()
    server_cpu += time.process_time() - t
    # Distributed DP's extra client work (clip, round within the bound, Skellam share), timed
    # apart from the crypto.
    dp = SkellamParams.plan(noise_multiplier=1.0, clip_norm=1.0, length=k, min_survivors=n)
    t = time.process_time()
    rng = np.random.default_rng(seed)
    privatize(inputs[1], dp, bits=result.bits, rounding_rng=rng, noise_rng=rng)
    dp_cpu = time.process_time() - t
    survivors = sorted(result.survivors)
    exact = np.mean([inputs[u].astype(np.float64) for u in survivors], axis=0)
    error = secagg.quantization_error(result.mean(), exact)
    live = [u for u in nodes if u not in lost]
    uplink = float(np.mean([up[u] for u in live]))
    return {
        "n": n,
        "k": k,
        "dropped_before_mask": dropped,
        "degree": PARAMS.degree(n),
        "modulus_bits": result.bits,
        "masked_vector_bytes": masked_bytes,
        "uplink_bytes_per_device": uplink,
        "downlink_protocol_bytes_per_device": float(np.mean([down[u] for u in live])),
        "uplink_bits_per_value": 8 * uplink / k,
        "masked_bits_per_value": 8 * masked_bytes / k,
        "plaintext_float32_bits_per_value": 8 * (HEADER_BYTES + 4 * k) / k,
        "flower_secaggplus_bits_per_value": 64.0,
        "client_crypto_ms": 1000 * float(np.mean([cpu[u] for u in live])),
        "client_crypto_ms_max": 1000 * max(cpu[u] for u in live),
        "server_unmask_ms": 1000 * server_cpu,
        "client_dp_ms": 1000 * dp_cpu,
        "mean_error_max": error.max_abs,
        "mean_error_mean": error.mean_abs,
    }


def pure_layer(seed: int) -> list[dict[str, Any]]:
    rows = []
    for k, cohorts in ((10_000, (5, 20, 100)), (100_000, (5, 20, 100, 1000))):
        for n in cohorts:
            for dropped in (0, max(1, n // 10)):
                row = one_round(n, k, dropped=dropped, seed=seed)
                row["server_ms_per_n_log2_n"] = row["server_unmask_ms"] / (n * math.log2(n))
                print(
                    f"k={k:>6} n={n:>3} dropped={dropped:>2}: {row['uplink_bits_per_value']:.1f} "
                    f"bits/value up, client {row['client_crypto_ms']:.1f} ms, "
                    f"server {row['server_unmask_ms']:.0f} ms",
                    flush=True,
                )
                rows.append(row)
    return rows


def glue_round_trips(work: Path) -> dict[str, Any]:
    """Round trips per round from the round log of an in-process secure run (Flower glue)."""
    from edge_daemon import client_app
    from server.secagg_round import SecAggPlan, SecurePackedFedAvg
    from server.strategy import RoundPlan
    from server.training_run import run_resumable
    from tests.inprocess import InProcessGrid, find_ticket, heart_nodes, server_identity
    from ticket.bundle import read_ticket
    from ticket.packing import PackLayout
    from ticket.train_config import TrainConfig

    path = find_ticket(work / "glue.ticket", density=0.1)
    ticket = read_ticket(path, allow_unsigned=True)
    layout = PackLayout.from_ticket(ticket)
    plan = RoundPlan(ticket_id=ticket.content_id, train=TrainConfig(1, 32, 1e-3))
    strategy = SecurePackedFedAvg(layout, plan, SecAggPlan(), fraction_evaluate=0.0)
    shutil.rmtree(work / "glue-run", ignore_errors=True)
    random.seed(0)
    with server_identity():
        run_resumable(
            strategy,
            InProcessGrid(client_app.app, heart_nodes(path)),
            layout.pack(ticket.weights),
            run_dir=work / "glue-run",
            num_rounds=3,
            timeout=60,
        )
    return {str(r): record.round_trips for r, record in sorted(strategy.rounds.items())}


def loopback(work: Path, rounds: int, seed: int) -> dict[str, Any]:
    """The heart ticket on a real deployment, plaintext then secure."""
    from bench.comm import TASKS, find_tickets
    from loopback.demo import heart_node_configs, round_rows, run_config
    from loopback.launcher import Loopback

    task = TASKS["fed-heart"]
    ticket = Path(find_tickets(task, work, seed)["ticket"]["path"])
    arms: dict[str, Any] = {}
    for arm, is_secure in (("plaintext", False), ("secure", True)):
        run_dir = work / f"loopback-{arm}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(work / "loopback", ignore_errors=True)
        config = run_config(
            ticket,
            run_dir=run_dir,
            num_rounds=rounds,
            min_nodes=4,
            fraction_evaluate=0.0,  # the server scores the pooled held-out rows
            round_timeout_s=120.0,
            seed=seed,
            secagg=is_secure,
            **task.training,
        )
        with Loopback(work / "loopback", ROOT, heart_node_configs(ticket, 4)) as fleet:
            outcome = fleet.run(config, timeout_s=600)
        if not outcome.completed:
            sys.exit(f"loopback {arm}: run {outcome.run_id} ended {outcome.status}")
        rows = round_rows(outcome)
        last = outcome.rounds[-1]
        arms[arm] = {
            "rounds": rows,
            "round_wall_s": [row["wall-s"] for row in rows],
            "round_trips": [line.get("round_trips", {}).get("total") for line in outcome.rounds],
            "run_wall_s": outcome.wall_s,
            "final_accuracy": last["server_eval"]["accuracy"],
            "final_auc": last["server_eval"]["auc"],
            "participants": [len(line["participants"]) for line in outcome.rounds],
        }
        print(f"loopback {arm}: {arms[arm]['round_wall_s']} s/round", flush=True)
    plain, secure = arms["plaintext"], arms["secure"]
    arms["accuracy_gap_pp"] = 100 * (secure["final_accuracy"] - plain["final_accuracy"])
    arms["ticket"] = str(ticket)
    return arms


def write_markdown(document: dict[str, Any], path: Path) -> None:
    lines = [
        "# Secure aggregation: bits on the wire, CPU, round trips, accuracy",
        "",
        f"Produced by: `{document['command']}` ({document['machine']}, "
        f"{document['wall_s']:.0f} s). Parameters: clip {PARAMS.clip}, q = {PARAMS.levels} "
        "levels; inputs N(0, 0.05) clipped; CPU times are process time on one core.",
        "",
        "## Per device per round, in process (pure layer)",
        "",
        "| k | n | dropped | degree | bits (mod) | masked bits/value | uplink bits/value "
        "| float32 bits/value | SecAgg+ bits/value | client crypto ms | client DP ms "
        "| server unmask ms | server us / (n log2 n) | mean error max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in document["pure"]:
        lines.append(
            f"| {row['k']} | {row['n']} | {row['dropped_before_mask']} | {row['degree']} "
            f"| {row['modulus_bits']} | {row['masked_bits_per_value']:.2f} "
            f"| {row['uplink_bits_per_value']:.2f} "
            f"| {row['plaintext_float32_bits_per_value']:.2f} "
            f"| {row['flower_secaggplus_bits_per_value']:.0f} "
            f"| {row['client_crypto_ms']:.1f} | {row['client_dp_ms']:.1f} "
            f"| {row['server_unmask_ms']:.0f} "
            f"| {1000 * row['server_ms_per_n_log2_n']:.0f} | {row['mean_error_max']:.2e} |"
        )
    lines += [
        "",
        "Uplink = masked vector + next round's key advert + share bundle + unmask response.",
        "",
        "## Message round trips per round (Flower glue, in process, 3 rounds)",
        "",
        "| round | trips by step |",
        "|---|---|",
    ]
    for r, trips in document["round_trips"].items():
        lines.append(f"| {r} | {json.dumps(trips, sort_keys=True)} |")
    lines += ["", "Round 1 includes the one-time key setup (2 trips).", ""]
    deployment = document.get("loopback")
    if deployment:
        plain, secure = deployment["plaintext"], deployment["secure"]
        lines += [
            "## Loopback deployment: heart ticket, 4 devices, 3 rounds",
            "",
            "| arm | round wall s | round trips | participants | final accuracy | final AUC "
            "| run wall s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, arm in (("plaintext", plain), ("secure", secure)):
            walls = ", ".join(f"{wall:.1f}" for wall in arm["round_wall_s"])
            lines.append(
                f"| {name} | {walls} | {arm['round_trips']} | {arm['participants']} "
                f"| {100 * arm['final_accuracy']:.2f}% | {arm['final_auc']:.3f} "
                f"| {arm['run_wall_s']:.0f} |"
            )
        lines += [
            "",
            f"Accuracy gap (secure - plaintext): {deployment['accuracy_gap_pp']:+.2f} pp.",
            "",
        ]
    path.write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--no-loopback", action="store_true")
    parser.add_argument("--loopback-rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-secagg"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    signal.signal(signal.SIGTERM, _interrupt)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    document: dict[str, Any] = {
        "command": shlex.join(["python", "bench/secagg.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "params": {"clip": PARAMS.clip, "levels": PARAMS.levels},
        "pure": pure_layer(args.seed),
        "round_trips": glue_round_trips(args.work),
        "loopback": None
        if args.no_loopback
        else loopback(args.work, args.loopback_rounds, args.seed),
    }
    document["wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "secagg.json").write_text(json.dumps(document, indent=2) + "\n")
    write_markdown(document, args.out / "secagg.md")
    print((args.out / "secagg.md").read_text())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    main()
