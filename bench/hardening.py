"""Hardening probes (issue 12): tamper with inputs bit by bit, count clean refusals and wrong
acceptances; and the cost of what refuses them.

1. Secure aggregation, signed key adverts (ticket/secagg/identity.py): one whole round in
   process, 3 enrolled devices, per trial one bit flipped in
   - every bit of device 2's key advert past the header (keys, identity key, signature), or
   - every bit of device 1's relayed key bundle past the header (parameters, cohort, and each
     neighbour's keys, identity key, signature, certificate flag and certificate), or
   - every bit of device 2's share bundle past the header (its round view, its sealed shares),
     or of device 1's unmask response (the shares it reveals).
   Server and devices behave like the glue: a refused message is left out, a device that
   refuses sits the round out. Outcomes: refused cleanly (a named error, any TicketError:
   SecAggError, IntegrityError; then either the
   survivors' exact sum or RoundAbortedError), accepted with the exact sum (the flip changed
   nothing the round depends on), accepted wrongly (a sum that is not the survivors' exact
   sum, or any other exception). A control row flips device 2's mask key with the checks
   switched off, as before issue 12: the probe's teeth.
2. Every other input that comes in from outside (bench/hardening_inputs.py): server.yaml and
   daemon.yaml, a readings CSV, a signed ticket bundle and codec payloads, each flipped bit by
   bit and replaced by hostile documents, through the product's own readers.
3. Cost of the signatures: CPU per device per round (sign one advert, check k neighbours'
   signatures and certificates) for n = 10, 100, 1000 (k = the round graph's degree), the
   server's check of n adverts, and the bytes they add.

    python bench/hardening.py             # everything (~10 min on 2 cores)
    python bench/hardening.py --every 7   # every 7th bit only (quick look)

Results: bench/results/hardening.{json,md}, with the command that made them.
"""

