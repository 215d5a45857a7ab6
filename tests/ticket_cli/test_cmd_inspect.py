"""`ticket inspect`: the human report, the stable JSON schema, and the trust options."""

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ticket import crypto
from ticket.bundle import build_ticket, read_ticket, sign_ticket, write_ticket
from ticket.manifest import Manifest
from ticket_cli.cli import main
from ticket_cli.exit_codes import ExitCode

GOLDEN = Path(__file__).resolve().parents[1] / "ticket" / "golden"
SIGNER_PUB = str(GOLDEN / "test-signer.pub")
GOLDEN_CONTENT_ID = "e967cb47ca54b2a4fc5ff6ec3f3a5fac64be0116c5e04bdd1aa86d6073c9626c"
GOLDEN_SIGNER_ID = "d30fe813d618ee97"

GOLDEN_REPORT = f"""\
ticket    {GOLDEN_CONTENT_ID}  (format 1)
model     heart-mlp  hidden=[3] in_features=4 num_classes=2
data      heart-uci  sites=[Cleveland]
method    imp, magnitude-layerwise, rate 0.2, rewind step 0
density   44.44%  (8 of 18 prunable weights kept)
dense     5 values in 2 unpruned parameters (fc1.bias, fc2.bias)
created   2025-01-31T12:00:00Z
parent    none

layer       shape  kept  total  density
fc1.weight  3x4       6     12   50.00%
fc2.weight  2x3       2      6   33.33%

metrics by pruning level
level  density  accuracy     auc    loss  random acc
    0  100.00%    0.7500  0.8125  0.5000      0.7500
    1   44.44%    0.8125  0.8750  0.4375      0.6250

signatures
  signed by {GOLDEN_SIGNER_ID} (not checked against a trusted key)
"""


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.ticket"
    shutil.copyfile(GOLDEN / "tiny.ticket", path)
    return path


def _rewrite(path: Path, **manifest_changes: Any) -> Path:
    """An unsigned copy of the golden ticket with some manifest keys replaced."""
    golden = read_ticket(GOLDEN / "tiny.ticket", allow_unsigned=True)
    manifest = Manifest.from_json({**golden.manifest.to_json(), **manifest_changes})
    write_ticket(path, build_ticket(manifest, golden.masks, golden.weights))
    return path


@pytest.fixture
def unsigned(tmp_path: Path) -> Path:
    path = tmp_path / "unsigned.ticket"
    golden = read_ticket(GOLDEN / "tiny.ticket", allow_unsigned=True)
    write_ticket(path, replace(golden, signatures=()))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_human_report_of_the_golden_ticket(
    signed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "inspect", str(signed)) == (0, GOLDEN_REPORT, "")


