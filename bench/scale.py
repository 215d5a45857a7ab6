"""Fleet scale (issue 13), its first parts: what the server's unmasking costs as the cohort
grows, and the bytes a device sends under secure aggregation with a fixed q against levels
chosen per round (secagg-target-error), with the accuracy each reaches.

1. `unmask`: one secure round in process (pure layer, ticket/secagg, no Flower), k = 100,000
   values, n devices of which 10% are lost before masking (their masks come off with their
   neighbours' shares). Server CPU time (process time, one core) by phase: adding the masked
   vectors, building the unmask requests, taking the responses, and result() (rebuilding
   secrets, removing masks). `--code-root` imports `ticket` from another checkout instead,
   so an older commit is measured by the same script on the same machine.
2. `bytes`: MNIST, lenet-300-100 ticket at density 0.1, 100 virtual devices, 10 per round,
   on Flower's Simulation Engine (bench/comm.py's machinery: the project's ServerApp and
   ClientApp). Arms: plaintext float32, secure with q = 16384, secure with levels chosen per
   round for target errors 1e-3 and 1e-2. Uplink and downlink bytes per device per round as
   the round log counts them, final and best server-side accuracy.

    python bench/scale.py unmask                              # this tree, n = 100 and 1000
    python bench/scale.py unmask --code-root /path/to/older/checkout --label "d92e2db"
    python bench/scale.py bytes --rounds 50                   # ~15 min on 2 shared cores

Results: bench/results/scale.{json,md}; each part keeps the command that made it, and a
rerun replaces only its own part (an unmask run only the rows of its label). Not measured
here yet (issue 13): throughput at 10 / 100 / 1,000 devices per round on the Simulation
Engine, FedAvg as the anchor, server memory and CPU per round, the downlink in float16 /
int8, and privacy at scale.
"""

import argparse
import json
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
COHORTS = (100, 1000)
LENGTH = 100_000
DROPPED = 0.1
TARGETS = (1e-3, 1e-2)


def unmask_round(n: int, *, seed: int) -> dict[str, Any]:
    """One secure round at cohort n: the server's CPU time by phase (clients untimed)."""
    import numpy as np

    from ticket import crypto, secagg

    params = secagg.SecAggParams(clip=0.25, levels=2**14)
    nodes = tuple(range(1, n + 1))
    rng = np.random.default_rng(seed)
    inputs = {u: np.clip(rng.normal(0, 0.05, LENGTH), -0.25, 0.25) for u in nodes}
    fleet_private, fleet_public = crypto.generate_signing_key()
    identity_keys = {u: crypto.generate_identity_key() for u in nodes}
    roster = {}
    for u, key in identity_keys.items():
        identity = crypto.identity_public_key(key)
        roster[u] = secagg.Enrolled(identity, secagg.certify(fleet_private, u, identity))
    trust = secagg.PeerTrust(fleet_public)
    server = secagg.ServerRound(run_id=1, round=2, params=params, length=LENGTH, roster=roster)
    secrets, states = {}, {}
    for u in nodes:
        advert, secrets[u] = secagg.advertise_keys(
            run_id=1, round=2, node_id=u, identity_key=identity_keys[u]
        )
        server.add_advert(u, advert)
    for u, bundle in server.key_bundles().items():
        shares, states[u] = secagg.distribute_shares(bundle, secrets[u], trust=trust)
        server.add_share_bundle(u, shares)
    lost = set(random.Random(seed).sample(nodes, int(DROPPED * n)))
    masked = {}
    for u, request in server.mask_requests().items():
        vector, states[u] = secagg.mask_input(
            request, states[u], inputs[u], rng=np.random.default_rng(u)
        )
        if u not in lost:
            masked[u] = vector
    names = ("add_masked_ms", "unmask_requests_ms", "responses_ms", "result_ms")
    phases = dict.fromkeys(names, 0.0)
    for u, vector in masked.items():
        started = time.process_time()
        server.add_masked_input(u, vector)
        phases["add_masked_ms"] += time.process_time() - started
    started = time.process_time()
    requests = server.unmask_requests()
    phases["unmask_requests_ms"] = time.process_time() - started
    replies = {}
    for u, request in requests.items():
        replies[u], states[u] = secagg.reveal_shares(request, states[u])
    for u, reply in replies.items():
        started = time.process_time()
        server.add_unmask_response(u, reply)
        phases["responses_ms"] += time.process_time() - started
    started = time.process_time()
    result = server.result()
    phases["result_ms"] = time.process_time() - started
    phases = {name: 1000 * seconds for name, seconds in phases.items()}
    # The sum itself, so two code versions can be checked to agree bit for bit.
    digest = int(result.total.astype(np.int64) @ np.arange(1, LENGTH + 1, dtype=np.int64))
    return {
        "n": n,
        "k": LENGTH,
        "dropped_before_mask": len(lost),
        "degree": params.degree(n),
        "modulus_bits": result.bits,
        **phases,
        "server_unmask_ms": sum(phases.values()),
        "sum_digest": digest,
    }


