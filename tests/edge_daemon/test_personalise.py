"""Personalisation: a device fine-tunes the global model on its own rows, and keeps the result
only when it scores better on its held-out rows; predict and status say which model is used."""

import csv
import json
import stat
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_daemon.cli import main
from edge_daemon.config import PersonaliseConfig
from edge_daemon.model_store import load_model, read_header, save_model
from edge_daemon.paths import DaemonPaths
from edge_daemon.personal_record import load_record
from edge_daemon.personalise import Rows, fine_tune
from edge_daemon.personalise import main as personalise_main
from edge_daemon.readings import ReadingsStore
from tests.edge_daemon.test_predict import ROOT, _device, _ticket, fleet
from tests.edge_daemon.test_readings import HEADER
from tests.inprocess import find_ticket
from ticket import numpy_mlp
from ticket.data.heart import read_heart_rows
from ticket.data.heart_encoding import HeartPreprocessor
from ticket.packing import PackLayout
from ticket.train_config import TrainConfig

__all__ = ["fleet"]  # the module fixture, shared with test_predict

SETTINGS = PersonaliseConfig(epochs=40, lr=0.05, batch_size=16, min_train_rows=20)
Params = dict[str, npt.NDArray[np.float32]]


# ---------------------------------------------------------------- the core, on a tiny MLP


def _tiny() -> tuple[Params, dict[str, npt.NDArray[np.bool_]]]:
    """fc1 [8, 4] -> ReLU -> fc2 [2, 8], half of each weight pruned, deciding by the sign of
    x[:, 0]: hidden units 0 and 1 are relu(x0) and relu(-x0), and class 1 wins when x0 > 0."""
    rng = np.random.default_rng(0)
    masks = {
        "fc1.weight": rng.random((8, 4)) < 0.5,
        "fc2.weight": rng.random((2, 8)) < 0.5,
    }
    masks["fc1.weight"][:2, :] = [[True, False, False, False], [True, False, False, False]]
    masks["fc2.weight"][:, :2] = True
    params = {
        "fc1.weight": rng.normal(0, 0.3, (8, 4)).astype(np.float32),
        "fc1.bias": np.zeros(8, np.float32),
        "fc2.weight": rng.normal(0, 0.1, (2, 8)).astype(np.float32),
        "fc2.bias": np.zeros(2, np.float32),
    }
    params["fc1.weight"][:2, 0] = [2.0, -2.0]
    params["fc2.weight"][:, :2] = [[-3.0, 3.0], [3.0, -3.0]]
    for name, keep in masks.items():
        params[name] *= keep
    return params, masks


