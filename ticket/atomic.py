"""Atomic file writes: a reader sees the old file or the new one, never a torn mixture."""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`.

    `mode` (e.g. 0o600 for a private key) is applied before any byte is written.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    temporary.unlink(missing_ok=True)  # a leftover from a crash must not keep its old mode
    descriptor = os.open(temporary, flags, 0o666 if mode is None else mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk (matters after kill -9
    # followed by power loss; harmless otherwise).
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` for a read-modify-write of `path`.

    Separate processes that update one file (the daemon and its ClientApp; two `ticket deploy`
    commands) serialise on it, so neither overwrites the other's change. The kernel releases
    the lock when the descriptor closes, including on kill -9.
    """
    path = Path(path)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class AlreadyRunningError(RuntimeError):
    """Another process holds a state directory's instance lock."""


@contextmanager
def instance_lock(path: Path, *, pid: int, program: str) -> Iterator[None]:
    """Hold `path` (a lock file in a state directory) for as long as one process uses it.

    A second `program` on the same state directory would share its files and fight over its
    ports and child processes, so it must not start: AlreadyRunningError names the holder's pid.
    The lock is a non-blocking flock, which the kernel drops when the holder exits, kill -9
    included, so a stale file never blocks a restart. `pid` is written into the file (the
    caller's own, `os.getpid()`) only once the lock is held.
    """
    path = Path(path)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise AlreadyRunningError(
                f"{path}: another {program} (pid {holder}) is using this state directory; "
                "stop it first"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{pid}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