def run_unmask(args: argparse.Namespace) -> dict[str, Any]:
    if args.code_root is not None:
        sys.path.insert(0, str(args.code_root.resolve()))
    else:
        sys.path.insert(0, str(ROOT))
    import ticket

    label = args.label or ("this tree" if args.code_root is None else str(args.code_root))
    rows = []
    for n in args.cohorts:
        row = unmask_round(n, seed=args.seed)
        row["code"] = label
        print(
            f"{label}: n={n:>5}: server {row['server_unmask_ms']:.0f} ms "
            f"(add {row['add_masked_ms']:.0f}, result {row['result_ms']:.0f})",
            flush=True,
        )
        rows.append(row)
    return {"label": label, "ticket_from": str(Path(ticket.__file__).parents[1]), "rows": rows}


def run_bytes(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from bench.comm import MNIST_FIND, Arm, Task, run_task
    from ticket.bundle import read_ticket

    secure = {"secagg": True, "secagg_clip": 1.0}  # bench/comm.py fed-mnist-secagg's clip
    task = Task(
        name="scale-bytes",
        dataset="mnist",
        nodes=100,
        per_round=10,
        rounds=args.rounds,
        target=0.97,
        tickets={"ticket": [*MNIST_FIND, "--target-density", "0.1"]},
        arms=(
            Arm("ticket float32", "ticket"),
            Arm("ticket + secagg, q = 16384", "ticket", training=secure),
            *(
                Arm(
                    f"ticket + secagg, target {target:g}",
                    "ticket",
                    training={**secure, "secagg_target_error": target},
                )
                for target in TARGETS
            ),
        ),
        training={"local_epochs": 5, "batch_size": 10, "lr": 0.1, "optimizer": "sgd"},
        simulation={"sim_partition": "shards", "sim_partition_shards": 2},
    )
    result = run_task(task, args.work, args.rounds, args.seed)
    ticket = read_ticket(Path(result["arms"][0]["ticket"]["path"]), allow_unsigned=True)
    dense = sum(int(weights.size) for weights in ticket.weights.values())
    result["dense_float32_bytes"] = 48 + 4 * dense  # ticket.codec's header + the values
    for arm in result["arms"]:  # what the rounds used (the last round's; one cohort size)
        lines = _secagg_lines(args.work, arm)
        arm["levels"] = lines[-1].get("levels") if lines else None
        arm["bits"] = lines[-1].get("bits") if lines else None
    return result


def _secagg_lines(work: Path, arm: dict[str, Any]) -> list[dict[str, Any]]:
    """The `secagg` part of each round line of an arm's run log (none in plaintext)."""
    name = arm["arm"]["name"].replace(" ", "_").replace("/", "_")
    log = work / "runs" / "scale-bytes" / name / "rounds.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [line["secagg"] for line in lines if line.get("secagg")]


def write_markdown(document: dict[str, Any], path: Path) -> None:
    lines = [
        "# Fleet scale (issue 13): first measurements",
        "",
        "Not here yet: the 1,000-device Simulation Engine run and throughput at 10 / 100 / "
        "1,000 devices per round with FedAvg as the anchor, server memory and CPU per round, "
        "a smaller downlink (float16 / int8 global values), runs at more than 10 devices per "
        "round, and privacy at scale (see issue 13). The "
        "issue's uplink goal, at most 1/40 of dense float32 at equal accuracy, is not met by "
        "per-round levels alone at 10 devices per round (below).",
        "",
    ]
    unmask = document.get("unmask")
    if unmask:
        lines += [
            "## Server unmasking against the cohort size",
            "",
            f"One secure round in process (ticket/secagg), k = {LENGTH:,} values, 10% of the "
            "devices lost before masking; server CPU time (process time, one core, on 2 cores "
            "shared with other jobs) by phase. A row whose code is a commit ran this script "
            "with `--code-root` on a checkout of it (`git worktree add --detach DIR COMMIT`). "
            "Equal sum digests: both code versions give the same sum, bit for bit.",
            "",
        ]
        for run in unmask["runs"]:
            lines += [f"- `{run['command']}` ({run['machine']})"]
        lines += [
            "",
            "| code | n | degree | bits | add masked ms | unmask requests ms | responses ms "
            "| result ms | server total ms | sum digest |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in unmask["runs"]:
            for row in run["rows"]:
                lines.append(
                    f"| {row['code']} | {row['n']} | {row['degree']} | {row['modulus_bits']} "
                    f"| {row['add_masked_ms']:.0f} | {row['unmask_requests_ms']:.0f} "
                    f"| {row['responses_ms']:.0f} | {row['result_ms']:.0f} "
                    f"| {row['server_unmask_ms']:.0f} | {row['sum_digest'] % 10**12:012d} |"
                )
        lines.append("")
    result = document.get("bytes")
    if result:
        dense = result["dense_float32_bytes"]
        task = result["task"]
        lines += [
            "## Bytes per device under secure aggregation: fixed q against per-round levels",
            "",
            f"Produced by: `{result['command']}` ({result['machine']}).",
            "",
            f"{task['dataset']}, {task['nodes']} devices, {task['per_round']} per round, "
            f"{result['rounds']} rounds, lenet-300-100 ticket at density 0.1; local training "
            f"{json.dumps(task['training'])}; accuracy on the 10k test rows (server). Dense "
            f"float32 uplink for scale: {dense:,} B per device per round (the whole network's "
            "values, computed, not run).",
            "",
            "| arm | levels | bits | final acc | best acc | mean acc, last 10 rounds "
            "| final vs float32 ticket (pp) | up B/device/round | up vs dense float32 "
            "| down B/device/round | run wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in result["arms"]:
            last = [r["accuracy"] for r in arm["rounds"][-10:] if r["accuracy"] is not None]
            lines.append(
                f"| {arm['arm']['name']} | {arm['levels'] or '-'} | {arm['bits'] or '-'} "
                f"| {100 * arm['final_accuracy']:.2f} | {100 * arm['best_accuracy']:.2f} "
                f"| {100 * sum(last) / len(last):.2f} "
                f"| {arm['final_vs_dense_pp']:+.2f} | {arm['up_bytes_per_device']:,} "
                f"| 1/{dense / arm['up_bytes_per_device']:.1f} "
                f"| {arm['down_bytes_per_device']:,} | {arm['run_wall_s']:.0f} |"
            )
        lines += [
            "",
            "Up = the masked vector plus the protocol's own messages (key advert, shares, "
            "unmask response) as the round log counts them; down = the float32 global values "
            "plus the protocol's requests. Two label-sorted shards per device make the "
            "accuracy swing by about a point from round to round: read the last-10 mean beside "
            "the final one. Levels and bits are what the rounds used (every round had the "
            "same cohort size, so the same choice).",
            "",
        ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    unmask = parts.add_parser("unmask", help="server unmasking CPU time against n")
    unmask.add_argument("--cohorts", type=int, nargs="+", default=list(COHORTS))
    unmask.add_argument("--code-root", type=Path, help="import ticket from this checkout")
    unmask.add_argument("--label", help='rows are named by this (default "this tree")')
    byte_part = parts.add_parser("bytes", help="MNIST bytes per device and accuracy")
    byte_part.add_argument("--rounds", type=int, default=50)
    byte_part.add_argument("--work", type=Path, default=Path("/tmp/ticketfleet-bench-scale"))
    for part in (unmask, byte_part):
        part.add_argument("--seed", type=int, default=0)
        part.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    made_by = {
        "command": shlex.join(["python", "bench/scale.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}",
    }
    json_path = args.out / "scale.json"
    document = json.loads(json_path.read_text()) if json_path.exists() else {}
    started = time.perf_counter()
    if args.part == "unmask":
        run = {**run_unmask(args), **made_by}
        runs = [r for r in document.get("unmask", {}).get("runs", []) if r["label"] != run["label"]]
        document["unmask"] = {"runs": [*runs, run]}
    else:
        document["bytes"] = {**run_bytes(args), **made_by}
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    write_markdown(document, args.out / "scale.md")


if __name__ == "__main__":
    main()
