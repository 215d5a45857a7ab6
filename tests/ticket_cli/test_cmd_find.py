"""`ticket find` through its command line: outputs, bad arguments, and kill -9 then resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ticket.bundle import read_ticket
from ticket_cli.cli import main
from ticket_cli.exit_codes import ExitCode

SIGNER_PUB = Path(__file__).resolve().parents[1] / "ticket" / "golden" / "test-signer.pub"

FAST = [
    "--model",
    "heart-mlp",
    "--data",
    "heart-uci",
    "--sites",
    "Cleveland",
    "--model-arg",
    "hidden=[16,8]",
    "--epochs",
    "2",
    "--quiet",
]


def test_find_writes_ticket_report_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "heart.ticket"
    assert main(["find", *FAST, "--target-density", "0.5", "--out", str(out)]) == 0
    ticket = read_ticket(out, allow_unsigned=True)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["schema"] == "ticketfleet.find-report.v1"
    assert report["content_id"] == ticket.content_id
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = ticket.manifest
    assert manifest.model.to_json() == {
        "name": "heart-mlp",
        "args": {"in_features": 27, "num_classes": 2, "hidden": [16, 8]},
    }
    assert manifest.data.sites == ("Cleveland",)
    assert manifest.method.name == "imp"
    assert abs(manifest.density.overall - 0.5) < 0.01
    assert len(manifest.metrics["levels"]) == len(report["levels"]) == 5  # 0.8^3 > 0.5
    assert "ticket" in capsys.readouterr().out


def test_train_rows_finds_on_the_first_rows_and_the_manifest_says_so(tmp_path: Path) -> None:
    out, full = tmp_path / "some.ticket", tmp_path / "all.ticket"
    density = ["--target-density", "0.8"]
    assert main(["find", *FAST, *density, "--train-rows", "100", "--out", str(out)]) == 0
    assert main(["find", *FAST, *density, "--controls", "none", "--out", str(full)]) == 0

    some = read_ticket(out, allow_unsigned=True).manifest.data
    every = read_ticket(full, allow_unsigned=True).manifest.data
    assert some.rows == {"train": 100, "test": every.rows["test"]}  # type: ignore[index]
    assert every.rows["train"] == 226  # type: ignore[index]
    assert some.fingerprint != every.fingerprint


def test_find_signs_when_given_a_key(tmp_path: Path) -> None:
    assert main(["keygen", "--out", str(tmp_path / "fleet")]) == 0
    out = tmp_path / "t.ticket"
    args = [
        "find",
        *FAST,
        "--target-density",
        "0.8",
        "--out",
        str(out),
        "--sign-key",
        str(tmp_path / "fleet.key"),
    ]
    assert main(args) == 0
    read_ticket(out, trusted_keys=[(tmp_path / "fleet.pub").read_bytes()])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--target-density", "0"], ExitCode.USAGE, "expected a number in (0, 1]"),
        (["--target-density", "half"], ExitCode.USAGE, "expected a number in (0, 1]"),
        (
            ["--target-density", "0.5", "--controls", "reinit,magic"],
            ExitCode.USAGE,
            "unknown control magic",
        ),
        (["--target-density", "0.5", "--method", "snip"], ExitCode.USAGE, "invalid choice"),
        (["--target-density", "0.5", "--train-rows", "0"], ExitCode.USAGE, "expected a whole"),
        (["--target-density", "0.5", "--train-rows", "ten"], ExitCode.USAGE, "expected a whole"),
    ],
)
def test_bad_arguments_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["find", *FAST, "--out", str(tmp_path / "x.ticket"), *args])
    assert exit_info.value.code == code
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "resnet-50"],
            "unknown model 'resnet-50'; choose one of: heart-mlp, lenet-300-100",
        ),
        (["--data", "cifar"], "unknown training recipe 'cifar'"),
        (["--sites", "Mars"], "Mars"),
        (["--layer-rate", "fc9.weight=0.1"], "no prunable layer named fc9.weight"),
        (["--layer-rate", "fc1.weight"], "--layer-rate expects KEY=VALUE"),
        (["--model-arg", "depth=3"], "takes no argument(s) depth"),
        (["--rate", "1.5"], "rate must be in [0, 1)"),
        (["--epochs", "-1"], "epochs must be >= 0"),
        (["--epochs", "0"], "a search trains every level: epochs must be >= 1, got 0"),
        (
            ["--model-arg", "hidden=[0]"],
            "model 'heart-mlp': argument hidden: expected a list of integers >= 1, got [0]",
        ),
        (["--model-arg", "in_features=5"], "model argument in_features=5: heart-uci fixes"),
        (
            ["--rate", "0"],
            "target density 0.5 is unreachable with pruning rates fc1.weight 0, fc2.weight 0, "
            "fc3.weight 0: imp would stop at 100.00% of the weights kept",
        ),
        (["--rewind-step", "100000"], "rewind step 100000 is past the end of training"),
        (["--train-rows", "5000"], "train rows: heart-uci has 226 training rows, asked for 5000"),
        (["--sign-key", str(SIGNER_PUB)], "test-signer.pub: this is a public key"),
        (["--sign-key", "no-such.key"], "no-such.key: no such file or directory"),
    ],
)
def test_bad_values_fail_cleanly_before_any_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "x.ticket"
    assert (
        main(["find", *FAST, "--target-density", "0.5", "--out", str(out), *args])
        == ExitCode.BAD_INPUT
    )
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert "[Errno" not in err
    assert not out.exists()
    # Nothing claimed: a leftover work directory would refuse the corrected command.
    assert not (tmp_path / "x.ticket.work").exists()


def test_a_typo_does_not_block_the_corrected_command(tmp_path: Path) -> None:
    out = tmp_path / "x.ticket"
    typo = [a if a != "Cleveland" else "Clevland" for a in FAST]
    assert main(["find", *typo, "--target-density", "0.8", "--out", str(out)]) == ExitCode.BAD_INPUT
    assert main(["find", *FAST, "--target-density", "0.8", "--out", str(out)]) == ExitCode.OK


def test_an_existing_ticket_is_not_overwritten_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.ticket"
    out.write_bytes(b"precious")
    assert main(["find", *FAST, "--target-density", "0.5", "--out", str(out)]) == ExitCode.BAD_INPUT
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


@pytest.mark.slow
def test_kill_9_mid_search_then_rerun_resumes_without_recomputing(tmp_path: Path) -> None:
    out = tmp_path / "heart.ticket"
    workdir = tmp_path / "heart.ticket.work"
    ticket_cli = str(Path(sys.executable).parent / "ticket")
    command = [
        ticket_cli,
        "find",
        *FAST,
        "--epochs",
        "30",
        "--target-density",
        "0.3",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "level-002.tensors").exists():
            assert process.poll() is None, "search ended before it could be killed"
            assert time.monotonic() < deadline, "search made no progress"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not out.exists()
    finished = {p.name: p.stat().st_mtime_ns for p in workdir.glob("level-*")}
    assert "level-002.tensors" in finished
    assert not list(workdir.glob(".*.tmp"))  # no torn temporary left behind as a level

    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )

    after = {p.name: p.stat().st_mtime_ns for p in workdir.glob("level-*")}
    assert {name: after[name] for name in finished} == finished
    resumed = json.loads(out.with_suffix(".json").read_text())
    fresh_out = tmp_path / "fresh" / "heart.ticket"
    fresh = [*command[:-1], str(fresh_out)]
    subprocess.run(fresh, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    uninterrupted = json.loads(fresh_out.with_suffix(".json").read_text())
    assert resumed["levels"] == uninterrupted["levels"]
    assert (
        read_ticket(out, allow_unsigned=True).masks.keys()
        == read_ticket(fresh_out, allow_unsigned=True).masks.keys()
    )