def _rows(n_train: int, n_held_out: int, *, flipped: bool) -> Rows:
    """Rows labelled by the sign of x0, as the fleet's model decides, or the other way round."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (n_train + n_held_out, 4)).astype(np.float32)
    y = ((x[:, 0] > 0) != flipped).astype(np.int64)
    return Rows(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def test_a_device_whose_rows_disagree_with_the_fleet_gets_a_better_personal_model() -> None:
    params, masks = _tiny()
    rows = _rows(200, 50, flipped=True)

    outcome = fine_tune(params, masks, rows, SETTINGS, seed=0)  # the last layer learns the flip

    assert outcome.global_eval is not None and outcome.personal_eval is not None
    assert outcome.global_eval.accuracy < 0.1  # the fleet's rule is wrong here
    assert outcome.personal_eval.accuracy > 0.9
    assert outcome.used and outcome.personal is not None
    assert outcome.why.startswith("personal model used: personal ")
    assert "on 50 held-out rows" in outcome.why


def test_last_layer_mode_changes_only_the_last_layer() -> None:
    params, masks = _tiny()
    before = {name: array.copy() for name, array in params.items()}

    outcome = fine_tune(params, masks, _rows(200, 50, flipped=True), SETTINGS, seed=0)

    assert outcome.personal is not None
    for name in ("fc1.weight", "fc1.bias"):
        assert outcome.personal[name].tobytes() == before[name].tobytes()  # bit-identical
    assert not np.array_equal(outcome.personal["fc2.weight"], before["fc2.weight"])
    assert not np.array_equal(outcome.personal["fc2.bias"], before["fc2.bias"])
    for name, array in params.items():  # the global model given in is untouched
        assert array.tobytes() == before[name].tobytes()


@pytest.mark.parametrize("layers", ["last", "all"])
def test_pruned_weights_stay_exactly_zero(layers: str) -> None:
    params, masks = _tiny()

    outcome = fine_tune(
        params, masks, _rows(200, 50, flipped=True), replace(SETTINGS, layers=layers), seed=0
    )

    assert outcome.personal is not None  # better than the global model's 0.0, so kept
    for name, keep in masks.items():
        pruned = outcome.personal[name][~keep]
        assert pruned.size > 0 and np.all(pruned == 0.0)
        assert np.count_nonzero(outcome.personal[name][keep]) > 0
    assert np.count_nonzero(outcome.personal["fc2.bias"]) > 0  # dense: it trained from zero


def test_a_personal_model_no_better_than_the_global_one_keeps_the_global_and_says_why() -> None:
    params, masks = _tiny()  # already right on every row of a device that agrees with the fleet

    outcome = fine_tune(params, masks, _rows(200, 50, flipped=False), SETTINGS, seed=0)

    assert outcome.global_eval is not None and outcome.global_eval.accuracy == 1.0
    assert outcome.personal_eval is not None  # it was trained and scored, then not kept
    assert not outcome.used and outcome.personal is not None
    assert outcome.why.startswith("global model kept: personal ")
    assert "against global 1.000 accuracy on 50 held-out rows" in outcome.why
    assert outcome.why.endswith("(the personal model must score higher)")


def test_a_tie_keeps_the_global_model() -> None:
    params, masks = _tiny()
    barely = replace(SETTINGS, lr=1e-9, epochs=1)  # the personal model predicts as the global

    outcome = fine_tune(params, masks, _rows(200, 50, flipped=True), barely, seed=0)

    assert outcome.global_eval is not None and outcome.personal_eval is not None
    assert outcome.personal_eval.accuracy == outcome.global_eval.accuracy
    assert not outcome.used
    assert outcome.why.startswith("global model kept")


def test_too_few_rows_are_not_personalised_and_the_reason_names_the_keys() -> None:
    params, masks = _tiny()
    settings = replace(SETTINGS, min_train_rows=20, min_held_out_rows=5)

    few_train = fine_tune(params, masks, _rows(19, 5, flipped=True), settings, seed=0)
    few_held_out = fine_tune(params, masks, _rows(100, 4, flipped=True), settings, seed=0)
    nothing = fine_tune(params, masks, _rows(0, 0, flipped=True), settings, seed=0)

    assert not few_train.used and few_train.personal is None and few_train.personal_eval is None
    assert "only 19 labelled training rows (personalise.min_train_rows: 20)" in few_train.why
    assert few_train.global_eval is not None  # still scored on the 5 rows there are
    assert "only 4 held-out rows (personalise.min_held_out_rows: 5)" in few_held_out.why
    assert few_held_out.personal_eval is None
    assert nothing.global_eval is None
    assert "0 labelled training rows" in nothing.why and "0 held-out rows" in nothing.why


# ---------------------------------------------------------------- a device with heart readings


def _ingest_site(tmp_path: Path, config: Path, site: str) -> None:
    rows = [row for row in read_heart_rows() if row["dataset"] == site]
    path = tmp_path / f"{site}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, HEADER.split(","))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["ingest", "-c", str(config), str(path)]) == 0


def _keep_fleet_model(
    tmp_path: Path,
    fleet: Path,
    *,
    server_round: int = 7,
    final: bool = False,
    ticket_file: str = "fleet.ticket",
) -> np.ndarray:
    """The global model: the ticket trained on Cleveland (the fleet's site) in numpy."""
    ticket = _ticket(fleet, ticket_file)
    assert ticket.manifest.data.preprocessing is not None
    encoder = HeartPreprocessor.from_json(ticket.manifest.data.preprocessing)
    rows = [row for row in read_heart_rows() if row["dataset"] == "Cleveland"]
    trained, _ = numpy_mlp.train_masked(
        ticket.weights,
        ticket.masks,
        encoder.transform(rows),
        encoder.labels(rows),
        TrainConfig(epochs=10 + server_round + final, batch_size=32, lr=0.01),
        seed=server_round,
    )
    values = PackLayout.from_ticket(ticket).pack(trained)
    save_model(
        DaemonPaths(tmp_path / "state").model_file,
        values,
        ticket_id=ticket.content_id,
        run_id=3,
        server_round=server_round,
        received_at=datetime.now(UTC),
        final=final,
    )
    return values


def _swiss_device(tmp_path: Path, fleet: Path, extra: str = "") -> Path:
    """A device at the Swiss hospital (93% of its patients ill) under a Cleveland model."""
    config = _device(tmp_path, fleet)
    config.write_text(config.read_text() + extra)
    _ingest_site(tmp_path, config, "Switzerland")
    _keep_fleet_model(tmp_path, fleet)
    return config


def _probabilities(fleet: Path, values: np.ndarray, lines: list[dict[str, str]]) -> np.ndarray:
    ticket = _ticket(fleet)
    assert ticket.manifest.data.preprocessing is not None
    x = HeartPreprocessor.from_json(ticket.manifest.data.preprocessing).transform(lines)
    return numpy_mlp.probabilities(PackLayout.from_ticket(ticket).unpack(values), x)


@pytest.mark.parametrize("layers", ["last", "all"])
def test_personalise_on_a_hospital_unlike_the_fleets_keeps_a_better_personal_model(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str], layers: str
) -> None:
    config = _swiss_device(tmp_path, fleet, extra=f"personalise:\n  layers: {layers}\n")
    paths = DaemonPaths(tmp_path / "state")
    global_header = read_header(paths.model_file)
    capsys.readouterr()

    assert main(["personalise", "-c", str(config)]) == 0

    out = capsys.readouterr().out
    assert f"99 training and 24 held-out rows, layers {layers}: personal model used" in out
    assert out.splitlines()[-1] == "predict uses the personal model"
    record = load_record(paths.personal_record_file)
    assert record is not None and record.used
    assert record.global_accuracy is not None and record.personal_accuracy is not None
    assert record.personal_accuracy > record.global_accuracy
    assert (record.train_rows, record.held_out_rows, record.layers) == (99, 24, layers)
    assert record.base.sha256 == global_header.sha256 and record.base.server_round == 7
    personal = read_header(paths.personal_model_file)
    assert record.personal_sha256 == personal.sha256 != global_header.sha256
    assert personal.ticket_id == global_header.ticket_id  # the same ticket's mask
    for file in (paths.personal_model_file, paths.personal_record_file):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert read_header(paths.model_file) == global_header  # the global model is left alone


