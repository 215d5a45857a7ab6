"""`edge-daemon predict` and `schema`: the active ticket's network with the kept global model."""

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_daemon.cli import main
from edge_daemon.exit_codes import ExitCode
from edge_daemon.model_store import save_model
from edge_daemon.paths import DaemonPaths
from edge_daemon.readings import ReadingsStore
from tests.edge_daemon.test_readings import HEADER, ROWS
from tests.inprocess import find_ticket
from ticket.bundle import Ticket, load_ticket
from ticket.data.heart_encoding import HeartPreprocessor
from ticket.packing import PackLayout
from ticket.train import load_weights
from ticket_cli.cli import main as ticket_cli

ROOT = Path(__file__).resolve().parents[2]
UNLABELLED = [row.rsplit(",", 1)[0] + "," for row in ROWS]  # label cells left empty


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    assert ticket_cli(["keygen", "--out", str(directory / "fleet")]) == 0
    find_ticket(directory / "fleet.ticket", density=0.5, sign_key=directory / "fleet.key")
    return directory


def _device(tmp_path: Path, fleet: Path, *, install: bool = True) -> Path:
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"state_dir: state\nfleet_key: {fleet / 'fleet.pub'}\n"
        "server:\n  address: 127.0.0.1:9092\n  insecure: true\n"
    )
    if install:
        assert main(["tickets", "add", "-c", str(config), str(fleet / "fleet.ticket")]) == 0
    return config


def _ticket(fleet: Path, name: str = "fleet.ticket") -> Ticket:
    key = (fleet / "fleet.pub").read_bytes()
    return load_ticket(fleet / name, trusted_keys=[key], allow_unsigned=False)[0]


def _keep_model(tmp_path: Path, ticket: Ticket, scale: float = 1.5) -> np.ndarray:
    values = PackLayout.from_ticket(ticket).pack(ticket.weights) * np.float32(scale)
    save_model(
        DaemonPaths(tmp_path / "state").model_file,
        values,
        ticket_id=ticket.content_id,
        run_id=3,
        server_round=7,
        received_at=datetime.now(UTC),
    )
    return values


def _expected(fleet: Path, values: np.ndarray | None, lines: list[str]) -> np.ndarray:
    """Probabilities [N, 2] from the ticket's network run directly, not through predict."""
    key = (fleet / "fleet.pub").read_bytes()
    ticket, model = load_ticket(fleet / "fleet.ticket", trusted_keys=[key], allow_unsigned=False)
    if values is not None:
        load_weights(model, PackLayout.from_ticket(ticket).unpack_torch(values))
    names = HEADER.split(",")
    rows = [dict(zip(names, line.split(","), strict=True)) for line in lines]
    assert ticket.manifest.data.preprocessing is not None
    x = HeartPreprocessor.from_json(ticket.manifest.data.preprocessing).transform(rows)
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def _csv(tmp_path: Path, *lines: str, header: str = HEADER) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def _predicted(out: str, model: str = "global") -> list[tuple[int, int, float]]:
    """(row, class, probability) per line of predict's CSV, each made by `model`."""
    lines = out.splitlines()
    assert lines[0] == "row,class,probability,model"
    cells = [line.split(",") for line in lines[1:]]
    assert {kind for *_, kind in cells} <= {model}
    return [(int(r), int(c), float(p)) for r, c, p, _ in cells]


def test_predict_a_csv_with_the_kept_model_matches_the_network_run_directly(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet)
    values = _keep_model(tmp_path, _ticket(fleet))
    capsys.readouterr()
    lines = [*ROWS, *UNLABELLED]

    assert main(["predict", "-c", str(config), str(_csv(tmp_path, *lines))]) == 0

    captured = capsys.readouterr()
    # A trained model: no note, only which model answered (_keep_model: round 7's instruction).
    assert (
        captured.err
        == "edge-daemon predict: model: global: the global model of run 3 (after round 6)\n"
    )
    expected = _expected(fleet, values, lines)
    predicted = _predicted(captured.out)
    assert [row for row, _, _ in predicted] == list(range(len(lines)))
    assert [c for _, c, _ in predicted] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([p for _, _, p in predicted], expected.max(axis=1), atol=1e-6)
    untrained = _expected(fleet, None, lines)
    assert not np.allclose(untrained, expected)  # the kept model, not W_k, made these


