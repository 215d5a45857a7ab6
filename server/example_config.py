"""The annotated example server.yaml (deploy/examples/server.yaml): where it is, and
`fleet-server init --write-config PATH`, which copies it for an operator who has none.

The example is not package data: it lives in the source tree beside the systemd units, and the
server is installed from that tree (`pip install -e .`, see pyproject.toml), so it is found
relative to this package. Only its state_dir line is rewritten; every other key keeps the
example's value and comment.
"""

import os
import re
from pathlib import Path

import server

EXAMPLE_IN_REPO = "deploy/examples/server.yaml"
DEFAULT_STATE_DIR = Path("/var/lib/fleet-server")  # the example's, and the systemd unit's
_STATE_DIR_LINE = re.compile(r"^state_dir: *(\S+)", re.MULTILINE)


class ExampleConfigError(Exception):
    """The example cannot be found, or PATH exists already (it is never overwritten)."""


def example_path() -> Path | None:
    """The example server.yaml of the source tree this package was installed from, if any."""
    path = Path(server.__file__).resolve().parent.parent / EXAMPLE_IN_REPO
    return path if path.is_file() else None


def missing_config_hint(path: Path) -> str:
    """What to tell an operator whose server.yaml `path` does not exist."""
    example = example_path()
    source = f"{example}" if example else f"{EXAMPLE_IN_REPO} in ticketfleet's source tree"
    return (
        f"write the annotated example there with `fleet-server init --write-config {path}` "
        f"(add --state-dir DIR; default {DEFAULT_STATE_DIR}), edit it, and pass it with -c; "
        f"the example is {source}"
    )


def write_example_config(path: Path, state_dir: Path | None = None) -> Path:
    """Write the example to `path` (never over an existing file) with `state_dir`; the path."""
    example = example_path()
    if example is None:
        raise ExampleConfigError(
            f"the example server.yaml is not installed here: copy {EXAMPLE_IN_REPO} from "
            "ticketfleet's source tree instead"
        )
    text = example.read_text()
    if state_dir is not None:
        chosen = str(state_dir.absolute())
        text, count = _STATE_DIR_LINE.subn(lambda m: m.group(0).replace(m.group(1), chosen), text)
        if count != 1:
            raise ExampleConfigError(f"{example}: has no one `state_dir:` line to set")
    try:
        # O_EXCL: an operator's edited server.yaml is never replaced, even by a racing call.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ExampleConfigError(
            f"{path} already exists; it is left as it is (remove it or choose another PATH)"
        ) from None
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    return path
