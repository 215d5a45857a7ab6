"""The federated fit of the encoding (server/encoding_fit.py) over the real ClientApp, in process:
the fleet's counts are summed under secure aggregation and fit what the pooled rows fit."""

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_daemon import client_app
from server.encoding_fit import EncodingFitError, fit_encoding
from server.fleet_search import FindSettings, SearchError, run_search
from server.run_settings import ServerSettings
from tests.inprocess import InProcessGrid, heart_nodes, server_identity
from tests.ticket.test_heart_counts import _assert_same_fit
from ticket import runconfig
from ticket.bundle import Ticket, read_ticket
from ticket.data.heart import heart_training_rows
from ticket.data.heart_counts import encoding_counts
from ticket.data.heart_encoding import HeartPreprocessor
from ticket.runconfig import RunConfigError


def _settings(dense_path: Path, tmp_path: Path, **changes: Any) -> ServerSettings:
    config = {
        "ticket-path": str(dense_path),
        "run-dir": str(tmp_path / "fit"),
        "allow-unsigned": True,
        "min-nodes": 4,
        "min-replies": 3,
        "secagg": True,
        **changes,
    }
    return ServerSettings.from_run(runconfig.parse(config))


def _fit(settings: ServerSettings, nodes: list[dict[str, Any]], **options: Any) -> Any:
    with server_identity():
        return fit_encoding(InProcessGrid(client_app.app, nodes), settings, **options)


def test_the_fleets_secure_sum_of_counts_fits_the_pooled_rows_encoder(
    dense_path: Path, tmp_path: Path
) -> None:
    fit = _fit(_settings(dense_path, tmp_path), heart_nodes(dense_path))

    rows = heart_training_rows()
    _assert_same_fit(fit.preprocessor, HeartPreprocessor.fit(rows))
    assert (fit.devices, fit.rows, fit.round, fit.rejected) == (4, len(rows), 1, {})
    assert fit.bytes_up > 4 * 1741  # every device's masked counts, a byte or more each
    assert fit.bytes_down > 0


def test_a_device_whose_counts_exceed_the_cap_sits_out_and_the_rest_are_summed(
    dense_path: Path, tmp_path: Path
) -> None:
    """A cap just below the largest hospital's biggest count: that device refuses to mask
    (its counts would not fit the round), the other three are summed, and the fit says so."""
    rows = heart_training_rows()
    sites = sorted({str(row["dataset"]) for row in rows})
    by_site = {site: [row for row in rows if row["dataset"] == site] for site in sites}
    biggest = {site: int(encoding_counts(part).max()) for site, part in by_site.items()}
    largest = max(sites, key=lambda site: biggest[site])
    cap = biggest[largest] - 1
    assert all(biggest[site] <= cap for site in sites if site != largest)

    fit = _fit(_settings(dense_path, tmp_path), heart_nodes(dense_path), cap=cap)

    assert (fit.devices, fit.rows) == (3, len(rows) - len(by_site[largest]))
    _assert_same_fit(
        fit.preprocessor,
        HeartPreprocessor.fit([row for row in rows if row["dataset"] != largest]),
    )


def test_a_fit_with_no_sum_is_an_error_naming_why(dense_path: Path, tmp_path: Path) -> None:
    with pytest.raises(EncodingFitError, match="the fleet's counts could not be summed"):
        _fit(_settings(dense_path, tmp_path), heart_nodes(dense_path), cap=5)


