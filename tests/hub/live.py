"""A real hub for client and browser tests: uvicorn on an ephemeral loopback port, in a thread."""

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from hub.service import create_app
from ticket.tls import TlsFiles

_START_DEADLINE_S = 30.0  # how long to wait for the server to listen before failing the test


@contextmanager
def serving(root: Path, *, tls: TlsFiles | None = None, **options: Any) -> Iterator[str]:
    """`create_app(root, **options)` served at the yielded http(s)://127.0.0.1:PORT, then
    stopped; with `tls`, over HTTPS with its server certificate."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))  # the kernel picks a free port: no race with other tests
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_app(root, **options),
        log_level="warning",
        lifespan="off",
        ws="none",
        ssl_certfile=None if tls is None else str(tls.server_cert),
        ssl_keyfile=None if tls is None else str(tls.server_key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + _START_DEADLINE_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the hub did not start listening")
            time.sleep(0.02)
        yield f"{'http' if tls is None else 'https'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(_START_DEADLINE_S)
        listener.close()


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def answering(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> Iterator[str]:
    """A server that gives every GET the same answer: a broken or hostile hub."""

    class Fixed(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fixed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
