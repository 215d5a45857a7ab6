"""`ticket publish / list / show / pull`: output, the documented JSON, and one-line errors."""

import json
import sqlite3
from pathlib import Path

import pytest

from tests.ticket_cli.registry_tickets import Tickets, add_twin_row, copy_registry, flip_byte
from tests.ticket_cli.registry_tickets import make_tickets as _make_tickets
from ticket_cli.cli import main
from ticket_cli.cmd_registry import LIST_SCHEMA, SHOW_SCHEMA, default_registry
from ticket_cli.exit_codes import ExitCode

ENTRY_KEYS = {
    "content_id",
    "model",
    "model_args",
    "task",
    "sites",
    "density",
    "kept_weights",
    "total_weights",
    "accuracy",
    "auc",
    "metrics",
    "method",
    "rewind_step",
    "parent",
    "created_at",
    "signers",
    "verified_by",
    "published_at",
    "size_bytes",
    "blob_sha256",
}


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Tickets:
    return _make_tickets(tmp_path_factory.mktemp("tickets"))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tickets: Tickets) -> Path:
    """A registry holding dense, sparse and digits, published through the command."""
    root = tmp_path_factory.mktemp("published") / "registry"
    for path in (tickets.dense, tickets.sparse, tickets.digits):
        code = main(
            ["publish", str(path), "--registry", str(root), "--key", str(tickets.fleet_pub)]
        )
        assert code == ExitCode.OK
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = _run(capsys, *argv, "--json")
    assert (code, err) == (ExitCode.OK, "")
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


def _listed(capsys: pytest.CaptureFixture[str], root: Path, *filters: str) -> set[str]:
    document = _json(capsys, "list", "--registry", str(root), *filters)
    return {ticket["content_id"] for ticket in document["tickets"]}  # type: ignore[attr-defined]


def _assert_one_line_error(err: str, command: str) -> None:
    lines = err.splitlines()
    assert lines[0].startswith(f"ticket {command}: error: ")
    assert all(line.startswith("  hint: ") for line in lines[1:]) and len(lines) <= 2
    assert "Traceback" not in err


# ---------------------------------------------------------------- publish


