"""`ticket search / pull / publish --hub` against a real hub served on loopback."""

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.seed import seed_hub
from tests.hub.hub_tickets import Lineage, make_lineage
from tests.hub.live import answering, closed_port, serving
from tests.ticket_cli.registry_tickets import Tickets, flip_byte, make_tickets
from ticket.tls import write_dev_pki
from ticket_cli.cli import main
from ticket_cli.exit_codes import ExitCode
from ticket_cli.hub_client import HubAddressError, hub_url


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Tickets:
    return make_tickets(tmp_path_factory.mktemp("tickets"))


@pytest.fixture(scope="module")
def lineage(tmp_path_factory: pytest.TempPathFactory, tickets: Tickets) -> Lineage:
    return make_lineage(tmp_path_factory.mktemp("lineage"), tickets)


@pytest.fixture
def root(tmp_path: Path, tickets: Tickets) -> Path:
    """A hub that trusts the fleet key and holds nothing yet."""
    seed_hub(tmp_path / "hub", [], tickets.fleet_pub)
    return tmp_path / "hub"


@pytest.fixture
def hub(root: Path) -> Iterator[str]:
    with serving(root) as url:
        yield url


def _blob(root: Path, content_id: str) -> Path:
    return root / "blobs" / content_id[:2] / f"{content_id}.ticket"


def _publish(hub: str, path: Path) -> int:
    return main(["publish", str(path), "--hub", hub])


def _pull(hub: str, ticket_id: str, out: Path, key: Path, *extra: str) -> int:
    return main(["pull", ticket_id, "--hub", hub, "--out", str(out), "--key", str(key), *extra])


# ---------------------------------------------------------------- publish and search


