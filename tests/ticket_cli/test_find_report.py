"""A search's tickets: the last level's, or any level's, each with the metrics up to it."""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from ticket.lottery import SearchSpec
from ticket.train_config import TrainConfig
from ticket_cli.find_report import build_level_ticket
from ticket_cli.find_runner import SearchOutcome, SearchRunner

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> SearchOutcome:
    spec = SearchSpec(
        model="heart-mlp",
        data="heart-uci",
        sites=("Cleveland",),
        target_density=0.4,
        model_args={"hidden": [16, 8]},
        train=TrainConfig(epochs=2, batch_size=32, lr=1e-2),
        controls=("random",),
    )
    return SearchRunner(spec, tmp_path_factory.mktemp("search"), progress=False).run()


def test_a_middle_level_is_its_mask_over_the_rewound_weights(outcome: SearchOutcome) -> None:
    ticket = build_level_ticket(outcome, created_at=WHEN, parent="ab" * 32, level=2)

    record = outcome.levels[2]
    assert ticket.manifest.density.overall == pytest.approx(record.density)
    assert ticket.manifest.metrics["final"] == record.ticket
    assert [r["level"] for r in ticket.manifest.metrics["levels"]] == [0, 1, 2]
    assert ticket.manifest.parent == "ab" * 32
    for name, keep in outcome.masks[2].items():
        assert np.array_equal(ticket.masks[name], keep.numpy())
        assert np.array_equal(ticket.weights[name], outcome.rewind[name].numpy() * keep.numpy())


def test_the_default_is_the_last_level(outcome: SearchOutcome) -> None:
    last = build_level_ticket(outcome, created_at=WHEN, parent=None)
    same = build_level_ticket(outcome, created_at=WHEN, parent=None, level=len(outcome.levels) - 1)

    assert last.content_id == same.content_id
    assert len(last.manifest.metrics["levels"]) == len(outcome.levels)
    assert "random" in last.manifest.metrics["levels"][-1]["controls"]


def test_a_level_past_the_search_is_refused(outcome: SearchOutcome, tmp_path: Path) -> None:
    with pytest.raises(IndexError):
        build_level_ticket(outcome, created_at=WHEN, parent=None, level=len(outcome.levels))