def test_publish_says_what_it_published_then_that_nothing_changed(
    tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    root, key = str(tmp_path / "registry"), str(tickets.fleet_pub)
    content_id = tickets.content_id(tickets.dense)

    first = _run(capsys, "publish", str(tickets.dense), "--registry", root, "--key", key)
    again = _run(capsys, "publish", str(tickets.dense), "--registry", root, "--key", key)

    assert first[0] == again[0] == ExitCode.OK
    assert first[1].startswith(f"published {content_id}\n  heart-mlp on heart-uci, density 50.00%")
    assert first[1].endswith(f"signed by {tickets.fleet_id}\n")
    assert again[1] == f"already published {content_id}; the registry is unchanged\n"


def test_publish_trusts_the_registrys_own_keys(
    tmp_path: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "registry"
    (root / "trusted").mkdir(parents=True)
    (root / "trusted" / "fleet.pub").write_bytes(tickets.fleet_pub.read_bytes())

    code, out, _ = _run(capsys, "publish", str(tickets.sparse), "--registry", str(root))

    assert code == ExitCode.OK
    assert out.startswith("published ")


@pytest.mark.parametrize(
    "case",
    [
        ("unsigned", ExitCode.UNSIGNED, "ticket is not signed"),
        ("tampered", ExitCode.INTEGRITY, "ticket file is corrupt or was modified"),
        ("foreign", ExitCode.INTEGRITY, "which is not trusted"),
    ],
)
def test_publish_refuses_bad_tickets_and_keeps_nothing(
    tmp_path: Path,
    tickets: Tickets,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, ExitCode, str],
) -> None:
    name, expected, message = case
    root = tmp_path / "registry"
    path = str(getattr(tickets, name))

    code, out, err = _run(
        capsys, "publish", path, "--registry", str(root), "--key", str(tickets.fleet_pub)
    )

    assert (code, out) == (expected, "")
    assert message in err
    _assert_one_line_error(err, "publish")
    assert _listed(capsys, root) == set()
    assert not any(path.is_file() for path in (root / "blobs").rglob("*"))


# ---------------------------------------------------------------- list


def test_list_shows_a_table(
    published: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "list", "--registry", str(published), "--sort", "density")

    lines = out.splitlines()
    short_ids = [line.split()[0] for line in lines[1:]]
    assert (code, err) == (ExitCode.OK, "")
    assert lines[0].split() == [
        "id",
        "model",
        "task",
        "density",
        "accuracy",
        "auc",
        "created",
        "signer",
    ]
    assert short_ids == [
        tickets.content_id(p)[:12] for p in (tickets.sparse, tickets.digits, tickets.dense)
    ]
    digits_row = lines[2].split()
    assert digits_row[1:6] == ["lenet-300-100", "mnist", "44.44%", "0.8125", "0.8750"]
    assert digits_row[-1] == tickets.fleet_id


def test_list_filters(
    published: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    dense, sparse, digits = (
        tickets.content_id(p) for p in (tickets.dense, tickets.sparse, tickets.digits)
    )

    assert _listed(capsys, published) == {dense, sparse, digits}
    assert _listed(capsys, published, "--task", "mnist") == {digits}
    assert _listed(capsys, published, "--model", "heart-mlp") == {dense, sparse}
    assert _listed(capsys, published, "--model", "heart-mlp", "--max-density", "0.3") == {sparse}
    assert _listed(capsys, published, "--min-accuracy", "0.8125") == {digits}
    assert _listed(capsys, published, "--task", "cifar10") == set()


def test_list_with_no_match_says_so(published: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "list", "--registry", str(published), "--task", "cifar10") == (
        ExitCode.OK,
        "no tickets match\n",
        "",
    )


def test_list_json_follows_the_documented_schema(
    published: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _json(capsys, "list", "--registry", str(published), "--task", "mnist")

    assert set(document) == {"schema", "tickets"}
    assert document["schema"] == LIST_SCHEMA == "ticketfleet.registry.list.v1"
    (entry,) = document["tickets"]  # type: ignore[misc]
    assert set(entry) == ENTRY_KEYS
    assert entry["content_id"] == tickets.content_id(tickets.digits)
    assert entry["metrics"] == {"accuracy": 0.8125, "auc": 0.875, "loss": 0.4375}
    assert (entry["sites"], entry["parent"]) == (None, None)
    assert entry["signers"] == entry["verified_by"] == [tickets.fleet_id]
    assert entry["size_bytes"] == tickets.digits.stat().st_size


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_list_rejects_a_fraction_out_of_range(published: Path, value: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "--registry", str(published), "--max-density", value])
    assert exit_info.value.code == ExitCode.USAGE


# ---------------------------------------------------------------- show


def test_show_by_prefix(
    published: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    content_id = tickets.content_id(tickets.sparse)

    code, out, err = _run(capsys, "show", content_id[:8], "--registry", str(published))

    assert (code, err) == (ExitCode.OK, "")
    assert out.startswith(
        f"ticket     {content_id}\n"
        "model      heart-mlp  hidden=[16,8] in_features=27 num_classes=2\n"
        "task       heart-uci  sites=[Cleveland]\n"
    )
    assert f"signed by  {tickets.fleet_id} (verified at publish)\n" in out
    assert f"stored at  {published / 'blobs' / content_id[:2] / content_id}.ticket\n" in out


def test_show_json_is_the_list_entry(
    published: Path, tickets: Tickets, capsys: pytest.CaptureFixture[str]
) -> None:
    content_id = tickets.content_id(tickets.dense)

    shown = _json(capsys, "show", content_id[:12], "--registry", str(published))
    listed = _json(capsys, "list", "--registry", str(published))

    assert set(shown) == {"schema", "ticket"}
    assert shown["schema"] == SHOW_SCHEMA == "ticketfleet.registry.show.v1"
    assert [shown["ticket"]] == [t for t in listed["tickets"] if t["content_id"] == content_id]  # type: ignore[attr-defined, index]


# ---------------------------------------------------------------- pull


def test_pull_round_trip(
    published: Path, tickets: Tickets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content_id = tickets.content_id(tickets.dense)
    out = tmp_path / "pulled.ticket"

    code, stdout, _ = _run(
        capsys,
        "pull",
        content_id[:8],
        "--out",
        str(out),
        "--registry",
        str(published),
        "--key",
        str(tickets.fleet_pub),
    )
    verified = _run(capsys, "verify", str(out), "--key", str(tickets.fleet_pub))

    assert code == ExitCode.OK
    assert stdout == f"pulled {content_id}\nwrote  {out}\n"
    assert out.read_bytes() == tickets.dense.read_bytes()
    assert verified == (ExitCode.OK, f"OK {content_id} signed by {tickets.fleet_id}\n", "")


def test_pull_refuses_a_corrupted_blob_and_writes_nothing(
    published: Path, tickets: Tickets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_registry(published, tmp_path / "registry")
    content_id = tickets.content_id(tickets.sparse)
    flip_byte(root / "blobs" / content_id[:2] / f"{content_id}.ticket", 200)
    out = tmp_path / "pulled.ticket"

    code, stdout, err = _run(
        capsys,
        "pull",
        content_id,
        "--out",
        str(out),
        "--registry",
        str(root),
        "--key",
        str(tickets.fleet_pub),
    )

    assert (code, stdout) == (ExitCode.INTEGRITY, "")
    assert f"the stored copy of ticket {content_id[:12]} is corrupt" in err
    _assert_one_line_error(err, "pull")
    assert not out.exists()


def test_pull_overwrites_only_with_force(
    published: Path, tickets: Tickets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content_id = tickets.content_id(tickets.digits)
    out = tmp_path / "mine.ticket"
    out.write_bytes(b"mine")
    argv = [
        "pull",
        content_id,
        "--out",
        str(out),
        "--registry",
        str(published),
        "--key",
        str(tickets.fleet_pub),
    ]

    refused, _, err = _run(capsys, *argv)
    assert (refused, out.read_bytes()) == (ExitCode.BAD_INPUT, b"mine")
    assert "pass --force" in err

    assert _run(capsys, *argv, "--force")[0] == ExitCode.OK
    assert out.read_bytes() == tickets.digits.read_bytes()


# ---------------------------------------------------------------- errors


def _ambiguous(published: Path, tmp_path: Path, tickets: Tickets) -> tuple[Path, str]:
    root = copy_registry(published, tmp_path / "ambiguous")
    content_id = tickets.content_id(tickets.dense)
    add_twin_row(root / "index.sqlite3", content_id, content_id[:8] + "0" * 56)
    return root, content_id[:8]


def _unknown_version(published: Path, tmp_path: Path) -> Path:
    root = copy_registry(published, tmp_path / "future")
    db = sqlite3.connect(root / "index.sqlite3")
    db.execute("PRAGMA user_version = 2")
    db.close()
    return root


def test_every_error_is_one_line_and_a_nonzero_status(
    published: Path, tickets: Tickets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ambiguous_root, ambiguous_prefix = _ambiguous(published, tmp_path, tickets)
    future_root = _unknown_version(published, tmp_path)
    key = str(tickets.fleet_pub)
    cases = [
        (["show", "deadbeef"], published, "no ticket deadbeef in the registry"),
        (["show", "abc"], published, "a ticket id is 8 to 64 hex characters, got 'abc'"),
        (["show", ambiguous_prefix], ambiguous_root, f"ticket id {ambiguous_prefix} is ambiguous"),
        (["pull", "deadbeef", "--out", str(tmp_path / "x"), "--key", key], published, "no ticket"),
        (["list"], tmp_path / "nowhere", "no ticket registry at"),
        (["list"], future_root, "registry schema version 2; this version of ticketfleet reads"),
        (["publish", str(tickets.dense)], tmp_path / "keyless", "no trusted key"),
        (
            ["publish", str(tickets.dense), "--key", str(tickets.fleet_key)],
            published,
            "private key",
        ),
        (
            ["publish", str(tmp_path / "missing.ticket"), "--key", key],
            published,
            f"{tmp_path / 'missing.ticket'}: no such file or directory",
        ),
    ]
    for argv, root, message in cases:
        code, out, err = _run(capsys, *argv, "--registry", str(root))

        assert (code, out) == (ExitCode.BAD_INPUT, ""), argv
        assert message in err, argv
        _assert_one_line_error(err, argv[0])
    assert not (tmp_path / "nowhere").exists()
    assert not (tmp_path / "x").exists()


def test_the_registry_defaults_to_the_environment_then_xdg_then_home(tmp_path: Path) -> None:
    home = tmp_path / "home"

    assert default_registry({"TICKETFLEET_REGISTRY": "/srv/reg"}, home) == Path("/srv/reg")
    assert default_registry({"XDG_DATA_HOME": "/data"}, home) == Path("/data/ticketfleet/registry")
    assert default_registry({}, home) == home / ".local/share/ticketfleet/registry"


def test_commands_use_the_registry_named_by_the_environment(
    published: Path,
    tickets: Tickets,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TICKETFLEET_REGISTRY", str(published))

    code, out, _ = _run(capsys, "show", tickets.content_id(tickets.digits)[:8])

    assert code == ExitCode.OK
    assert "task       mnist\n" in out
