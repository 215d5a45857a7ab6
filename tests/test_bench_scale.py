"""bench/scale.py's helpers: the target the downlink arms run at, the accuracy it is judged
by, which throughput rows a rerun replaces, and the anchor app's run-config keys."""

import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench_scripts import BENCH, load_bench_script
from ticket import runconfig


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    return load_bench_script(BENCH / "scale.py", "bench_scale_helpers")


def test_the_cheapest_target_within_the_tolerance_is_chosen(scale: ModuleType) -> None:
    arms = {1e-3: (0.965, 41_000), 1e-2: (0.960, 31_000), 3e-2: (0.940, 26_000)}

    assert scale.best_target(arms, reference=0.966, tolerance_pp=1.0) == 1e-2
    assert scale.best_target(arms, reference=0.966, tolerance_pp=3.0) == 3e-2
    assert scale.best_target(arms, reference=0.990, tolerance_pp=1.0) is None


def test_a_target_above_the_reference_counts_as_close(scale: ModuleType) -> None:
    assert scale.best_target({2e-2: (0.97, 30_000)}, reference=0.96, tolerance_pp=0.5) == 2e-2


def test_the_last_mean_skips_rounds_without_a_score(scale: ModuleType) -> None:
    rounds = [{"accuracy": a} for a in (0.1, 0.5, None, 0.7)]

    assert scale.last_mean(rounds, count=2) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no round has a server accuracy"):
        scale.last_mean([{"accuracy": None}])


def test_an_anchor_row_never_replaces_a_project_row(scale: ModuleType) -> None:
    earlier = {"per_round": 100, "secagg": False}  # from before rows named their system
    anchor = {"per_round": 100, "secagg": False, "system": scale.ANCHOR}

    assert scale.throughput_key(earlier) == (scale.PROJECT, 100, False)
    assert scale.throughput_key(anchor) != scale.throughput_key(earlier)


def test_the_anchor_declares_run_config_keys_with_their_defaults(scale: ModuleType) -> None:
    pyproject = scale.ANCHOR_APP / "pyproject.toml"
    table = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    defaults = runconfig.to_run_config(runconfig.parse({}))

    assert scale.anchor_keys(pyproject) == sorted(table)
    assert {key: defaults[key] for key in table} == table


def test_an_undeclared_anchor_key_is_named(scale: ModuleType, tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.flwr.app.config]\nnum-rounds = 3\nbogus-key = 1\n")

    with pytest.raises(ValueError, match="bogus-key: not a run-config key"):
        scale.anchor_keys(pyproject)


def _arm(name: str, up: int, accuracy: float, *, secure: bool = True) -> dict[str, object]:
    training = {"secagg": True} if secure else {}
    rounds = [{"accuracy": accuracy}] * 10
    return {
        "arm": {"name": name, "training": training},
        "up_bytes_per_device": up,
        "rounds": rounds,
    }


def test_the_goal_lines_name_who_reaches_a_fortieth(scale: ModuleType) -> None:
    ticket = _arm("ticket float32", 108_000, 0.966, secure=False)
    dense = _arm("dense float32", 1_066_488, 0.938, secure=False)
    arms = [ticket, dense, _arm("target 0.02", 27_905, 0.954), _arm("target 0.03", 24_526, 0.778)]

    lines = scale._goal_lines(arms, 1_066_488, dense, ticket)

    assert lines[2].startswith("- reaches 1/40: target 0.03, 1/43.5, last-10 accuracy 77.80%")
    assert "-18.80 pp against the float32 ticket, -16.00 pp against dense" in lines[2]
    assert lines[3].startswith("- the cheapest short of it: target 0.02, 1/38.2")


def test_no_secure_arm_reaching_a_fortieth_is_said(scale: ModuleType) -> None:
    ticket = _arm("ticket float32", 108_000, 0.966, secure=False)
    arms = [ticket, _arm("q = 16384", 61_695, 0.967)]

    lines = scale._goal_lines(arms, 1_066_488, None, ticket)

    assert "- no secure arm reaches 1/40 of dense float32" in lines
    assert "against dense" not in "".join(lines)


def test_arms_added_later_are_named_with_their_command(scale: ModuleType) -> None:
    arms = [
        {"arm": {"name": "ticket float32"}},
        {
            "arm": {"name": "clip 0.25, target 0.03"},
            "command": "python bench/scale.py bytes --clip 0.25",
        },
        {
            "arm": {"name": "clip 0.25, target 0.02"},
            "command": "python bench/scale.py bytes --clip 0.25",
        },
    ]
    assert scale._added_by(arms) == [
        "Arms added later by `python bench/scale.py bytes --clip 0.25` (the same task, rounds "
        "and seed): clip 0.25, target 0.03, clip 0.25, target 0.02."
    ]
    assert scale._added_by(arms[:1]) == []
