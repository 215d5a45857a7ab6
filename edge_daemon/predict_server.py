"""The local prediction endpoint: HTTP on a Unix socket in the state directory, off by default.

With `predict_socket: true` in daemon.yaml, `edge-daemon run` serves `state_dir/predict.sock`
(mode 0600: only the daemon's user, and root, can connect; nothing listens on the network):

    POST /predict   {"readings": [{"age": 63, "sex": "Male", ...}, ...]}
    200             {"ticket_id", "model_kind", "answered_by", "model", "personal", "note",
                     "predictions": [{"row", "class", "probability", "probabilities"}]}
                    (as `edge-daemon predict --json`; model_kind: "global", "personal" or
                     "untrained", the model that made the predictions; model: the global
                     model's run_id, server_round, final, after_round and received_at, which
                     the personal model, when used, was fine-tuned from; answered_by: the same
                     in one line)
    400             {"error": "..."}  malformed JSON, no readings list, a bad reading (its row
                                      and column named, never its value), a body over 1 MiB
    404 / 405       {"error": "..."}  another path or method
    503             {"error": "..."}  the device cannot predict now (no ticket installed, ...)

e.g. `curl --unix-socket predict.sock -d @request.json http://localhost/predict`.

The daemon itself stays free of the network's code: the request is checked here, then one
short-lived worker process (`python -m edge_daemon.predict_server`, edge_daemon/predict.py's
numpy functions) loads the network and predicts, a request at a time. A failing or hanging
worker costs that request (500), never the daemon. Nothing is written, and nothing leaves the
device.
"""

import argparse
import http.client
import http.server
import json
import logging
import os
import socket
import socketserver
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024
WORKER_TIMEOUT_S = 120.0
SOCKET_NAME = "predict.sock"
_BAD_READINGS, _CANNOT_PREDICT = 3, 5  # the worker's exit statuses besides 0


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: bytes) -> bytes:
    """The request's readings as JSON lines for the worker; RequestError(400) when malformed."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise RequestError(400, "the body is not JSON") from None
    if not isinstance(document, dict) or set(document) != {"readings"}:
        raise RequestError(400, 'expected an object with exactly one key, "readings"')
    readings = document["readings"]
    if not isinstance(readings, list) or not all(isinstance(r, dict) for r in readings):
        raise RequestError(400, "readings: expected a list of objects (column -> value)")
    return "".join(json.dumps(reading) + "\n" for reading in readings).encode()


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class PredictServer:
    """Serves POST /predict on `socket_path` from a thread until `close`."""

    def __init__(self, socket_path: Path, worker_args: list[str]) -> None:
        self.socket_path = socket_path
        self._worker_args = worker_args
        self._one_at_a_time = threading.Lock()
        if socket_path.is_socket():
            socket_path.unlink()  # left by a daemon killed with SIGKILL
        previous = os.umask(0o177)  # the socket is created 0600
        try:
            self._server = _UnixHTTPServer(str(socket_path), self._handler())
        finally:
            os.umask(previous)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="predict-socket", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)

    def predict(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON response) of one request body."""
        try:
            lines = parse_request(body)
        except RequestError as error:
            return error.status, {"error": str(error)}
        command = [sys.executable, "-m", "edge_daemon.predict_server", *self._worker_args]
        with self._one_at_a_time:
            try:
                done = subprocess.run(
                    command, input=lines, capture_output=True, timeout=WORKER_TIMEOUT_S, check=False
                )
            except subprocess.TimeoutExpired:
                return 500, {"error": f"prediction took longer than {WORKER_TIMEOUT_S:g} s"}
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        if done.returncode == 0:
            return 200, json.loads(done.stdout)
        if done.returncode in (_BAD_READINGS, _CANNOT_PREDICT) and message:
            return (400 if done.returncode == _BAD_READINGS else 503), {"error": message[-1]}
        logger.warning("predict worker exited with status %d", done.returncode)
        return 500, {"error": "prediction failed; see the daemon's log"}

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 30  # a client that stops sending mid-request does not hold a thread

            def do_POST(self) -> None:
                try:
                    size: int | None = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    size = None
                fits = size is not None and 0 <= size <= MAX_REQUEST_BYTES
                if self.path != "/predict":
                    if fits:  # read what the client is sending: a reply before its body is
                        self.rfile.read(size or 0)  # read can meet it mid-send (broken pipe)
                    self._reply(404, {"error": "POST /predict is the only endpoint"})
                    return
                if size is None:
                    self._reply(400, {"error": "a Content-Length header is required"})
                    return
                if not fits:
                    self._reply(400, {"error": f"the body is over {MAX_REQUEST_BYTES} bytes"})
                    return
                self._reply(*server.predict(self.rfile.read(size)))

            def do_GET(self) -> None:
                self._reply(405, {"error": "use POST /predict"})

            def _reply(self, status: int, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # A Unix socket peer has no address; and a request line is all that is logged.
                logger.info("predict socket: " + format, *args)

        return Handler


class UnixHTTPConnection(http.client.HTTPConnection):
    """A client's connection to the endpoint's Unix socket (the device's own software, the
    tests, bench/predict.py): HTTP as usual, over `path` instead of TCP."""

    def __init__(self, path: Path, *, timeout: float = 120.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def start_predict_server(
    state_dir: Path, fleet_key: Path, schema: str, *, use_personal: bool = True
) -> PredictServer:
    args = ["--state-dir", str(state_dir), "--fleet-key", str(fleet_key), "--schema", schema]
    return PredictServer(state_dir / SOCKET_NAME, args + ([] if use_personal else ["--global"]))


def worker(argv: list[str] | None = None) -> int:
    """Predict the JSON lines on stdin; the document on stdout, or one error line on stderr."""
    from edge_daemon import predict as core
    from edge_daemon.paths import DaemonPaths
    from edge_daemon.readings import SCHEMAS, CsvLimits, IngestError, StoreError
    from edge_daemon.state import StateError
    from edge_daemon.ticket_cache import TicketCache, TicketCacheError

    parser = argparse.ArgumentParser(prog="edge_daemon.predict_server")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--fleet-key", type=Path, required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--global", dest="use_personal", action="store_false")
    args = parser.parse_args(argv)
    paths = DaemonPaths(args.state_dir)
    data = sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
    try:
        schema = SCHEMAS[args.schema]()
        rows = core.read_rows(data, "readings", schema, fmt="jsonl", limits=CsvLimits())
    except IngestError as error:
        # The worker's input lines are the request's readings: name them as the request does.
        where = "readings" if error.row is None else f"readings[{error.row}]"
        where += f".{error.column}" if error.column else ""
        print(f"{where}: {error.rule}", file=sys.stderr)
        return _BAD_READINGS
    try:
        cache = TicketCache(paths.tickets_dir, args.fleet_key)
        predictor = core.load_predictor(paths, cache, args.schema, use_personal=args.use_personal)
    except (core.PredictError, TicketCacheError, StateError, StoreError, OSError) as error:
        print(str(error), file=sys.stderr)
        return _CANNOT_PREDICT
    print(json.dumps(core.to_json(predictor, core.predict(predictor, rows))))
    return 0


if __name__ == "__main__":
    sys.exit(worker())