@pytest.mark.parametrize(
    ("changes", "options", "message"),
    [
        ({"secagg": False}, {}, "under secure aggregation only"),
        ({"dp-noise-multiplier": 1.0, "dp-clip-norm": 0.5}, {}, "DP noise on the encoding"),
        ({}, {"schema": "mnist"}, "no encoding fit for readings schema 'mnist'"),
        ({}, {"cap": 0}, "the count cap must be in 1.."),
    ],
)
def test_a_fit_it_cannot_run_is_refused_before_any_message(
    dense_path: Path, tmp_path: Path, changes: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    grid = InProcessGrid(client_app.app, [])  # no device: nothing may be sent
    with pytest.raises(EncodingFitError, match=message), server_identity():
        fit_encoding(grid, _settings(dense_path, tmp_path, **changes), **options)


def _fit_search_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return {
        "mode": "find",
        "ticket-path": str(tmp_path / "dense.ticket"),  # written by the search
        "run-dir": str(tmp_path / "search"),
        "search-out": str(tmp_path / "found.ticket"),
        "allow-unsigned": True,
        "secagg": True,
        "min-nodes": 4,
        "min-replies": 3,
        "fraction-evaluate": 0.0,
        "local-epochs": 1,
        "batch-size": 32,
        "search-push-ticket": False,  # the in-process nodes read ticket-path
        "search-method": "fed-oneshot",
        "search-rounds-per-level": 1,
        "search-target-density": 0.2,
        "search-fit-encoding": True,
        "search-model": "heart-mlp",
        **changes,
    }


def _search(config: dict[str, Any]) -> Ticket:
    settings = FindSettings.from_run(runconfig.parse(config))
    grid = InProcessGrid(client_app.app, heart_nodes(Path(config["ticket-path"])))
    random.seed(0)
    with server_identity():
        return run_search(grid, settings)


def test_a_search_that_fits_the_encoding_on_the_fleet_draws_ticket_inits_w0_and_resumes(
    dense_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ticket at the start: the fleet's counts fit the encoding the pooled rows would, so
    the drawn dense ticket is `ticket init`'s (same W_0, same width); the found ticket names
    the fit, and counts its round and bytes. A search killed after the fit resumes without
    asking the fleet again."""
    config = _fit_search_config(tmp_path)
    found = _search(config)

    dense = read_ticket(tmp_path / "dense.ticket", allow_unsigned=True)
    pooled = read_ticket(dense_path, allow_unsigned=True)  # `ticket init` on the pooled rows
    assert dense.manifest.data.preprocessing is not None
    _assert_same_fit(
        HeartPreprocessor.from_json(dense.manifest.data.preprocessing),
        HeartPreprocessor.fit(heart_training_rows()),
    )
    for name, weight in pooled.weights.items():
        np.testing.assert_array_equal(dense.weights[name], weight)
    assert found.manifest.parent == dense.content_id
    fit = found.manifest.metrics["encoding_fit"]
    assert (fit["fitted_on"], fit["devices"], fit["round"]) == ("fleet", 4, 1)
    fleet = found.manifest.fleet
    assert fleet is not None and fleet.rounds == 2  # the fit's round and fed-oneshot's one
    assert fleet.bytes_up > fit["bytes_up"] > 0

    # Killed after the fit, before level 0 was recorded: the rerun reuses fit and W_0.
    for state in (tmp_path / "search").glob("level-*.state"):
        state.unlink()

    def no_second_fit(*_: object, **__: object) -> None:
        raise AssertionError("a resumed search asked the fleet for its counts again")

    monkeypatch.setattr("server.fleet_search.fit_encoding", no_second_fit)
    again = _search(config)
    assert again.manifest.parent == dense.content_id
    assert read_ticket(tmp_path / "dense.ticket", allow_unsigned=True).content_id == (
        dense.content_id
    )

    # Killed between writing the dense ticket and the fit's record: the ticket names the fit.
    (tmp_path / "search" / "encoding.json").unlink()
    for state in (tmp_path / "search").glob("level-*.state"):
        state.unlink()
    third = _search(config)
    assert third.manifest.parent == dense.content_id
    assert third.manifest.metrics["encoding_fit"]["devices"] == 4


def test_a_fit_search_refuses_to_overwrite_a_ticket_or_to_run_without_a_model(
    dense_path: Path, tmp_path: Path
) -> None:
    with pytest.raises(SearchError, match="exists: with search-fit-encoding the search writes"):
        _search(_fit_search_config(tmp_path, **{"ticket-path": str(dense_path)}))
    with pytest.raises(RunConfigError, match="search-fit-encoding needs search-model"):
        runconfig.parse(_fit_search_config(tmp_path, **{"search-model": ""}))
