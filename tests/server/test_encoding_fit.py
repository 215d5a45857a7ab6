"""The federated fit of the encoding (server/encoding_fit.py) over the real ClientApp, in process:
the fleet's counts are summed under secure aggregation and fit what the pooled rows fit."""

from pathlib import Path
from typing import Any

import pytest

from edge_daemon import client_app
from server.encoding_fit import EncodingFitError, fit_encoding
from server.run_settings import ServerSettings
from tests.inprocess import InProcessGrid, heart_nodes, server_identity
from tests.ticket.test_heart_counts import _assert_same_fit
from ticket import runconfig
from ticket.data.heart import heart_training_rows
from ticket.data.heart_counts import encoding_counts
from ticket.data.heart_encoding import HeartPreprocessor
from ticket_cli.cli import main as ticket_main


@pytest.fixture(scope="module")
def dense_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only for the run config's ticket-path: the fit itself needs no ticket."""
    out = tmp_path_factory.mktemp("dense") / "dense.ticket"
    assert (
        ticket_main(["init", "--model", "heart-mlp", "--data", "heart-uci", "--out", str(out)]) == 0
    )
    return out


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