def test_report_marks_trusted_signatures(signed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inspect", str(signed), "--key", SIGNER_PUB)

    assert code == ExitCode.OK
    assert out.endswith(f"  signed by {GOLDEN_SIGNER_ID} (verified, trusted key)\n")


def test_report_of_an_unsigned_ticket(unsigned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inspect", str(unsigned))

    assert code == ExitCode.OK
    assert out.endswith("signatures\n  unsigned\n")


def test_json_follows_the_documented_schema(
    signed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "inspect", "--json", str(signed))
    document = json.loads(out)

    assert code == ExitCode.OK
    assert document == {
        "schema": "ticketfleet.inspect.v1",
        "content_id": GOLDEN_CONTENT_ID,
        "format_version": 1,
        "signatures": [{"key_id": GOLDEN_SIGNER_ID, "trusted": None}],
        "kept_weights": 8,
        "total_weights": 18,
        "manifest": read_ticket(signed, allow_unsigned=True).manifest.to_json(),
    }


def test_json_with_keys_says_which_signatures_are_trusted(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = crypto.generate_signing_key()
    (tmp_path / "other.key").write_bytes(private)
    (tmp_path / "other.pub").write_bytes(public)
    assert main(["sign", str(signed), "--key", str(tmp_path / "other.key")]) == 0
    capsys.readouterr()

    code, out, _ = _run(capsys, "inspect", "--json", str(signed), "--key", SIGNER_PUB)

    trusted = {s["key_id"]: s["trusted"] for s in json.loads(out)["signatures"]}
    assert code == ExitCode.OK
    assert trusted == {GOLDEN_SIGNER_ID: True, crypto.key_id(public): False}


def test_inspect_with_an_untrusted_key_fails(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "other.pub").write_bytes(crypto.generate_signing_key()[1])

    code, out, err = _run(capsys, "inspect", str(signed), "--key", str(tmp_path / "other.pub"))

    assert (code, out) == (ExitCode.INTEGRITY, "")
    assert "which is not trusted" in err


def test_inspect_with_a_key_refuses_unsigned_unless_allowed(
    unsigned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused, _, err = _run(capsys, "inspect", str(unsigned), "--key", SIGNER_PUB)
    allowed, out, _ = _run(
        capsys, "inspect", str(unsigned), "--key", SIGNER_PUB, "--allow-unsigned"
    )

    assert refused == ExitCode.UNSIGNED
    assert "not signed" in err
    assert allowed == ExitCode.OK
    assert "unsigned" in out


def test_inspect_checks_integrity_without_keys(
    signed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(signed.read_bytes())
    data[300] ^= 0x04
    signed.write_bytes(bytes(data))

    code, out, err = _run(capsys, "inspect", str(signed))

    assert (code, out) == (ExitCode.INTEGRITY, "")
    assert "ticket inspect: error: ticket file is corrupt or was modified" in err


def test_report_copes_with_a_minimal_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _rewrite(
        tmp_path / "minimal.ticket",
        method={"name": "oneshot"},
        data={"name": "mnist", "nested": {"deep": {"x": 1}}},
        metrics={},
        parent="ab" * 32,
    )

    code, out, _ = _run(capsys, "inspect", str(path))

    assert code == ExitCode.OK
    assert "method    oneshot, rewind step 0\n" in out
    assert "data      mnist\n" in out
    assert "metrics   none\n" in out
    assert f"parent    {'ab' * 32}\n" in out


def test_report_shows_flat_level_metrics_and_scalar_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = _rewrite(
        tmp_path / "flat.ticket",
        metrics={"levels": [{"level": 0, "density": 1.0, "accuracy": 0.5, "loss": 1}, {"odd": []}]},
    )
    scalars = _rewrite(
        tmp_path / "scalars.ticket", metrics={"accuracy": 0.9, "per_site": {"a": [1]}}
    )

    _, flat_out, _ = _run(capsys, "inspect", str(flat))
    _, scalar_out, _ = _run(capsys, "inspect", str(scalars))

    assert (
        "\n".join(
            [
                "level  density  accuracy  loss",
                "    0  100.00%    0.5000     1",
                "    1        -         -     -",
            ]
        )
        in flat_out
    )
    assert "metrics\n  accuracy  0.9\n\n" in scalar_out


def test_report_escapes_control_characters_from_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _rewrite(tmp_path / "escape.ticket", data={"name": "heart\x1b[2J\x07uci"})

    code, out, _ = _run(capsys, "inspect", str(path))

    assert code == ExitCode.OK
    assert "\x1b" not in out
    assert "data      heart\\x1b[2J\\x07uci\n" in out


def _misfit(path: Path, model: dict[str, Any]) -> Path:
    """The golden tensors under a manifest naming `model`, signed by the golden key."""
    golden = read_ticket(GOLDEN / "tiny.ticket", allow_unsigned=True)
    manifest = Manifest.from_json({**golden.manifest.to_json(), "model": model})
    ticket = build_ticket(manifest, golden.masks, golden.weights)
    write_ticket(path, sign_ticket(ticket, (GOLDEN / "test-signer.key").read_bytes()))
    return path


@pytest.mark.parametrize("key", [[], ["--key", SIGNER_PUB]])
def test_inspect_refuses_tensors_that_do_not_fit_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: list[str]
) -> None:
    args = {"in_features": 4, "hidden": [5], "num_classes": 2}
    path = _misfit(tmp_path / "misfit.ticket", {"name": "heart-mlp", "args": args})

    code, out, err = _run(capsys, "inspect", str(path), *key)

    assert (code, out) == (ExitCode.BAD_TICKET, "")
    assert (
        f"ticket inspect: error: {path}: the tensors do not fit the manifest's model heart-mlp "
        f"{json.dumps(args, sort_keys=True)}: "
        "parameter 'fc1.weight': ticket has shape [3, 4], model has [5, 4]\n"
    ) in err


def test_inspect_refuses_a_model_that_cannot_be_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _misfit(tmp_path / "misfit.ticket", {"name": "resnet-9000", "args": {}})

    code, out, err = _run(capsys, "inspect", "--json", str(path))

    assert (code, out) == (ExitCode.BAD_TICKET, "")
    assert "the ticket's model cannot be built: unknown model 'resnet-9000'" in err


def test_a_fleet_found_ticket_says_where_and_at_what_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = {"run_id": "find-heart", "devices": 4, "rounds": 2, "levels": 1,
             "bytes_up": 82296, "bytes_down": 158664, "secagg": True}  # fmt: skip
    level = {"level": 0, "density_after": 0.1, "rounds": 2, "devices": 4, "bytes_up": 82296,
             "bytes_down": 158664, "train_loss": 0.47}  # fmt: skip
    fit = {"fitted_on": "fleet", "run_id": "find-heart", "devices": 4, "rows": 643, "round": 1}
    metrics = {"search_levels": [level], "encoding_fit": fit}
    golden = read_ticket(GOLDEN / "tiny.ticket", allow_unsigned=True).manifest.to_json()
    schedule = {"epochs": 1, "batch_size": 4096, "lr": 1.0, "optimizer": "sgd"}
    method = {**golden["method"], "train": schedule}  # the search rounds' FedSGD
    path = _rewrite(tmp_path / "f.ticket", fleet=fleet, metrics=metrics, method=method)
    code, out, _ = _run(capsys, "inspect", str(path), "--allow-unsigned")
    assert code == ExitCode.OK
    assert "found on the fleet (run find-heart): 4 devices, 1 level(s), 2 rounds, secure" in out
    assert "fitted on the fleet's summed counts (run find-heart): 4 devices, 643 readings" in out
    assert "search cost 82,296 bytes up, 158,664 bytes down" in out
    (training,) = [line for line in out.splitlines() if line.startswith("training  ")]
    assert "optimizer=sgd" in training  # what the search's rounds ran, not how to train it
    assert training.endswith("  (the fleet search's rounds)")
    table = out[out.index("fleet search by level") :].splitlines()
    assert table[1].split() == ["level", "density", "after", "rounds", "devices", "bytes", "up",
                                "bytes", "down", "loss"]  # fmt: skip
    assert table[2].split() == ["0", "10.00%", "2", "4", "82296", "158664", "0.4700"]