def test_predict_uses_the_personal_model_only_for_its_own_global_model_and_says_which(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet)
    paths = DaemonPaths(tmp_path / "state")
    assert main(["personalise", "-c", str(config)]) == 0
    swiss = [row for row in read_heart_rows() if row["dataset"] == "Switzerland"][:6]
    readings = tmp_path / "predict.csv"
    with readings.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, HEADER.split(","))
        writer.writeheader()
        writer.writerows(swiss)
    ticket = _ticket(fleet)
    count = PackLayout.from_ticket(ticket).size
    _, personal = load_model(paths.personal_model_file, ticket_id=ticket.content_id, count=count)
    capsys.readouterr()

    assert main(["predict", "-c", str(config), str(readings)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "row,class,probability,model"
    assert {line.rsplit(",", 1)[1] for line in lines[1:]} == {"personal"}
    expected = _probabilities(fleet, personal, swiss)
    np.testing.assert_allclose(
        [float(line.split(",")[2]) for line in lines[1:]], expected.max(axis=1), atol=1e-6
    )
    assert main(["predict", "-c", str(config), str(readings), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model_kind"] == "personal" and document["personal"]["layers"] == "last"
    got = np.array([p["probabilities"] for p in document["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)

    newer = _keep_fleet_model(tmp_path, fleet, server_round=8)  # the next round's model
    assert main(["predict", "-c", str(config), str(readings), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model_kind"] == "global" and document["personal"] is None
    got = np.array([p["probabilities"] for p in document["predictions"]])
    np.testing.assert_allclose(got, _probabilities(fleet, newer, swiss), atol=1e-6)


def test_personalisation_turned_off_predicts_with_the_global_model(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet)
    assert main(["personalise", "-c", str(config)]) == 0
    config.write_text(config.read_text() + "personalise:\n  enabled: false\n")
    capsys.readouterr()

    assert main(["predict", "-c", str(config), "--stored", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_kind"] == "global"
    assert main(["status", "-c", str(config), "--json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["predict_model"] == "global"
    assert "personalise.enabled: false" in report["predict_model_why"]


def test_a_personal_model_that_does_not_match_its_record_is_not_used(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet)
    paths = DaemonPaths(tmp_path / "state")
    assert main(["personalise", "-c", str(config)]) == 0
    data = bytearray(paths.personal_model_file.read_bytes())
    data[-1] ^= 0x01  # one bit of the last value
    paths.personal_model_file.write_bytes(bytes(data))
    capsys.readouterr()

    assert main(["predict", "-c", str(config), "--stored", "--json"]) == 0

    captured = capsys.readouterr()
    assert json.loads(captured.out)["model_kind"] == "global"
    assert "personal model not used" in captured.err and "altered" in captured.err


def test_status_shows_global_and_personal_accuracy_and_which_is_used(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet, extra="probe_file: probe.json\n")
    (tmp_path / "probe.json").write_text(json.dumps({"on_power": True}))
    capsys.readouterr()
    assert main(["status", "-c", str(config), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(["personalise", "-c", str(config)]) == 0
    record = load_record(DaemonPaths(tmp_path / "state").personal_record_file)
    assert record is not None
    capsys.readouterr()

    assert main(["status", "-c", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["status", "-c", str(config)]) == 0
    text = capsys.readouterr().out

    assert (before["predict_model"], before["personalisation"]) == ("global", None)
    assert before["predict_model_why"] == "not personalised yet"
    assert report["version"] == 4 and report["predict_model"] == "personal"
    assert report["predict_model_why"] == record.why
    shown = report["personalisation"]
    assert shown["is_current"] is True and shown["used"] is True
    assert (shown["global_accuracy"], shown["personal_accuracy"]) == (
        record.global_accuracy,
        record.personal_accuracy,
    )
    assert shown["held_out_rows"] == 24 and shown["train_rows"] == 99
    assert f"predict model   personal: {record.why}" in text
    assert (
        f"on 24 held-out rows global {record.global_accuracy:.3f}, personal "
        f"{record.personal_accuracy:.3f} (99 rows trained on, layers last)"
    ) in text


def test_too_few_readings_are_recorded_and_predict_keeps_the_global_model(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet)
    _keep_fleet_model(tmp_path, fleet)
    rows = [row for row in read_heart_rows() if row["dataset"] == "Switzerland"][:10]
    path = tmp_path / "few.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, HEADER.split(","))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["ingest", "-c", str(config), str(path)]) == 0
    capsys.readouterr()

    assert main(["personalise", "-c", str(config)]) == 0

    assert capsys.readouterr().out.splitlines()[-1] == "predict uses the global model"
    paths = DaemonPaths(tmp_path / "state")
    record = load_record(paths.personal_record_file)
    assert record is not None and not record.used and record.personal_sha256 is None
    assert record.why == (
        "not personalised: only 8 labelled training rows (personalise.min_train_rows: 20) and "
        "2 held-out rows (personalise.min_held_out_rows: 5); predict uses the global model"
    )
    assert record.global_accuracy is not None and record.personal_accuracy is None
    assert not paths.personal_model_file.exists()


def test_without_a_global_model_or_its_ticket_nothing_is_personalised_and_nothing_lost(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet)
    _ingest_site(tmp_path, config, "Switzerland")
    paths = DaemonPaths(tmp_path / "state")
    capsys.readouterr()

    assert main(["personalise", "-c", str(config)]) == 1
    assert "no global model received yet: nothing to personalise" in capsys.readouterr().err

    save_model(
        paths.model_file,
        np.ones(10, np.float32),
        ticket_id="ab" * 32,  # a ticket this device never installed
        run_id=1,
        server_round=1,
        received_at=datetime.now(UTC),
    )
    assert main(["personalise", "-c", str(config)]) == 3
    assert f"ticket {'ab' * 32} is not cached" in capsys.readouterr().err

    assert not paths.personal_record_file.exists() and not paths.personal_model_file.exists()
    with ReadingsStore(paths.readings_db) as store:
        assert store.count() == 123  # every reading still there


# ---------------------------------------------------------------- which global model it came from


@pytest.fixture(scope="module")
def other_ticket(fleet: Path) -> str:
    """A second ticket of the same fleet (another mask), as the operator's next deployment."""
    find_ticket(fleet / "other.ticket", density=0.3, sign_key=fleet / "fleet.key")
    return "other.ticket"


def _predict_json(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["predict", "-c", str(config), "--stored", "--json"]) == 0
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def _unlabelled(tmp_path: Path, config: Path) -> None:
    """Two readings without a label, for `predict --stored`."""
    rows = [row for row in read_heart_rows() if row["dataset"] == "Switzerland"][:2]
    path = tmp_path / "unlabelled.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, HEADER.split(","))
        writer.writeheader()
        writer.writerows({**row, "num": ""} for row in rows)
    assert main(["ingest", "-c", str(config), str(path)]) == 0


def test_the_final_model_pushed_after_the_run_replaces_the_personal_one_until_personalised(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet)  # round 7's global model
    _unlabelled(tmp_path, config)
    paths = DaemonPaths(tmp_path / "state")
    assert main(["personalise", "-c", str(config)]) == 0
    before = _predict_json(config, capsys)
    assert before["model_kind"] == "personal" and before["model"]["final"] is False
    assert before["answered_by"] == (
        "personal: fine-tuned on this device from the global model of run 3 (after round 6)"
    )

    _keep_fleet_model(tmp_path, fleet, server_round=7, final=True)  # the server's final push
    pushed = _predict_json(config, capsys)
    assert pushed["model_kind"] == "global" and pushed["personal"] is None
    assert pushed["model"]["final"] is True and pushed["model"]["after_round"] == 7
    assert pushed["answered_by"] == "global: the final global model of run 3 (after round 7)"

    capsys.readouterr()
    assert main(["personalise", "-c", str(config)]) == 0
    assert capsys.readouterr().out.startswith(
        "the final global model of run 3 (after round 7) (ticket "
    )
    record = load_record(paths.personal_record_file)
    assert (
        record is not None
        and record.base.final
        and record.base.is_base_of(read_header(paths.model_file))
    )
    assert read_header(paths.personal_model_file).final  # its header says so too
    after = _predict_json(config, capsys)
    assert after["model_kind"] == "personal"
    assert after["answered_by"] == (
        "personal: fine-tuned on this device from the final global model of run 3 (after round 7)"
    )
    assert main(["status", "-c", str(config)]) == 0
    assert "from the final global model of run 3 (after round 7): accuracy" in (
        capsys.readouterr().out
    )


def test_a_personal_model_of_an_older_ticket_is_never_used_with_a_newer_one(
    tmp_path: Path, fleet: Path, other_ticket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet)
    _unlabelled(tmp_path, config)
    paths = DaemonPaths(tmp_path / "state")
    assert main(["personalise", "-c", str(config)]) == 0
    assert main(["tickets", "add", "-c", str(config), str(fleet / other_ticket)]) == 0
    _keep_fleet_model(tmp_path, fleet, server_round=1, ticket_file=other_ticket)
    newer = read_header(paths.model_file)
    # The worst case: a record claiming the new model's very values for the old ticket.
    document = json.loads(paths.personal_record_file.read_text())
    document["base"]["sha256"] = newer.sha256
    paths.personal_record_file.write_text(json.dumps(document))

    got = _predict_json(config, capsys)
    assert main(["status", "-c", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert got["ticket_id"] == newer.ticket_id and got["model_kind"] == "global"
    assert got["note"] is None  # not an error: the personal model is simply not for this one
    assert report["predict_model"] == "global"
    assert report["personalisation"]["is_current"] is False
    assert main(["personalise", "-c", str(config)]) == 0
    record = load_record(paths.personal_record_file)
    assert record is not None and record.base.ticket_id == newer.ticket_id
    # The old ticket's personal model is gone: replaced by one of the new ticket, or removed
    # because the new one scored no better here.
    personal = paths.personal_model_file
    assert (
        read_header(personal).ticket_id == newer.ticket_id if record.used else not personal.exists()
    )


def test_a_damaged_personal_record_is_reported_by_name_and_mended_by_personalise(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet)
    _unlabelled(tmp_path, config)
    paths = DaemonPaths(tmp_path / "state")
    assert main(["personalise", "-c", str(config)]) == 0
    global_model = paths.model_file.read_bytes()
    paths.personal_record_file.write_text('{"format": "ticketfleet/edge-daemon-personal"')

    capsys.readouterr()
    assert main(["predict", "-c", str(config), "--stored", "--json"]) == 0
    predicted = capsys.readouterr()
    assert main(["status", "-c", str(config)]) == 0
    status = capsys.readouterr()

    assert json.loads(predicted.out)["model_kind"] == "global"
    assert f"{paths.personal_record_file}: not a personalisation record" in predicted.err
    assert f"warning: {paths.personal_record_file}: not a personalisation record" in status.err
    assert "predict model   global: not personalised yet" in status.out
    assert main(["personalise", "-c", str(config)]) == 0
    assert load_record(paths.personal_record_file) is not None  # rewritten whole
    assert paths.model_file.read_bytes() == global_model  # the global model is never touched
    assert _predict_json(config, capsys)["model_kind"] == "personal"


def test_a_damaged_global_model_is_an_error_naming_it_and_nothing_is_written(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet)
    paths = DaemonPaths(tmp_path / "state")
    paths.model_file.write_bytes(b"TFMODEL\x00garbage")
    capsys.readouterr()

    assert main(["personalise", "-c", str(config)]) == 3

    assert f"{paths.model_file}: header truncated" in capsys.readouterr().err
    assert not paths.personal_record_file.exists() and not paths.personal_model_file.exists()


def test_a_ticket_whose_network_is_not_an_mlp_is_refused_by_name(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _swiss_device(tmp_path, fleet)
    monkeypatch.setattr(numpy_mlp, "is_mlp", lambda names: False)  # as a conv net's names are
    capsys.readouterr()

    assert main(["personalise", "-c", str(config)]) == 1

    err = capsys.readouterr().err
    assert f"ticket {_ticket(fleet).content_id[:12]}: its heart-mlp network is not a plain" in err
    assert not DaemonPaths(tmp_path / "state").personal_record_file.exists()


def test_the_daemons_child_entry_point_personalises_and_exits_with_a_status(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _device(tmp_path, fleet)
    _ingest_site(tmp_path, config, "Switzerland")
    capsys.readouterr()

    assert personalise_main(["--config", str(config)]) == 1  # no global model yet
    assert "personalise: no global model received yet" in capsys.readouterr().err
    assert personalise_main(["--config", str(tmp_path / "missing.yaml")]) == 3
    assert "missing.yaml" in capsys.readouterr().err
    _keep_fleet_model(tmp_path, fleet)
    assert personalise_main(["--config", str(config)]) == 0
    assert "personal model used" in capsys.readouterr().out


def test_personalising_and_predicting_never_load_torch(tmp_path: Path, fleet: Path) -> None:
    config = _swiss_device(tmp_path, fleet)
    _unlabelled(tmp_path, config)
    code = (
        "import sys\n"
        "from edge_daemon.personalise import main\n"
        "from edge_daemon.cli import main as cli\n"
        f"assert main(['--config', {str(config)!r}]) == 0\n"
        f"assert cli(['predict', '-c', {str(config)!r}, '--stored']) == 0\n"
        "print('torch' in sys.modules)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert done.stdout.splitlines()[-1] == "False"


def test_only_the_devices_own_commands_touch_the_personal_files() -> None:
    # Nothing that talks to the server (the ClientApp, its handlers, the wire) names the
    # personal model or its record, so neither can end up in a reply.
    readers = {
        path.relative_to(ROOT).as_posix()
        for package in ("edge_daemon", "server", "ticket", "flower_wire")
        for path in (ROOT / package).rglob("*.py")
        if "personal_model_file" in path.read_text() or "personal_record_file" in path.read_text()
    }

    assert readers == {
        "edge_daemon/paths.py",  # where they live
        "edge_daemon/personalise.py",  # writes them
        "edge_daemon/personal_job.py",  # reads the record: personalised already?
        "edge_daemon/predict.py",  # `predict` and the local socket
        "edge_daemon/status_report.py",  # `status`
    }


def test_a_damaged_readings_store_is_an_error_naming_it_and_nothing_is_written(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _swiss_device(tmp_path, fleet)
    paths = DaemonPaths(tmp_path / "state")
    paths.readings_db.write_bytes(b"not a database" * 100)
    capsys.readouterr()

    status = main(["personalise", "-c", str(config)])

    err = capsys.readouterr().err
    assert status == 3  # bad input the owner can mend, as ingest says of a damaged store
    assert f"{paths.readings_db}: cannot be used (device readings unusable: DatabaseError)" in err
    assert "hint: fix the file named in the message" in err
    assert not paths.personal_record_file.exists() and not paths.personal_model_file.exists()
