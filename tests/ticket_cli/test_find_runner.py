"""The resumable search: levels, determinism, resume without recomputation, workdir safety."""

from pathlib import Path
from typing import Any

import pytest
import torch

from ticket.errors import TicketError
from ticket.lottery import SearchSpec, initial_weights
from ticket.masks import density, layer_densities
from ticket.prune import PruningRates
from ticket.train_config import TrainConfig
from ticket_cli import find_runner
from ticket_cli.find_runner import SearchRunner, WorkdirMismatchError

SMALL = {"hidden": [16, 8]}


def _spec(**changes: Any) -> SearchSpec:
    base: dict[str, Any] = {
        "model": "heart-mlp",
        "data": "heart-uci",
        "sites": ("Cleveland",),
        "target_density": 0.3,
        "model_args": SMALL,
        "train": TrainConfig(epochs=2, batch_size=32, lr=1e-2),
    }
    return SearchSpec(**{**base, **changes})


def _count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = find_runner.train_level

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(find_runner, "train_level", counting)
    return calls


def test_search_prunes_level_by_level_down_to_the_target(tmp_path: Path) -> None:
    outcome = SearchRunner(_spec(), tmp_path / "work", progress=False).run()
    densities = [level.density for level in outcome.levels]
    assert densities[0] == 1.0
    assert densities == sorted(densities, reverse=True)
    assert abs(density(outcome.mask) - 0.3) < 0.01
    assert len(outcome.levels) == 7  # 0.8^5 = 0.33 > 0.3, so level 6 lands on the target
    for level in outcome.levels[1:]:
        assert set(level.controls) == {"reinit", "random"}
        assert 0.0 <= level.ticket["accuracy"] <= 1.0


def test_the_outcome_keeps_every_levels_mask_each_inside_the_one_before(tmp_path: Path) -> None:
    outcome = SearchRunner(_spec(controls=()), tmp_path / "work", progress=False).run()

    assert len(outcome.masks) == len(outcome.levels)
    assert all(torch.equal(outcome.masks[-1][n], outcome.mask[n]) for n in outcome.mask)
    for record, mask in zip(outcome.levels, outcome.masks, strict=True):
        assert density(mask) == record.density
    for before, after in zip(outcome.masks, outcome.masks[1:], strict=False):
        assert all(not (after[n] & ~before[n]).any() for n in after)  # masks only shrink


def test_the_search_fingerprint_of_a_spec_without_train_rows_is_pinned() -> None:
    spec = SearchSpec(
        model="heart-mlp",
        data="heart-uci",
        target_density=0.1,
        train=TrainConfig(epochs=10, batch_size=32, lr=1e-3),
    )

    # Golden: the fingerprint names a search's work directory; it must not move when a
    # setting is added, or every search in progress would refuse to resume.
    assert spec.fingerprint() == (
        "fc494c2b482e0f380742ac5781745af14d2da17fd79e581e9fb43bc3507f456b"
    )
    assert "train_rows" not in spec.as_dict()
    assert SearchSpec(**{**vars(spec), "train_rows": 100}).fingerprint() != spec.fingerprint()


def test_train_rows_trains_on_the_first_rows_only(tmp_path: Path) -> None:
    spec = _spec(controls=(), train_rows=50)
    outcome = SearchRunner(spec, tmp_path / "work", progress=False).run()

    assert outcome.dataset.describe()["rows"]["train"] == 50
    with pytest.raises(TicketError, match="train rows must be >= 1"):
        _spec(train_rows=0)


def test_the_rewound_weights_are_the_initialisation_at_step_zero(tmp_path: Path) -> None:
    outcome = SearchRunner(_spec(controls=()), tmp_path / "work", progress=False).run()
    init = initial_weights(outcome.spec, outcome.model_args)
    assert all(torch.equal(outcome.rewind[name], init[name]) for name in init)


def test_rewind_step_k_captures_weights_after_k_iterations(tmp_path: Path) -> None:
    outcome = SearchRunner(
        _spec(controls=(), rewind_step=3), tmp_path / "work", progress=False
    ).run()
    init = initial_weights(outcome.spec, outcome.model_args)
    assert not torch.equal(outcome.rewind["fc1.weight"], init["fc1.weight"])


def test_rewind_step_past_the_end_of_training_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TicketError, match="past the end of training"):
        SearchRunner(_spec(rewind_step=10_000), tmp_path / "work", progress=False).run()


def test_same_spec_gives_identical_tickets(tmp_path: Path) -> None:
    first = SearchRunner(_spec(controls=()), tmp_path / "a", progress=False).run()
    second = SearchRunner(_spec(controls=()), tmp_path / "b", progress=False).run()
    assert all(torch.equal(first.mask[n], second.mask[n]) for n in first.mask)
    assert [lv.ticket for lv in first.levels] == [lv.ticket for lv in second.levels]


