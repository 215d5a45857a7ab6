"""Input probes (issue 12): every file and message that comes in, flipped bit by bit and
replaced by hostile documents, through the product's own readers.

Each input ends in one of three ways:
- refused cleanly: the reader's named error (ConfigError, IngestError, a TicketError);
- accepted: the reader returned a value that is valid by its own rules. A config or CSV flip
  may still spell a valid document (a digit changed, a comment); such a result is checked
  against the schema again here (every reading within its column's range or categories).
  A codec flip in the values decodes to another finite vector of the same ticket, round and
  length: the codec does not authenticate values (TLS does in transit, and a device could send
  those values anyway), so those count as accepted, and the table says so;
- accepted wrongly: any other exception (a traceback), a parse slower than SLOW_S, a ticket
  whose bytes differ from the signed one, or a reading outside its schema.

    python bench/hardening.py          # runs these with the secure-aggregation probes
"""

import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "deploy" / "examples"
GOLDEN = ROOT / "tests" / "ticket" / "golden"
SLOW_S = 2.0  # a reader that takes longer than this on one small input is a denial of service

REFUSED, ACCEPTED, WRONG = "refused", "accepted", "wrong"


@dataclass
class Tally:
    name: str
    tried: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # the named errors, by type
    wrong: list[str] = field(default_factory=list)  # what went wrong, first few

    def add(self, outcome: str, detail: str) -> None:
        self.tried += 1
        self.outcomes[outcome] += 1
        if outcome == REFUSED:
            self.errors[detail] += 1
        elif outcome == WRONG and len(self.wrong) < 5:
            self.wrong.append(detail)

    def row(self, accepted_means: str) -> dict[str, Any]:
        return {
            "probe": self.name,
            "tried": self.tried,
            "refused": self.outcomes[REFUSED],
            "accepted": self.outcomes[ACCEPTED],
            "wrong": self.outcomes[WRONG],
            "accepted_means": accepted_means,
            "errors": dict(self.errors),
            "wrong_examples": self.wrong,
        }


Classifier = Callable[[bytes], tuple[str, str]]


def run(
    tally: Tally, inputs: Iterable[bytes], classify: Classifier, named: tuple[type, ...]
) -> None:
    for data in inputs:
        started = time.perf_counter()
        try:
            outcome, detail = classify(data)
        except named as error:
            outcome, detail = REFUSED, type(error).__name__
        except Exception as error:  # the probe's point: anything else is wrong
            outcome, detail = WRONG, f"{type(error).__name__}: {str(error)[:120]}"
        took = time.perf_counter() - started
        if took > SLOW_S:
            outcome, detail = WRONG, f"took {took:.1f} s"
        tally.add(outcome, detail)


def flip(data: bytes, bit: int) -> bytes:
    """`data` with bit `bit` (least significant first within each byte) inverted."""
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def flips(data: bytes, every: int) -> Iterable[bytes]:
    for bit in range(0, 8 * len(data), every):
        yield flip(data, bit)


def _without_comments(text: str) -> bytes:
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    return ("\n".join(lines) + "\n").encode()


def hostile_yaml() -> dict[str, bytes]:
    laughs = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return {
        "100,000 '['": b"[" * 100_000,
        "nested 60 levels": ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 60))).encode(),
        "60 MB": b"state_dir: /tmp/x\n#" + b"x" * (60 * 1024 * 1024),
        "alias bomb (9^10 strings)": ("\n".join(laughs) + "\n").encode(),
        "not UTF-8": b"state_dir: \xff\xfe\n",
        "NUL byte": b"state_dir: /tmp/x\x00\n",
        "python object tag": b"state_dir: !!python/object/apply:os.system ['true']\n",
        "duplicate key": b"state_dir: /a\nstate_dir: /b\n",
        "list at the top": b"- state_dir\n",
        "empty": b"",
        "scalar": b"42\n",
        "anchor loop": b"a: &a [*a]\n",
    }


def config_probes(every: int) -> list[dict[str, Any]]:
    from edge_daemon import config as daemon_config
    from server import config as server_config

    named: tuple[type, ...] = (server_config.ConfigError, daemon_config.ConfigError)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "config.yaml"

        def through(load: Callable[[Path], object]) -> Classifier:
            def classify(data: bytes) -> tuple[str, str]:
                path.write_bytes(data)
                load(path)  # a typed config: every key and range already checked
                return ACCEPTED, ""

            return classify

        for name, loader in (
            ("server.yaml", server_config.load_config),
            ("daemon.yaml", daemon_config.load_config),
        ):
            example = _without_comments((EXAMPLES / name).read_text())
            flipped = Tally(f"{name} (deploy/examples, comments out), every bit")
            run(flipped, flips(example, every), through(loader), named)
            rows.append(flipped.row("the flip still spells a valid config (a digit, a letter)"))
            hostile = Tally(f"{name}: {len(hostile_yaml())} hostile documents")
            run(hostile, hostile_yaml().values(), through(loader), named)
            rows.append(hostile.row("none expected"))
    return rows