import argparse
import json
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/hardening.py` from a checkout

from bench.hardening_inputs import flip, input_probes  # noqa: E402
from ticket import crypto, secagg  # noqa: E402
from ticket.errors import TicketError  # noqa: E402
from ticket.secagg import aggregator, identity, node  # noqa: E402
from ticket.secagg.messages import HEADER, SignedKeys  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PARAMS = secagg.SecAggParams(clip=1.0, levels=2**10)
NODES = (1, 2, 3)
LENGTH = 8
RUN, ROUND = 7, 3
FLEET_PRIVATE, FLEET_PUBLIC = crypto.generate_signing_key()
IDENTITY_KEYS = {u: crypto.generate_identity_key() for u in NODES}


def _enrolled(u: int) -> secagg.Enrolled:
    point = crypto.identity_public_key(IDENTITY_KEYS[u])
    return secagg.Enrolled(point, secagg.certify(FLEET_PRIVATE, u, point))


ROSTER = {u: _enrolled(u) for u in NODES}
TRUST = secagg.PeerTrust(FLEET_PUBLIC)
Tap = Callable[[str, int, bytes], bytes]


@dataclass
class Outcome:
    refused: bool = False  # some step raised a named error (a TicketError)
    exact: bool = False  # the round gave the survivors' exact sum, or aborted by name
    survivors: tuple[int, ...] = ()
    errors: list[str] = field(default_factory=list)


def one_round(tap: Tap) -> Outcome:
    """A whole round; `tap(step, node, bytes)` delivers (or alters) each advert, key bundle,
    share bundle and unmask response."""
    entropy = random.Random(0).randbytes
    server = secagg.ServerRound(
        run_id=RUN, round=ROUND, params=PARAMS, length=LENGTH, roster=ROSTER
    )
    outcome = Outcome()
    secrets, states, levels = {}, {}, {}
    inputs = {u: np.random.default_rng(u).uniform(-1, 1, LENGTH) for u in NODES}

    def attempt(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except TicketError as error:
            outcome.refused = True
            outcome.errors.append(type(error).__name__)
            return None

    for u in NODES:
        advert, secrets[u] = secagg.advertise_keys(
            run_id=RUN, round=ROUND, node_id=u, identity_key=IDENTITY_KEYS[u], entropy=entropy
        )
        delivered = tap("advert", u, advert)
        attempt(lambda u=u, delivered=delivered: server.add_advert(u, delivered))
    try:
        bundles = server.key_bundles()
        for u, bundle in bundles.items():
            relayed = tap("bundle", u, bundle)
            got = attempt(
                lambda u=u, relayed=relayed: secagg.distribute_shares(
                    relayed, secrets[u], trust=TRUST, entropy=entropy
                )
            )
            if got is not None:
                shares, states[u] = got
                sent = tap("shares", u, shares)
                attempt(lambda u=u, sent=sent: server.add_share_bundle(u, sent))
        for u, request in server.mask_requests().items():
            levels[u] = secagg.quantize(inputs[u], PARAMS, np.random.default_rng(u))
            masked, states[u] = secagg.mask_input(
                request, states[u], inputs[u], rng=np.random.default_rng(u)
            )
            server.add_masked_input(u, masked)
        for u, request in server.unmask_requests().items():
            answer = attempt(lambda u=u, request=request: secagg.reveal_shares(request, states[u]))
            if answer is not None:
                reply, states[u] = answer
                sent = tap("reveal", u, reply)
                attempt(lambda u=u, sent=sent: server.add_unmask_response(u, sent))
        result = server.result()
    except secagg.RoundAbortedError as error:
        outcome.errors.append(type(error).__name__)
        outcome.refused = outcome.exact = True
        return outcome
    expected = sum((levels[u].astype(np.int64) for u in result.survivors), np.zeros(LENGTH))
    outcome.exact = bool(np.array_equal(result.total.astype(np.int64), expected))
    outcome.survivors = result.survivors
    return outcome


def _message(step: str, target: int) -> bytes:
    seen: dict[str, bytes] = {}

    def record(got_step: str, u: int, data: bytes) -> bytes:
        if (got_step, u) == (step, target):
            seen["data"] = data
        return data

    one_round(record)
    return seen["data"]


@contextmanager
def checks_off() -> Iterator[None]:
    """The protocol as before issue 12: no advert is checked by anyone."""
    saved = (node.check_peer, aggregator.check_advert, aggregator.check_enrolled)
    node.check_peer = lambda *args, **kwargs: None  # type: ignore[assignment]
    aggregator.check_advert = lambda *args, **kwargs: None  # type: ignore[assignment]
    aggregator.check_enrolled = lambda n, identity, roster: roster[n]  # type: ignore[assignment]
    try:
        yield
    finally:
        node.check_peer, aggregator.check_advert, aggregator.check_enrolled = saved


def probe(name: str, step: str, target: int, bits: Sequence[int]) -> dict[str, Any]:
    """Flip each of `bits` (offsets into the message, past its header) in its own round."""
    counts = {"tried": 0, "refused": 0, "accepted_exact": 0, "accepted_wrongly": 0}
    errors: dict[str, int] = {}
    started = time.perf_counter()
    for bit in bits:

        def tap(got_step: str, u: int, data: bytes, bit: int = bit) -> bytes:
            return flip(data, 8 * HEADER.size + bit) if (got_step, u) == (step, target) else data

        counts["tried"] += 1
        try:
            outcome = one_round(tap)
        except Exception as error:  # anything unnamed is a wrong acceptance
            counts["accepted_wrongly"] += 1
            kind = f"unexpected {type(error).__name__}"
            errors[kind] = errors.get(kind, 0) + 1
            continue
        for kind in outcome.errors:
            errors[kind] = errors.get(kind, 0) + 1
        if not outcome.exact:
            counts["accepted_wrongly"] += 1
        elif outcome.refused:
            counts["refused"] += 1
        else:
            counts["accepted_exact"] += 1
    return {
        "probe": name,
        **counts,
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 1),
    }


def flip_probes(every: int) -> list[dict[str, Any]]:
    rows = []
    for name, step, target in (
        ("secagg key advert (device 2)", "advert", 2),
        ("secagg relayed key bundle (to device 1)", "bundle", 1),
        ("secagg share bundle (device 2)", "shares", 2),
        ("secagg unmask response (device 1)", "reveal", 1),
    ):
        size = len(_message(step, target)) - HEADER.size
        label = f"{name}, {'every bit' if every == 1 else f'one bit in {every}'}"
        rows.append(probe(label, step, target, range(0, 8 * size, every)))
    with checks_off():
        control = probe(
            "control, checks off (before issue 12): advert's mask key",
            "advert",
            2,
            range(8 * 32, 8 * 64, every),
        )
    rows.append(control)
    return rows


# ---------------------------------------------------------------- cost of the signatures


def _cpu_ms(call: Callable[[], Any], repeats: int) -> float:
    started = time.process_time()
    for _ in range(repeats):
        call()
    return 1e3 * (time.process_time() - started) / repeats


def signature_cost(repeats: int) -> list[dict[str, Any]]:
    public = node.RoundSecrets(RUN, ROUND, 1, bytes(32), bytes(range(32)), bytes(32)).public_keys()
    point = crypto.identity_public_key(IDENTITY_KEYS[1])
    unsigned = SignedKeys(public, point, bytes(crypto.IDENTITY_SIGNATURE_BYTES))
    statement = identity.advert_statement(RUN, ROUND, 1, unsigned)
    sign_ms = _cpu_ms(lambda: crypto.identity_sign(IDENTITY_KEYS[1], statement), repeats)
    signature = crypto.identity_sign(IDENTITY_KEYS[1], statement)
    signed = SignedKeys(public, point, signature, ROSTER[1].certificate)
    check_ms = _cpu_ms(lambda: identity.check_peer(RUN, ROUND, 1, signed, TRUST), repeats)
    server_ms = _cpu_ms(lambda: identity.check_advert(RUN, ROUND, 1, signed), repeats)
    rows = []
    for n in (10, 100, 1000):
        k = PARAMS.degree(n)
        rows.append(
            {
                "n": n,
                "k": k,
                "device_ms": round(sign_ms + k * check_ms, 2),
                "server_ms": round(n * server_ms, 1),
                "advert_extra_bytes": crypto.IDENTITY_KEY_BYTES + crypto.IDENTITY_SIGNATURE_BYTES,
                "bundle_extra_bytes": k * (len(signed.relayed_bytes()) - len(public.to_bytes())),
            }
        )
    return [
        {
            "sign_ms": round(sign_ms, 3),
            "check_peer_ms": round(check_ms, 3),
            "check_advert_ms": round(server_ms, 3),
        },
        *rows,
    ]


def render(document: dict[str, Any]) -> str:
    lines = [
        "# Hardening probes (issue 12)",
        "",
        f"Produced by: `{document['command']}` ({document['machine']}, {document['date']}).",
        "",
        "## Tampered inputs, bit by bit",
        "",
        "One whole secure-aggregation round per flipped bit, 3 enrolled devices (bench/hardening.py"
        " docstring). Refused cleanly: a named error, then the survivors' exact sum or an "
        "aborted round. Accepted wrongly: any other result.",
        "",
        "| probe | inputs tried | refused cleanly | accepted, sum exact | accepted wrongly |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in document["flips"]:
        lines.append(
            f"| {row['probe']} | {row['tried']} | {row['refused']} | {row['accepted_exact']} "
            f"| {row['accepted_wrongly']} |"
        )
    lines += ["", "Named errors seen, per probe:", ""]
    for row in document["flips"]:
        seen = ", ".join(f"{kind} {count}" for kind, count in sorted(row["errors"].items()))
        lines.append(f"- {row['probe'].split(',')[0]}: {seen or 'none'}")
    lines += [
        "",
        "## Every other input, bit by bit and hostile",
        "",
        "Through the product's own readers (bench/hardening_inputs.py docstring). Refused "
        "cleanly: the reader's named error. Accepted: a value valid by the reader's rules, "
        "checked again here (readings against their columns' ranges). Accepted wrongly: any "
        "other exception, a read slower than 2 s, a ticket that is not the signed one, a "
        "reading outside its schema.",
        "",
        "| probe | inputs tried | refused cleanly | accepted | accepted wrongly | accepted means |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in document["inputs"]:
        lines.append(
            f"| {row['probe']} | {row['tried']} | {row['refused']} | {row['accepted']} "
            f"| {row['wrong']} | {row['accepted_means']} |"
        )
    wrong = [
        (row["probe"], example) for row in document["inputs"] for example in row["wrong_examples"]
    ]
    if wrong:
        lines += ["", "Accepted wrongly, first examples:", ""]
        lines += [f"- {probe}: {example}" for probe, example in wrong]
    lines.append("")
    unit, *rows = document["cost"]
    lines += [
        "## The signatures' cost per round",
        "",
        f"ECDSA P-384 sign {unit['sign_ms']} ms; a neighbour's check (its advert signature and "
        f"its fleet certificate) {unit['check_peer_ms']} ms; the server's check of one advert "
        f"{unit['check_advert_ms']} ms (CPU, one core).",
        "",
        "| devices n | neighbours k | ms per device | server ms | bytes more per advert | "
        "bytes more per key bundle |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['n']} | {row['k']} | {row['device_ms']} | {row['server_ms']} | "
            f"{row['advert_extra_bytes']} | {row['bundle_extra_bytes']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="flip every Nth bit (default: all)")
    parser.add_argument("--repeats", type=int, default=200, help="timing repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    document = {
        "command": shlex.join(["python", "bench/hardening.py", *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "flips": flip_probes(args.every),
        "inputs": input_probes(args.every),
        "cost": signature_cost(args.repeats),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hardening.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "hardening.md").write_text(render(document))
    print(render(document))


if __name__ == "__main__":
    main()