def test_predict_json_lines_from_stdin_without_a_label_column(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _device(tmp_path, fleet)
    values = _keep_model(tmp_path, _ticket(fleet))
    names = HEADER.split(",")
    records = []
    for line in ROWS:
        row: dict[str, object] = dict(zip(names, line.split(","), strict=True))
        del row["num"]
        row["age"], row["oldpeak"] = float(str(row["age"])), float(str(row["oldpeak"]))
        records.append(json.dumps({k: (None if v == "" else v) for k, v in row.items()}))
    stdin = "\n".join(records) + "\n\n"
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": _Bytes(stdin.encode())})())
    capsys.readouterr()

    assert main(["predict", "-c", str(config), "-", "--format", "jsonl", "--json"]) == 0

    document = json.loads(capsys.readouterr().out)
    assert document["ticket_id"] == _ticket(fleet).content_id and document["note"] is None
    assert document["model_kind"] == "global" and document["personal"] is None
    assert document["model"]["server_round"] == 7 and document["model"]["run_id"] == 3
    expected = _expected(fleet, values, ROWS)
    got = np.array([p["probabilities"] for p in document["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p["class"] for p in document["predictions"]] == expected.argmax(axis=1).tolist()


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        return self.data[:size] if size >= 0 else self.data


def test_predict_stored_reads_only_the_unlabelled_readings(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet)
    values = _keep_model(tmp_path, _ticket(fleet))
    ingest = _csv(tmp_path, ROWS[0], UNLABELLED[1], ROWS[2], UNLABELLED[2])
    assert main(["ingest", "-c", str(config), str(ingest)]) == 0
    assert "4 rows added (2 unlabelled: for predict only)" in capsys.readouterr().out

    assert main(["predict", "-c", str(config), "--stored"]) == 0

    expected = _expected(fleet, values, UNLABELLED[1:])
    predicted = _predicted(capsys.readouterr().out)
    np.testing.assert_allclose([p for _, _, p in predicted], expected.max(axis=1), atol=1e-6)
    with ReadingsStore(DaemonPaths(tmp_path / "state").readings_db) as store:
        assert (store.count(), store.count_unlabelled()) == (2, 2)  # untouched


def test_before_any_global_model_predict_uses_w_k_and_says_so(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet)
    capsys.readouterr()

    assert main(["predict", "-c", str(config), str(_csv(tmp_path, *ROWS))]) == 0

    captured = capsys.readouterr()
    assert "untrained: no global model received yet" in captured.err
    expected = _expected(fleet, None, ROWS)
    np.testing.assert_allclose(
        [p for _, _, p in _predicted(captured.out, "untrained")], expected.max(axis=1), atol=1e-6
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ((",233,", ",2000,"), "rows.csv: line 3, row 1, column chol: outside 50..1000 mg/dl"),
        ((",Male,", ",M,"), "rows.csv: line 3, row 1, column sex: not one of Female, Male"),
    ],
)
def test_an_out_of_range_cell_names_row_and_column_and_touches_nothing(
    tmp_path: Path,
    fleet: Path,
    capsys: pytest.CaptureFixture[str],
    edit: tuple[str, str],
    message: str,
) -> None:
    config = _device(tmp_path, fleet)
    state = DaemonPaths(tmp_path / "state")
    before = sorted(p.name for p in state.state_dir.iterdir())
    capsys.readouterr()

    bad = _csv(tmp_path, ROWS[1], ROWS[0].replace(*edit, 1))
    assert main(["predict", "-c", str(config), str(bad)]) == ExitCode.BAD_INPUT

    captured = capsys.readouterr()
    assert captured.out == "" and f"edge-daemon predict: error: {message}" in captured.err
    assert sorted(p.name for p in state.state_dir.iterdir()) == before  # no store created


def test_a_missing_column_and_bad_json_lines_are_named(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet)
    capsys.readouterr()
    no_chol = ",".join(n for n in HEADER.split(",") if n != "chol")
    assert main(["predict", "-c", str(config), str(_csv(tmp_path, header=no_chol))]) == 3
    assert "rows.csv: line 1: header lacks column(s): chol" in capsys.readouterr().err

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"age": 63}\n')
    assert main(["predict", "-c", str(config), str(jsonl)]) == 3
    assert "rows.jsonl: line 1, row 0, column sex: missing" in capsys.readouterr().err
    jsonl.write_text("[1, 2]\n")
    assert main(["predict", "-c", str(config), str(jsonl)]) == 3
    assert "rows.jsonl: line 1, row 0: not a JSON object" in capsys.readouterr().err


def test_no_ticket_installed_is_a_clear_error(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet, install=False)

    assert main(["predict", "-c", str(config), str(_csv(tmp_path, *ROWS))]) == 3

    assert "no ticket is installed on this device" in capsys.readouterr().err


def test_file_and_stored_together_is_a_usage_error(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet, install=False)
    assert main(["predict", "-c", str(config), "x.csv", "--stored"]) == ExitCode.USAGE
    assert main(["predict", "-c", str(config)]) == ExitCode.USAGE


# ---------------------------------------------------------------- schema


def test_schema_json_names_columns_ranges_label_and_the_active_ticket(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet)
    capsys.readouterr()

    assert main(["schema", "-c", str(config), "--json"]) == 0

    document = json.loads(capsys.readouterr().out)
    assert document["ticket_id"] == _ticket(fleet).content_id
    columns = {column["name"]: column for column in document["columns"]}
    assert list(columns) == [n for n in HEADER.split(",") if n not in ("id", "dataset", "num")]
    assert columns["chol"] == {
        "name": "chol", "type": "integer", "unit": "mg/dl", "minimum": 50, "maximum": 1000,
        "means_not_recorded": [0],
    }  # fmt: skip
    assert columns["sex"] == {"name": "sex", "type": "category", "values": ["Female", "Male"]}
    assert document["label"]["name"] == "num" and set(document["label"]["classes"]) == {"0", "1"}


def test_schema_for_a_person_and_without_torch(tmp_path: Path, fleet: Path) -> None:
    config = _device(tmp_path, fleet)
    code = (
        "import sys\n"
        "from edge_daemon.cli import main\n"
        f"assert main(['schema', '-c', {str(config)!r}]) == 0\n"
        "print(sorted({'torch', 'flwr'} & set(sys.modules)))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )

    lines = completed.stdout.splitlines()
    assert lines[-1] == "[]"
    assert "  chol       integer 50..1000 mg/dl (0 = not recorded)" in lines
    assert any(line.startswith("label column: num") for line in lines)