def test_publish_then_search_by_every_filter(
    hub: str, tickets: Tickets, lineage: Lineage, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in (lineage.parent, lineage.child, tickets.sparse):
        assert _publish(hub, path) == ExitCode.OK
    published = capsys.readouterr().out
    again = _publish(hub, lineage.parent)

    assert f"published {lineage.parent_id} to {hub}" in published
    assert f"with its card {lineage.parent}.card" in published
    assert again == ExitCode.OK
    assert "already published" in capsys.readouterr().out

    def found(*filters: str) -> set[str]:
        assert main(["search", "--hub", hub, "--json", *filters]) == ExitCode.OK
        document = json.loads(capsys.readouterr().out)
        assert document["schema"] == "ticketfleet.hub.search.v1"
        return {entry["content_id"] for entry in document["tickets"]}

    sparse, both = tickets.content_id(tickets.sparse), {lineage.parent_id, lineage.child_id}
    assert found() == {*both, sparse}
    assert found("--dataset", "heart-uci", "--model", "heart-mlp") == {*both, sparse}
    assert found("--model", "lenet-300-100") == set()
    assert found("--max-density", "0.3") == {sparse}
    assert found("--min-density", "0.3") == both
    assert (
        found("--min-accuracy", "0.8", "--max-density", "0.6") == both
    )  # child, parent: 0.82, 0.83
    assert found("--signer", tickets.fleet_id) == {*both, sparse}
    assert found("--signer", "0" * 16) == set()
    assert found("--dataset", "mnist") == set()
    assert found("--parent", lineage.parent_id) == {lineage.child_id}


def test_search_prints_a_table_and_the_local_registry_still_works(
    hub: str, tmp_path: Path, lineage: Lineage, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(hub, lineage.child)
    local = tmp_path / "local"
    main(
        ["publish", str(tickets.digits), "--registry", str(local), "--key", str(tickets.fleet_pub)]
    )
    capsys.readouterr()

    assert main(["search", "--hub", hub, "--dataset", "heart-uci"]) == ExitCode.OK
    remote = capsys.readouterr().out
    assert main(["search", "--registry", str(local), "--model", "lenet-300-100"]) == ExitCode.OK
    nearby = capsys.readouterr().out

    assert remote.splitlines()[0].split()[:3] == ["id", "model", "task"]
    assert lineage.child_id[:12] in remote
    assert tickets.content_id(tickets.digits)[:12] in nearby
    assert lineage.child_id[:12] not in nearby


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("foreign", "answered 403: refused:"),
        ("unsigned", "answered 422: refused: ticket is not signed"),
    ],
)
def test_a_refused_publish_shows_the_hubs_answer(
    hub: str, tickets: Tickets, name: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = _publish(hub, getattr(tickets, name))

    error = capsys.readouterr().err
    assert status == ExitCode.HUB
    assert f"the hub at {hub} answered" in error
    assert "refused:" in error
    assert message in error
    assert main(["search", "--hub", hub, "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["tickets"] == []


def test_a_token_hub_needs_the_token_file(
    root: Path, tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")

    with serving(root, token="s3cret") as hub:
        without = _publish(hub, tickets.dense)
        guessed = main(["publish", str(tickets.dense), "--hub", hub, "--token-file", str(wrong)])
        refusal = capsys.readouterr().err
        allowed = main(["publish", str(tickets.dense), "--hub", hub, "--token-file", str(token)])

    assert (without, guessed, allowed) == (ExitCode.HUB, ExitCode.HUB, ExitCode.OK)
    assert "answered 401: publishing needs the hub's token" in refusal


# ---------------------------------------------------------------- pull


def test_pull_verifies_and_writes_the_bundle_and_its_card(
    hub: str, tmp_path: Path, tickets: Tickets, lineage: Lineage, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(hub, lineage.child)
    out = tmp_path / "pulled" / "child.ticket"

    status = _pull(hub, lineage.child_id[:10], out, tickets.fleet_pub)

    printed = capsys.readouterr().out
    assert status == ExitCode.OK
    assert out.read_bytes() == lineage.child.read_bytes()
    assert Path(f"{out}.card").read_bytes() == Path(f"{lineage.child}.card").read_bytes()
    assert f"signed by {tickets.fleet_id}" in printed
    assert main(["inspect", str(out), "--key", str(tickets.fleet_pub)]) == ExitCode.OK


def test_pull_refuses_to_overwrite_without_force(
    hub: str, tmp_path: Path, tickets: Tickets
) -> None:
    _publish(hub, tickets.dense)
    out = tmp_path / "dense.ticket"
    out.write_bytes(b"mine")
    pull = ["pull", tickets.content_id(tickets.dense), "--hub", hub, "--out", str(out)]

    refused = main([*pull, "--key", str(tickets.fleet_pub)])
    kept = out.read_bytes()
    forced = main([*pull, "--key", str(tickets.fleet_pub), "--force"])

    assert (refused, kept) == (ExitCode.BAD_INPUT, b"mine")
    assert forced == ExitCode.OK
    assert out.read_bytes() == tickets.dense.read_bytes()


def test_pull_from_an_untrusted_signer_writes_nothing(
    hub: str, tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(hub, tickets.dense)
    out = tmp_path / "dense.ticket"

    status = _pull(hub, tickets.content_id(tickets.dense), out, tickets.other_pub)

    assert status == ExitCode.INTEGRITY
    assert "signed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "hub"]


def test_pull_without_a_key_is_refused(hub: str, tmp_path: Path, tickets: Tickets) -> None:
    _publish(hub, tickets.dense)
    out = tmp_path / "dense.ticket"

    status = main(["pull", tickets.content_id(tickets.dense), "--hub", hub, "--out", str(out)])

    assert status == ExitCode.BAD_INPUT
    assert not out.exists()


def _lie_about(root: Path, content_id: str, data: bytes) -> None:
    """A hostile (or broken) hub: it serves `data` as `content_id` and its index agrees."""
    blob = _blob(root, content_id)
    blob.chmod(0o644)
    blob.write_bytes(data)
    with sqlite3.connect(root / "index.sqlite3") as db:
        db.execute(
            "UPDATE tickets SET blob_sha256 = ? WHERE content_id = ?",
            [hashlib.sha256(data).hexdigest(), content_id],
        )
    db.close()


@pytest.mark.parametrize("served", ["tampered", "another ticket"])
def test_pull_of_bytes_that_are_not_the_ticket_writes_nothing(
    hub: str, root: Path, tickets: Tickets, served: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(hub, tickets.dense)
    content_id = tickets.content_id(tickets.dense)
    data = tickets.tampered if served == "tampered" else tickets.sparse
    _lie_about(root, content_id, data.read_bytes())
    out = root.parent / "dense.ticket"

    status = main(
        ["pull", content_id, "--hub", hub, "--out", str(out), "--key", str(tickets.fleet_pub)]
    )

    error = capsys.readouterr().err
    assert status == ExitCode.INTEGRITY
    assert ("corrupt" in error) if served == "tampered" else ("served ticket" in error)
    assert not out.exists()
    assert not Path(f"{out}.card").exists()


def test_pull_with_a_forged_card_writes_nothing(
    hub: str, root: Path, tmp_path: Path, tickets: Tickets, lineage: Lineage
) -> None:
    _publish(hub, lineage.parent)
    card = root / "cards" / f"{lineage.parent_id}.card"
    card.write_bytes(card.read_bytes().replace(b"found first", b"found later"))
    out = tmp_path / "parent.ticket"
    pull = ["pull", lineage.parent_id, "--hub", hub, "--out", str(out)]

    status = main([*pull, "--key", str(tickets.fleet_pub)])
    written = out.exists()
    without_card = main([*pull, "--key", str(tickets.fleet_pub), "--no-card"])

    assert (status, written) == (ExitCode.INTEGRITY, False)
    assert without_card == ExitCode.OK
    assert not Path(f"{out}.card").exists()


def test_a_blob_damaged_on_the_hubs_disk_is_refused_by_the_hub(
    hub: str, root: Path, tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(hub, tickets.dense)
    content_id = tickets.content_id(tickets.dense)
    flip_byte(_blob(root, content_id), 100)
    out = tmp_path / "dense.ticket"

    status = main(
        ["pull", content_id, "--hub", hub, "--out", str(out), "--key", str(tickets.fleet_pub)]
    )

    assert status == ExitCode.HUB
    assert "answered 409" in capsys.readouterr().err
    assert not out.exists()


def test_pull_of_an_unknown_ticket_is_the_hubs_404(
    hub: str, tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.ticket"

    status = main(
        ["pull", "ab" * 8, "--hub", hub, "--out", str(out), "--key", str(tickets.fleet_pub)]
    )

    assert status == ExitCode.HUB
    assert "answered 404: no ticket abababababababab" in capsys.readouterr().err
    assert not out.exists()


def test_an_https_hub_with_its_own_ca(
    root: Path, tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = write_dev_pki(tmp_path / "pki", ["127.0.0.1"])
    out = tmp_path / "dense.ticket"
    content_id = tickets.content_id(tickets.dense)

    with serving(root, tls=tls) as hub:
        untrusted = main(["search", "--hub", hub])
        refusal = capsys.readouterr().err
        published = main(
            ["publish", str(tickets.dense), "--hub", hub, "--ca-cert", str(tls.ca_cert)]
        )
        pulled = _pull(hub, content_id, out, tickets.fleet_pub, "--ca-cert", str(tls.ca_cert))

    assert hub.startswith("https://")
    assert untrusted == ExitCode.HUB
    assert "certificate verify failed" in refusal.lower()
    assert (published, pulled) == (ExitCode.OK, ExitCode.OK)
    assert out.read_bytes() == tickets.dense.read_bytes()


# ---------------------------------------------------------------- addresses


def test_a_hub_that_is_down_is_a_clear_error(
    tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = f"http://127.0.0.1:{closed_port()}"
    out = tmp_path / "x.ticket"

    searched = main(["search", "--hub", hub])
    pulled = main(
        ["pull", "ab" * 8, "--hub", hub, "--out", str(out), "--key", str(tickets.fleet_pub)]
    )

    assert (searched, pulled) == (ExitCode.HUB, ExitCode.HUB)
    assert f"cannot reach the hub at {hub}: connection refused" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "url",
    ["localhost:8470", "ftp://127.0.0.1", "http://", "http://h:99999", "http://h/?q=1", "x"],
)
def test_a_malformed_hub_address_is_bad_input(
    url: str, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(HubAddressError):
        hub_url(url)
    assert main(["search", "--hub", url]) == ExitCode.BAD_INPUT
    assert f"--hub {url!r}" in capsys.readouterr().err


def test_hub_url_keeps_a_path_prefix_and_drops_trailing_slashes() -> None:
    assert hub_url("https://hub.example:8443/tickets/") == "https://hub.example:8443/tickets"
    assert hub_url(" http://127.0.0.1:8470 ") == "http://127.0.0.1:8470"


def test_an_id_that_is_not_hex_never_reaches_the_hub(
    tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = f"http://127.0.0.1:{closed_port()}"  # nothing to reach: the id is refused first

    status = main(
        [
            "pull",
            "../../etc",
            "--hub",
            hub,
            "--out",
            str(tmp_path / "x"),
            "--key",
            str(tickets.fleet_pub),
        ]
    )

    assert status == ExitCode.BAD_INPUT
    assert "8 to 64 hex characters" in capsys.readouterr().err


def test_hub_and_registry_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = f"http://127.0.0.1:{closed_port()}"

    status = main(["search", "--hub", hub, "--registry", str(tmp_path)])

    assert status == ExitCode.BAD_INPUT
    assert "--hub and --registry exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "body", "headers", "message"),
    [
        (302, b"", {"Location": "http://127.0.0.2:9/elsewhere"}, "answered 302"),
        (200, b"<html>", {}, "malformed answer: its answer is not JSON"),
        (200, b'{"tickets": [{"content_id": "x"}]}', {}, "does not have the fields"),
        (500, b"Internal Server Error", {}, "answered 500: Internal Server Error"),
    ],
)
def test_a_broken_or_hostile_hub_is_a_clear_error(
    status: int,
    body: bytes,
    headers: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with answering(status, body, headers) as hub:
        code = main(["search", "--hub", hub])

    assert code == ExitCode.HUB
    assert message in capsys.readouterr().err
