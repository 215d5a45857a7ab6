"""The local prediction endpoint: HTTP on a 0600 Unix socket; bad requests get 400, not a crash."""

import json
import select
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_daemon.cli import main
from edge_daemon.predict_server import (
    PredictServer,
    RequestError,
    UnixHTTPConnection,
    parse_request,
    start_predict_server,
)
from tests.edge_daemon.test_personalise import _swiss_device
from tests.edge_daemon.test_predict import _device, _expected, _keep_model, _ticket, fleet
from tests.edge_daemon.test_readings import HEADER, ROWS

__all__ = ["fleet"]  # the module fixture, shared with test_predict


def _call(server: PredictServer, body: bytes, path: str = "/predict") -> tuple[int, Any]:
    connection = UnixHTTPConnection(server.socket_path)
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    document = json.loads(response.read())
    connection.close()
    return response.status, document


@pytest.fixture
def device() -> Iterator[Path]:
    # A short directory: a Unix socket's path is limited to ~107 bytes, pytest's are long.
    directory = Path(tempfile.mkdtemp(prefix="tf-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory)


def _readings(lines: list[str]) -> list[dict[str, object]]:
    names = HEADER.split(",")
    return [dict(zip(names, line.split(","), strict=True)) for line in lines]


def test_predictions_over_the_socket_equal_the_network_run_directly_and_errors_are_400(
    device: Path, fleet: Path
) -> None:
    config = _device(device, fleet)
    assert main(["schema", "-c", str(config)]) == 0  # the device is set up
    values = _keep_model(device, _ticket(fleet))
    server = start_predict_server(device / "state", fleet / "fleet.pub", "heart-uci")
    try:
        assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o600

        status, document = _call(server, json.dumps({"readings": _readings(ROWS)}).encode())
        assert status == 200, document
        got = np.array([p["probabilities"] for p in document["predictions"]])
        np.testing.assert_allclose(got, _expected(fleet, values, ROWS), atol=1e-6)
        assert document["model"]["server_round"] == 7

        bad = _readings(ROWS)
        bad[1]["chol"] = "2000"
        assert _call(server, json.dumps({"readings": bad}).encode()) == (
            400,
            {"error": "readings[1].chol: outside 50..1000 mg/dl"},
        )
        assert _call(server, b"{not json") == (400, {"error": "the body is not JSON"})
        assert _call(server, b"{}", path="/other")[0] == 404
        # A refused request's body is read before the reply: a client still sending it never
        # meets a closed socket (a broken pipe, as http.client sends headers and body apart).
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(server.socket_path))
            raw.sendall(b"POST /other HTTP/1.1\r\nContent-Length: 4096\r\n\r\n")
            assert select.select([raw], [], [], 0.5)[0] == []  # no reply before the body
            raw.sendall(b"x" * 4096)
            assert b" 404 " in raw.makefile("rb").readline()
        # The server is still up after every refusal.
        assert _call(server, json.dumps({"readings": []}).encode())[0] == 200
    finally:
        server.close()
    assert not server.socket_path.exists()


def test_a_device_without_a_ticket_answers_503(device: Path, fleet: Path) -> None:
    _device(device, fleet, install=False)
    (device / "state").mkdir()
    server = start_predict_server(device / "state", fleet / "fleet.pub", "heart-uci")
    try:
        status, document = _call(server, json.dumps({"readings": _readings(ROWS)}).encode())
    finally:
        server.close()
    assert status == 503 and "no ticket is installed" in document["error"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"[]", 'expected an object with exactly one key, "readings"'),
        (b'{"readings": 3}', "readings: expected a list of objects (column -> value)"),
        (b'{"readings": [1]}', "readings: expected a list of objects (column -> value)"),
        (b"\xff", "the body is not JSON"),
    ],
)
def test_malformed_requests_are_refused_before_any_worker_starts(body: bytes, error: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(body)
    assert (caught.value.status, str(caught.value)) == (400, error)


def test_the_socket_says_which_model_answered_personal_or_global(device: Path, fleet: Path) -> None:
    config = _swiss_device(device, fleet)
    assert main(["personalise", "-c", str(config)]) == 0
    body = json.dumps({"readings": _readings(ROWS)}).encode()
    answers = []
    for use_personal in (True, False):  # one at a time: both serve state_dir/predict.sock
        server = start_predict_server(
            device / "state", fleet / "fleet.pub", "heart-uci", use_personal=use_personal
        )
        try:
            answers.append(_call(server, body))
        finally:
            server.close()

    (status, used), (status_off, global_) = answers
    assert status == status_off == 200
    assert used["model_kind"] == "personal"
    assert used["personal"]["layers"] == "last"
    assert used["answered_by"] == (
        "personal: fine-tuned on this device from the global model of run 3 (after round 6)"
    )
    assert (used["model"]["run_id"], used["model"]["final"]) == (3, False)
    assert global_["model_kind"] == "global" and global_["personal"] is None
    assert global_["answered_by"] == "global: the global model of run 3 (after round 6)"
    assert used["predictions"] != global_["predictions"]
