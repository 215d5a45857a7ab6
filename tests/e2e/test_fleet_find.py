"""`fleet-server find --fit-encoding` end to end: a ticket found on the fleet from nothing but
the devices' readings, the server killed mid-search and resumed.

`fleet-server init` makes the state directory and the fleet key. Three edge daemons (one per
hospital, each with its own SuperNode and only its own hospital's readings, enrolled while the
search waits for them) hold no ticket. The search first sums their counts of their readings
under secure aggregation and fits the encoding on that sum (the pooled rows are never read),
draws the dense heart-mlp at W_0, signs it with the fleet key and pushes it. Then
`--method fed-imp` runs two pruning levels of one round each, its rounds one full-batch SGD
step on each device (FedSGD: --optimizer, --lr, --local-epochs and --batch-size replace the
run: section's local schedule for the search); once level 0 is finished the
fleet-server's process group gets SIGKILL. The second `fleet-server find` stops the leftover
SuperLink, resumes at level 1 without asking for the counts again or rerunning level 0, and
writes a ticket signed by the fleet key whose manifest says where it and its encoding were
found. A TICKET from `ticket init` takes the same path after the fit
(tests/server/test_fleet_search.py searches one in process).
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loopback.devices import prepare_devices
from server.superlink import free_port, is_listening
from tests.e2e.test_fleet_server import _kill_group, _start, _stop_all, _wait_for
from ticket.bundle import read_ticket

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_a_ticket_found_on_the_fleet_survives_a_kill_of_the_server(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "server.yaml"
    config.write_text(
        "\n".join(
            [
                f"state_dir: {json.dumps(str(state))}",
                "listen:",
                "  host: 127.0.0.1",
                f"  port: {port}",
                "run:",
                "  min_nodes: 3",
                "  min_replies: 2",
                "  fraction_evaluate: 0.0",
                "  round_timeout_s: 120",
                "",
            ]
        )
    )
    init = subprocess.run(
        [str(BIN / "fleet-server"), "init", "-c", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    devices = prepare_devices(
        tmp_path / "devices",
        hospitals=("Cleveland", "Hungary", "VA Long Beach"),
        ticket=None,  # the search pushes the dense ticket
        fleet_key=state / "keys" / "fleet.pub",
        superlink=f"127.0.0.1:{port}",
        ports=[free_port() for _ in range(3)],
        root_certificates=state / "pki" / "ca.crt",
        node_auth=True,
    )
    out = tmp_path / "found.ticket"
    find = [str(BIN / "fleet-server"), "find", "--fit-encoding", "--model", "heart-mlp",
            "--out", str(out), "-c", str(config),
            "--method", "fed-imp", "--target-density", "0.6", "--rate", "0.3",
            "--rounds-per-level", "1",
            # FedSGD rounds for the search alone: the run: section's schedule is local Adam
            "--optimizer", "sgd", "--lr", "1", "--local-epochs", "1",
            "--batch-size", "4096"]  # fmt: skip
    run_dir = state / "runs" / "find-found"
    started: list[subprocess.Popen[bytes]] = []
    try:
        first = _start(find, tmp_path / "first.log")
        started.append(first)
        _wait_for(lambda: is_listening("127.0.0.1", port), 120, "the SuperLink")
        for device in devices:  # the search waits for min-nodes of them to connect
            enrolled = subprocess.run(
                [str(BIN / "fleet-server"), "enroll", str(device.public_key), "--name",
                 device.name, "-c", str(config)],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
        for index, device in enumerate(devices):
            daemon = [str(BIN / "edge-daemon"), "run", "-c", str(device.config)]
            started.append(_start(daemon, tmp_path / f"daemon-{index}.log"))
        _wait_for((run_dir / "level-001.state").exists, 300, "level 0 to finish")
        _kill_group(first, signal.SIGKILL)
        first.wait(timeout=10)
        level0 = sorted(p.name for p in (run_dir / "level-000" / "checkpoints").iterdir())
        fitted = (run_dir / "encoding.json").read_bytes()
        drawn_at = (run_dir / "dense.ticket").stat().st_mtime_ns

        second = _start([*find, "--force"], tmp_path / "second.log")
        started.append(second)
        assert second.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()
    finally:
        _stop_all(started)

    second_log = (tmp_path / "second.log").read_text()
    assert "resuming the search" in second_log and "found ticket" in second_log
    assert sorted(p.name for p in (run_dir / "level-000" / "checkpoints").iterdir()) == level0
    found = read_ticket(out, trusted_keys=[(state / "keys" / "fleet.pub").read_bytes()])
    fleet_pub = (state / "keys" / "fleet.pub").read_bytes()
    base = read_ticket(run_dir / "dense.ticket", trusted_keys=[fleet_pub])  # signed: installed
    assert found.manifest.parent == base.content_id
    fit = found.manifest.metrics["encoding_fit"]
    assert (fit["fitted_on"], fit["devices"], fit["round"]) == ("fleet", 3, 1)
    assert json.loads((run_dir / "encoding.json").read_text())["dense_ticket"] == base.content_id
    # The resumed search neither asked for the counts again nor drew another W_0.
    assert (run_dir / "encoding.json").read_bytes() == fitted
    assert (run_dir / "dense.ticket").stat().st_mtime_ns == drawn_at
    assert found.manifest.density.overall == pytest.approx(0.6, abs=0.01)
    train = found.manifest.method.train
    assert train is not None
    assert (train["optimizer"], train["lr"], train["epochs"], train["batch_size"]) == (
        "sgd", 1.0, 1, 4096)  # fmt: skip
    fleet = found.manifest.fleet
    assert fleet is not None and fleet.secagg
    assert (fleet.levels, fleet.rounds, fleet.devices) == (2, 3, 3)  # the fit's round too
    assert fleet.bytes_up > 0 and fleet.bytes_down > 0
    for name in ("level-000", "level-001"):
        lines = (run_dir / name / "rounds.jsonl").read_text().splitlines()
        rounds = [json.loads(line)["round"] for line in lines]
        assert rounds == ([2] if name == "level-000" else [3])  # each round once
    # Only aggregates reach the server's disk: no per-device vector or count in the search's
    # files (encoding.json is the fit's record; the fleet's summed counts are not kept).
    stored = {p.suffix for p in run_dir.rglob("*") if p.is_file() and p.name != "round.json"}
    assert stored <= {".state", ".ckpt", ".jsonl", ".png", ".json", ".ticket"}
    assert set(json.loads((run_dir / "encoding.json").read_text())) == {
        "fitted_on", "run_id", "schema", "devices", "rows", "round", "bytes_up", "bytes_down",
        "rejected", "nodes", "dense_ticket"}  # fmt: skip
    progress = json.loads((run_dir / "level-001" / "round.json").read_text())
    assert set(progress) == {"round", "stage", "sent", "replied", "usable", "elapsed_s", "goal",
                             "deadline_s", "closed"}  # counts only  # fmt: skip
    inspect = subprocess.run(
        [str(BIN / "ticket"), "inspect", str(out), "--key", str(state / "keys" / "fleet.pub")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert inspect.returncode == 0 and "found on the fleet" in inspect.stdout, inspect.stdout
    assert "encoding  fitted on the fleet's summed counts" in inspect.stdout, inspect.stdout
    assert not is_listening("127.0.0.1", port)
