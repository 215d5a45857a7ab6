"""`ticket keygen`, `ticket sign`, `ticket verify`, run in-process and once as the real script."""

import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ticket import crypto
from ticket.bundle import build_ticket, read_ticket, sign_ticket, write_ticket
from ticket.manifest import ModelSpec
from ticket_cli.cli import main
from ticket_cli.exit_codes import ExitCode

GOLDEN = Path(__file__).resolve().parents[1] / "ticket" / "golden"
GOLDEN_CONTENT_ID = "e967cb47ca54b2a4fc5ff6ec3f3a5fac64be0116c5e04bdd1aa86d6073c9626c"
GOLDEN_SIGNER_ID = "d30fe813d618ee97"


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.ticket"
    shutil.copyfile(GOLDEN / "tiny.ticket", path)
    return path


@pytest.fixture
def unsigned(tmp_path: Path) -> Path:
    path = tmp_path / "unsigned.ticket"
    ticket = read_ticket(GOLDEN / "tiny.ticket", allow_unsigned=True)
    write_ticket(path, replace(ticket, signatures=()))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Prefix of a fresh key pair: PREFIX.key, PREFIX.pub (keygen creates keys/ itself)."""
    prefix = tmp_path / "keys" / "release"
    assert main(["keygen", "--out", str(prefix)]) == 0
    return prefix


def _key(prefix: Path, suffix: str) -> str:
    return str(prefix.with_name(prefix.name + suffix))


# ---------------------------------------------------------------- keygen


def test_keygen_writes_a_private_key_only_its_owner_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "k"

    code = main(["keygen", "--out", str(prefix)])

    private, public = Path(_key(prefix, ".key")), Path(_key(prefix, ".pub"))
    assert code == ExitCode.OK
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert crypto.public_key_of(private.read_bytes()) == public.read_bytes()
    assert f"key id   {crypto.key_id(public.read_bytes())}" in capsys.readouterr().out


@pytest.mark.parametrize("existing", [".key", ".pub"])
def test_keygen_refuses_to_overwrite(
    keys: Path, existing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = ".pub" if existing == ".key" else ".key"
    Path(_key(keys, other)).unlink()  # either file alone is enough to refuse
    before = Path(_key(keys, existing)).read_bytes()
    capsys.readouterr()

    code = main(["keygen", "--out", str(keys)])

    assert code == ExitCode.BAD_INPUT
    assert "already exists; pass --force" in capsys.readouterr().err
    assert Path(_key(keys, existing)).read_bytes() == before


def test_keygen_force_replaces_the_pair(keys: Path) -> None:
    before = Path(_key(keys, ".pub")).read_bytes()

    assert main(["keygen", "--out", str(keys), "--force"]) == ExitCode.OK

    assert Path(_key(keys, ".pub")).read_bytes() != before
    assert stat.S_IMODE(Path(_key(keys, ".key")).stat().st_mode) == 0o600


# ---------------------------------------------------------------- sign


def test_sign_in_place_keeps_the_content_id(
    unsigned: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_id = crypto.key_id(Path(_key(keys, ".pub")).read_bytes())
    capsys.readouterr()

    code = main(["sign", str(unsigned), "--key", _key(keys, ".key")])

    assert code == ExitCode.OK
    assert capsys.readouterr().out == f"signed {GOLDEN_CONTENT_ID} by {key_id}\n"
    ticket = read_ticket(unsigned, trusted_keys=[Path(_key(keys, ".pub")).read_bytes()])
    assert ticket.content_id == GOLDEN_CONTENT_ID


def test_sign_keeps_other_signatures_and_can_write_elsewhere(
    signed: Path, keys: Path, tmp_path: Path
) -> None:
    before = signed.read_bytes()
    out = tmp_path / "cosigned.ticket"

    code = main(["sign", str(signed), "--key", _key(keys, ".key"), "--out", str(out)])

    assert code == ExitCode.OK
    assert signed.read_bytes() == before
    assert len(read_ticket(out, allow_unsigned=True).signatures) == 2


def test_sign_refuses_a_modified_ticket_and_leaves_it_alone(
    signed: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(signed.read_bytes())
    data[100] ^= 0x01
    signed.write_bytes(bytes(data))

    code = main(["sign", str(signed), "--key", _key(keys, ".key")])

    assert code == ExitCode.INTEGRITY
    assert "corrupt or was modified" in capsys.readouterr().err
    assert signed.read_bytes() == bytes(data)


def test_sign_with_a_public_key_explains(
    signed: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sign", str(signed), "--key", _key(keys, ".pub")])

    assert code == ExitCode.BAD_INPUT
    assert "release.pub: this is a public key" in capsys.readouterr().err


# ---------------------------------------------------------------- verify


def test_verify_ok(signed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", str(signed), "--key", str(GOLDEN / "test-signer.pub")])

    assert code == ExitCode.OK
    assert capsys.readouterr().out == f"OK {GOLDEN_CONTENT_ID} signed by {GOLDEN_SIGNER_ID}\n"


def test_verify_with_one_of_several_keys(signed: Path, keys: Path) -> None:
    code = main(
        [
            "verify",
            str(signed),
            "--key",
            _key(keys, ".pub"),
            "--key",
            str(GOLDEN / "test-signer.pub"),
        ]
    )

    assert code == ExitCode.OK


def test_verify_refuses_an_untrusted_signer(
    signed: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", str(signed), "--key", _key(keys, ".pub")])

    assert code == ExitCode.INTEGRITY
    assert f"signed by key {GOLDEN_SIGNER_ID}, which is not trusted" in capsys.readouterr().err


def test_verify_refuses_an_unsigned_ticket(
    unsigned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", str(unsigned), "--key", str(GOLDEN / "test-signer.pub")])

    assert code == ExitCode.UNSIGNED
    assert "ticket is not signed" in capsys.readouterr().err


def test_verify_refuses_a_modified_ticket(signed: Path) -> None:
    data = bytearray(signed.read_bytes())
    data[-3] ^= 0x01  # inside the signature
    signed.write_bytes(bytes(data))

    assert (
        main(["verify", str(signed), "--key", str(GOLDEN / "test-signer.pub")])
        == ExitCode.INTEGRITY
    )


def test_verify_a_file_that_is_not_a_ticket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")

    code = main(["verify", str(path), "--key", str(GOLDEN / "test-signer.pub")])

    assert code == ExitCode.BAD_TICKET
    assert "not a ticket file" in capsys.readouterr().err


def test_verify_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", str(tmp_path / "nope.ticket"), "--key", str(GOLDEN / "test-signer.pub")])

    assert code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert f"ticket verify: error: {tmp_path / 'nope.ticket'}: no such file or directory\n" in err
    assert "[Errno" not in err


@pytest.fixture
def misfit(tmp_path: Path) -> Path:
    """The golden tensors (hidden width 3) under a signed manifest that says hidden width 5."""
    golden = read_ticket(GOLDEN / "tiny.ticket", allow_unsigned=True)
    model = ModelSpec(name="heart-mlp", args={"in_features": 4, "hidden": [5], "num_classes": 2})
    ticket = build_ticket(replace(golden.manifest, model=model), golden.masks, golden.weights)
    path = tmp_path / "misfit.ticket"
    write_ticket(path, sign_ticket(ticket, (GOLDEN / "test-signer.key").read_bytes()))
    return path


def test_verify_refuses_tensors_that_do_not_fit_the_model(
    misfit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", str(misfit), "--key", str(GOLDEN / "test-signer.pub")])

    captured = capsys.readouterr()
    assert (code, captured.out) == (ExitCode.BAD_TICKET, "")
    assert "the tensors do not fit the manifest's model heart-mlp" in captured.err
    assert "parameter 'fc1.weight': ticket has shape [3, 4], model has [5, 4]" in captured.err


def test_sign_refuses_tensors_that_do_not_fit_the_model(
    misfit: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = misfit.read_bytes()

    code = main(["sign", str(misfit), "--key", _key(keys, ".key")])

    assert code == ExitCode.BAD_TICKET
    assert "the tensors do not fit the manifest's model" in capsys.readouterr().err
    assert misfit.read_bytes() == before


def test_verify_with_a_private_key_explains(
    signed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", str(signed), "--key", str(GOLDEN / "test-signer.key")])

    assert code == ExitCode.BAD_INPUT
    assert "test-signer.key: this is a private key" in capsys.readouterr().err


def test_verify_requires_a_key(signed: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["verify", str(signed)])

    assert caught.value.code == ExitCode.USAGE


# ---------------------------------------------------------------- the installed script


def _ticket_script() -> str:
    beside = Path(sys.executable).parent / "ticket"
    found = str(beside) if beside.exists() else shutil.which("ticket")
    if found is None:
        pytest.fail("the `ticket` console script is not installed; run `make install`")
    return found


def test_installed_script_verifies_and_fails_with_the_documented_codes(signed: Path) -> None:
    public = str(GOLDEN / "test-signer.pub")

    ok = subprocess.run(
        [_ticket_script(), "verify", str(signed), "--key", public],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    signed.write_bytes(signed.read_bytes() + b"!")
    bad = subprocess.run(
        [_ticket_script(), "verify", str(signed), "--key", public],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert (ok.returncode, ok.stdout) == (
        0,
        f"OK {GOLDEN_CONTENT_ID} signed by {GOLDEN_SIGNER_ID}\n",
    )
    assert bad.returncode == ExitCode.INTEGRITY
    assert "ticket verify: error: ticket file is corrupt or was modified" in bad.stderr
