"""RunCheckpoint: round trip, latest, and refusal of damaged or foreign checkpoints."""

from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import CheckpointError, RunCheckpoint, settings_fingerprint

SETTINGS = {"plan": {"seed": 0, "train": {"lr": 0.001, "epochs": 1}}, "sampling": {"min": 2}}


def _checkpoints(directory: Path, **changes: object) -> RunCheckpoint:
    options: dict[str, object] = {"ticket_id": "a" * 64, "size": 5, "settings": SETTINGS}
    options.update(changes)
    return RunCheckpoint(directory, **options)  # type: ignore[arg-type]


def _vector(value: float) -> np.ndarray:
    return np.arange(5, dtype=np.float32) + np.float32(value)


def test_latest_is_none_for_a_fresh_run(tmp_path: Path) -> None:
    assert _checkpoints(tmp_path / "missing").latest() is None
    assert _checkpoints(tmp_path).latest() is None


def test_latest_returns_the_last_round_with_its_vector_and_record(tmp_path: Path) -> None:
    checkpoints = _checkpoints(tmp_path)
    for server_round in (1, 2, 3):
        checkpoints.save(server_round, _vector(server_round), {"round": server_round})
    (tmp_path / "notes.txt").write_text("not a checkpoint")

    latest = _checkpoints(tmp_path).latest()

    assert latest is not None
    assert latest.server_round == 3
    np.testing.assert_array_equal(latest.vector, _vector(3))
    assert latest.vector.dtype == np.float32
    assert latest.record == {"round": 3}
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [
        "round-000001.ckpt",
        "round-000002.ckpt",
        "round-000003.ckpt",
    ]


def test_a_checkpoint_of_another_ticket_is_refused(tmp_path: Path) -> None:
    _checkpoints(tmp_path).save(1, _vector(1), {})

    with pytest.raises(CheckpointError, match=r"round-000001\.ckpt: meta\.ticket_id is a+, but"):
        _checkpoints(tmp_path, ticket_id="b" * 64).latest()


def test_a_checkpoint_with_other_settings_is_refused_naming_the_key(tmp_path: Path) -> None:
    _checkpoints(tmp_path).save(1, _vector(1), {})
    changed = {**SETTINGS, "plan": {"seed": 0, "train": {"lr": 0.01, "epochs": 1}}}

    with pytest.raises(CheckpointError, match=r"round-000001\.ckpt: .*changed: plan\.train\.lr"):
        _checkpoints(tmp_path, settings=changed).latest()


def test_a_checkpoint_of_another_size_is_refused(tmp_path: Path) -> None:
    _checkpoints(tmp_path).save(1, _vector(1), {})

    with pytest.raises(CheckpointError, match=r"float32 \[6\]"):
        _checkpoints(tmp_path, size=6).latest()


@pytest.mark.parametrize("where", [0, 20, -40, -1])
def test_a_corrupted_checkpoint_is_refused_not_skipped(tmp_path: Path, where: int) -> None:
    checkpoints = _checkpoints(tmp_path)
    checkpoints.save(1, _vector(1), {})
    path = checkpoints.save(2, _vector(2), {})
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=r"round-000002\.ckpt: unreadable checkpoint"):
        checkpoints.latest()


def test_a_renamed_checkpoint_is_refused(tmp_path: Path) -> None:
    checkpoints = _checkpoints(tmp_path)
    checkpoints.save(1, _vector(1), {}).rename(checkpoints.path(4))

    with pytest.raises(CheckpointError, match=r"meta\.round is 1, the file name says 4"):
        checkpoints.latest()


def test_save_refuses_a_vector_of_the_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"shape \[4\], expected \[5\]"):
        _checkpoints(tmp_path).save(1, np.zeros(4, dtype=np.float32), {})


def test_the_settings_fingerprint_is_pinned() -> None:
    # Changing how settings are fingerprinted orphans every checkpoint: do it on purpose.
    assert settings_fingerprint({"b": 1, "a": [0.5, "x"]}) == settings_fingerprint(
        {"a": [0.5, "x"], "b": 1}
    )
    assert settings_fingerprint({"a": 1}) == (
        "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
    )