def test_resume_recomputes_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "work"
    finished = SearchRunner(_spec(), workdir, progress=False).run()
    (workdir / "level-006.tensors").unlink()
    (workdir / "level-006.random.json").unlink()
    (workdir / "level-003.reinit.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}

    calls = _count_training(monkeypatch)
    resumed = SearchRunner(_spec(), workdir, progress=False).run()

    assert len(calls) == 3  # level 6's ticket and random control, level 3's reinit control
    after = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    assert {name: after[name] for name in before} == before  # nothing finished was rewritten
    assert [lv.as_dict() for lv in resumed.levels] == [lv.as_dict() for lv in finished.levels]


def test_a_finished_search_trains_nothing_when_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SearchRunner(_spec(), tmp_path / "work", progress=False).run()
    calls = _count_training(monkeypatch)
    SearchRunner(_spec(), tmp_path / "work", progress=False).run()
    assert calls == []


def test_a_workdir_of_another_search_is_refused_naming_what_differs(tmp_path: Path) -> None:
    SearchRunner(_spec(controls=()), tmp_path / "work", progress=False).run()
    # Only the seed differs: a tuple read back from search.json as a list is the same setting.
    with pytest.raises(
        WorkdirMismatchError, match=r"different settings \(seed\); use another --workdir"
    ):
        SearchRunner(_spec(controls=(), seed=1), tmp_path / "work", progress=False).run()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"sites": ("Mars",)}, "Mars"),
        ({"model_args": {"depth": 3}}, r"takes no argument\(s\) depth"),
        ({"model_args": {"hidden": [0]}}, r"argument hidden: expected a list of integers >= 1"),
        ({"model_args": {"in_features": 5}}, "heart-uci fixes in_features at 27"),
        ({"rates": PruningRates(layer_rates={"fc9.weight": 0.1})}, "no prunable layer named"),
        ({"rates": PruningRates(rate=0.0)}, r"unreachable .* would stop at 100.00%"),
        ({"rewind_step": 10_000}, "past the end of training"),
    ],
)
def test_bad_settings_fail_before_the_work_directory_is_claimed(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    workdir = tmp_path / "work"
    with pytest.raises(TicketError, match=message):
        SearchRunner(_spec(**changes), workdir, progress=False).run()
    assert not workdir.exists()


def test_each_control_starts_from_what_the_paper_prescribes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
    real = find_runner.train_level

    def recording(*args: Any, **kwargs: Any) -> Any:
        start, mask = args[3], args[4]  # train_level(spec, model_args, dataset, start, mask)
        starts.append(({n: w.clone() for n, w in start.items()}, dict(mask)))
        return real(*args, **kwargs)

    monkeypatch.setattr(find_runner, "train_level", recording)
    outcome = SearchRunner(_spec(target_density=0.8), tmp_path / "work", progress=False).run()
    rewind = outcome.rewind

    # Call order: the dense level 0, then per level the ticket, reinit, random.
    assert len(starts) == 1 + 3 * (len(outcome.levels) - 1)
    for level in range(1, len(outcome.levels)):
        (ticket_start, ticket_mask), (reinit_start, reinit_mask), (random_start, random_mask) = (
            starts[3 * level - 2 : 3 * level + 1]
        )
        assert all(torch.equal(ticket_start[n], rewind[n] * ticket_mask[n]) for n in ticket_mask)

        # reinit: the ticket's mask, fresh weights that are not W_k.
        assert all(torch.equal(reinit_mask[n], ticket_mask[n]) for n in ticket_mask)
        assert all(
            not torch.equal(reinit_start[n][ticket_mask[n]], rewind[n][ticket_mask[n]])
            for n in ticket_mask
        )
        assert all(torch.count_nonzero(reinit_start[n][~ticket_mask[n]]) == 0 for n in ticket_mask)

        # random: the ticket's per-layer densities, another mask, W_k on it.
        assert layer_densities(random_mask) == layer_densities(ticket_mask)
        assert not all(torch.equal(random_mask[n], ticket_mask[n]) for n in ticket_mask)
        assert all(torch.equal(random_start[n], rewind[n] * random_mask[n]) for n in random_mask)
        assert all(torch.equal(random_start[n], rewind[n]) for n in rewind if n not in random_mask)


def test_global_scope_and_oneshot_method_run(tmp_path: Path) -> None:
    oneshot = SearchRunner(
        _spec(method="oneshot", pruner="magnitude-global"), tmp_path / "one", progress=False
    ).run()
    assert len(oneshot.levels) == 2
    assert abs(oneshot.levels[-1].density - 0.3) < 0.01