def _reading_errors(reading: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """What in an accepted reading breaks its column's declared rule."""
    problems = []
    for column in schema["columns"]:
        value = reading.get(column["name"])
        if value is None:
            continue
        numeric = column["type"] in ("integer", "number")
        if (column["type"] == "category" and value not in column["values"]) or (
            numeric and not (np.isfinite(value) and column["minimum"] <= value <= column["maximum"])
        ):
            problems.append(f"{column['name']} = {value!r}")
    return problems


def hostile_csv(good: bytes) -> dict[str, bytes]:
    header, first = good.splitlines()[:2]
    row = first.decode()

    def swapped(column: str, value: str) -> bytes:
        names = header.decode().split(",")
        cells = row.split(",")
        cells[names.index(column)] = value
        return header + b"\n" + ",".join(cells).encode() + b"\n"

    return {
        "age NaN": swapped("age", "nan"),
        "age inf": swapped("age", "inf"),
        "chol 1e309": swapped("chol", "1e309"),
        "oldpeak -inf": swapped("oldpeak", "-inf"),
        "age 121": swapped("age", "121"),
        "sex unknown": swapped("sex", "Other"),
        "label 9": swapped("num", "9"),
        "a 100 KB cell": swapped("thal", "x" * 100_000),
        "unbalanced quote": header + b'\n"' + first + b"\n",
        "NUL byte in a cell": swapped("age", "6\x003"),
        "not UTF-8": header + b"\n\xff" + first + b"\n",
        "header only twice": header + b"\n" + header + b"\n",
        "duplicate column": header + b",age\n" + first + b",63\n",
        "missing column": b",".join(header.split(b",")[:-1]) + b"\n",
        "extra field": header + b"\n" + first + b",1\n",
        "1,001 rows (limit 1,000 here)": header + b"\n" + (first + b"\n") * 1001,
        "empty": b"",
    }


def csv_probes(every: int) -> list[dict[str, Any]]:
    from edge_daemon.readings import SCHEMAS, CsvLimits, IngestError, parse_csv

    schema = SCHEMAS.get("heart-uci")()
    rules = schema.describe()
    limits = CsvLimits(max_rows=1000, max_record_chars=64 * 1024)

    def classify(data: bytes) -> tuple[str, str]:
        readings, _ = parse_csv(data, "readings.csv", schema, limits=limits)
        problems = [p for reading in readings for p in _reading_errors(reading, rules)]
        return (WRONG, f"stored {problems[0]}") if problems else (ACCEPTED, "")

    good = (EXAMPLES / "readings.csv").read_bytes()
    flipped = Tally("readings CSV (deploy/examples), every bit")
    run(flipped, flips(good, every), classify, (IngestError,))
    hostile = Tally(f"readings CSV: {len(hostile_csv(good))} hostile files")
    run(hostile, hostile_csv(good).values(), classify, (IngestError,))
    return [
        flipped.row("the flip spells another valid reading (a digit, or an ignored column)"),
        hostile.row("none expected"),
    ]


def bundle_probe(every: int) -> dict[str, Any]:
    from ticket.bundle import decode_ticket, encode_ticket
    from ticket.errors import TicketError

    good = (GOLDEN / "tiny.ticket").read_bytes()
    trusted = [(GOLDEN / "test-signer.pub").read_bytes()]

    def classify(data: bytes) -> tuple[str, str]:
        ticket = decode_ticket(data, trusted_keys=trusted)
        if encode_ticket(ticket) != good:
            return WRONG, "decoded a ticket that is not the signed one"
        return ACCEPTED, ""

    tally = Tally("signed ticket bundle (tests/ticket/golden/tiny.ticket), every bit")
    run(tally, flips(good, every), classify, (TicketError,))
    return tally.row("none expected: every byte is covered by the content id or the signature")


def codec_probe(every: int) -> dict[str, Any]:
    from ticket.codec import HEADER_BYTES, Kind, decode_vector, encode_vector
    from ticket.errors import CodecError

    ticket_id = "ab" * 32
    values = np.linspace(-1.5, 1.5, 32, dtype=np.float32)
    tally = Tally("codec payloads (float32, float16, int8; 32 values), every bit")
    segments = (16, 16)
    for dtype in ("float32", "float16", "int8"):
        good = encode_vector(
            values, kind=Kind.UPDATE, ticket_id=ticket_id, round=3, dtype=dtype,
            segment_sizes=segments, rng=np.random.default_rng(0),
        )  # fmt: skip
        expected = decode_vector(
            good, kind=Kind.UPDATE, ticket_id=ticket_id, round=3, length=32, segment_sizes=segments
        )

        def classify(
            data: bytes, good: bytes = good, expected: np.ndarray = expected
        ) -> tuple[str, str]:
            got = decode_vector(
                data, kind=Kind.UPDATE, ticket_id=ticket_id, round=3, length=32,
                segment_sizes=segments,
            )  # fmt: skip
            changed = next(i for i, (a, b) in enumerate(zip(data, good, strict=True)) if a != b)
            if changed < HEADER_BYTES:
                return WRONG, f"header byte {changed} flipped, still accepted"
            if got.shape != (32,) or not np.isfinite(got).all():
                return WRONG, "decoded a vector of another shape, or not finite"
            return ACCEPTED, "" if not np.array_equal(got, expected) else "same values"

        run(tally, flips(good, every), classify, (CodecError,))
    return tally.row(
        "a value bit: another finite vector of the same ticket, round and length (the codec "
        "does not authenticate values; TLS does in transit)"
    )


def input_probes(every: int) -> list[dict[str, Any]]:
    return [*config_probes(every), *csv_probes(every), bundle_probe(every), codec_probe(every)]


def main(argv: list[str] | None = None) -> None:
    """The input probes alone, printed (bench/hardening.py records them with the rest)."""
    import argparse
    import sys

    sys.path.insert(0, str(ROOT))  # `python bench/hardening_inputs.py` from a checkout
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="flip every Nth bit (default: all)")
    args = parser.parse_args(argv)
    for row in input_probes(args.every):
        counts = f"{row['tried']} tried, {row['refused']} refused, {row['accepted']} accepted"
        print(f"{row['probe']}: {counts}, {row['wrong']} wrongly {row['wrong_examples']}")


if __name__ == "__main__":
    main()
