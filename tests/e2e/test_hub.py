"""The ticket hub end to end: `ticket hub serve` as its own process, the `ticket` client, a browser.

Two tickets found for real, the second re-pruned from the first (`ticket find --parent`),
each with a signed card (`ticket card`); both published over HTTP, searched, pulled with
verification and seen on the page in headless chromium. An upload signed by an untrusted key
is refused and stores nothing; a blob damaged on the hub's disk is refused on pull and writes
nothing. The server process is stopped by its pid.
"""

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.hub.browser import browser_paths, follow, start_browser, wait_ready
from tests.hub.live import closed_port
from tests.ticket_cli.registry_tickets import flip_byte
from ticket import crypto
from ticket.bundle import read_ticket, sign_ticket, write_ticket
from ticket_cli.cli import main
from ticket_cli.exit_codes import ExitCode

pytestmark = pytest.mark.slow

_FIND = [
    *("find", "--model", "heart-mlp", "--data", "heart-uci", "--sites", "Cleveland"),
    *("--model-arg", "hidden=[16,8]", "--epochs", "2", "--quiet"),
]
_START_DEADLINE_S = 60.0


def _find(out: Path, density: float, key: Path, *extra: str) -> str:
    found = [*_FIND, "--target-density", str(density), "--out", str(out), "--sign-key", str(key)]
    assert main([*found, *extra]) == 0
    return read_ticket(out, allow_unsigned=True).content_id


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`ticket hub serve` over an empty hub trusting the fleet key, as a child process."""
    assert main(["keygen", "--out", str(tmp_path / "fleet")]) == 0
    root = tmp_path / "hub"
    (root / "trusted").mkdir(parents=True)
    (root / "trusted" / "fleet.pub").write_bytes((tmp_path / "fleet.pub").read_bytes())
    port = closed_port()
    command = [sys.executable, "-m", "ticket_cli.cli", "hub", "serve", "--root", str(root)]
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_DEADLINE_S
        while True:
            try:
                urllib.request.urlopen(url + "/api/v1/tickets?limit=1", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ticket hub serve did not start: {log.name}")
                time.sleep(0.1)
        yield url, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_publish_search_pull_and_browse_a_lineage(
    served: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    hub, work = served
    key, pub = work / "fleet.key", work / "fleet.pub"
    parent_id = _find(work / "parent.ticket", 0.5, key)  # with both controls, the default
    child_id = _find(work / "child.ticket", 0.3, key, "--controls", "none", "--parent", parent_id)
    for name, extra in [("parent", []), ("child", ["--parent-relation", "re-pruned"])]:
        card = ["card", str(work / f"{name}.ticket"), "--key", str(pub), "--sign-key", str(key)]
        assert main([*card, "--description", f"the {name}", *extra]) == 0

    # An upload signed by a key the hub does not trust: refused, nothing stored.
    other_key, _ = crypto.generate_signing_key()
    foreign = work / "foreign.ticket"
    unsigned = replace(read_ticket(work / "parent.ticket", allow_unsigned=True), signatures=())
    write_ticket(foreign, sign_ticket(unsigned, other_key))
    capsys.readouterr()
    assert main(["publish", str(foreign), "--hub", hub]) == ExitCode.HUB
    assert "answered 403: refused" in capsys.readouterr().err
    assert main(["search", "--hub", hub]) == ExitCode.OK
    assert capsys.readouterr().out.strip() == "no tickets match"

    for name in ("parent", "child"):
        assert main(["publish", str(work / f"{name}.ticket"), "--hub", hub]) == ExitCode.OK
    assert main(["search", "--hub", hub, "--parent", parent_id]) == ExitCode.OK
    derived = capsys.readouterr().out
    assert child_id[:12] in derived
    assert parent_id[:12] not in derived.split("\n", 1)[1]

    out = work / "pulled" / "child.ticket"
    pull = ["pull", child_id[:12], "--hub", hub, "--out", str(out), "--key", str(pub)]
    assert main(pull) == ExitCode.OK
    assert out.read_bytes() == (work / "child.ticket").read_bytes()
    assert Path(f"{out}.card").read_bytes() == (work / "child.ticket.card").read_bytes()

    browser = start_browser(*browser_paths())
    try:
        browser.get(f"{hub}/tickets/{child_id}")
        wait_ready(browser)
        assert browser.find_element(By.ID, "description").text == "the child"
        assert browser.find_element(By.ID, "parent").text == f"re-pruned from {parent_id[:12]}"
        follow(browser, browser.find_element(By.CSS_SELECTOR, "#parent a"))
        levels = read_ticket(work / "parent.ticket", allow_unsigned=True).manifest.metrics
        points = browser.find_elements(By.CSS_SELECTOR, "circle.point")
        children = browser.find_elements(By.CSS_SELECTOR, "#children li")
        assert [c.get_attribute("data-id") for c in children] == [child_id]
        # the ticket and both controls at every level of the parent's search
        assert len(points) == 3 * len(levels["levels"])
    finally:
        browser.quit()

    # A blob damaged on the hub's disk: the hub refuses to serve it, nothing is written.
    flip_byte(work / "hub" / "blobs" / child_id[:2] / f"{child_id}.ticket", 200)
    again = work / "again.ticket"
    capsys.readouterr()
    status = main(["pull", child_id, "--hub", hub, "--out", str(again), "--key", str(pub)])
    assert status == ExitCode.HUB
    assert "answered 409" in capsys.readouterr().err
    assert not again.exists()
    assert not Path(f"{again}.card").exists()
