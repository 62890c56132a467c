"""Loaders for the source data sets (digits, FashionMNIST, CIFAR-10) into uint8 tensors.

Every loader validates what it reads and raises `ValueError` naming the file and the problem,
so a corrupt or wrong download fails loudly instead of training on garbage.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from fused.common.ml.data.tensors import TensorData

# Debian's `dataset-fashion-mnist` installs the four `*-ubyte.gz` files in the first directory.
DEFAULT_FASHION_MNIST_DIRS: tuple[Path, ...] = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/local/share/datasets/fashion-mnist"),
    Path("/opt/datasets/fashion-mnist"),
    Path("/data/fashion-mnist"),
)
# No distribution package ships CIFAR-10; these are conventional places for a manual download.
DEFAULT_CIFAR10_DIRS: tuple[Path, ...] = (
    Path("/usr/share/datasets/cifar-10"),
    Path("/usr/local/share/datasets/cifar-10"),
    Path("/opt/datasets/cifar-10"),
    Path("/data/cifar-10"),
)

FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
# Directory the official CIFAR-10 python tarball extracts to.
CIFAR10_SUBDIR = "cifar-10-batches-py"

DIGITS_SPLIT_SEED = 20_240_601
DIGITS_TEST_FRACTION = 0.2

_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class SourceData:
    """A whole labelled data set: the pool the partitioner splits among participants."""

    name: str
    num_classes: int
    train: TensorData
    test: TensorData
    pixel_max: int  # largest raw pixel value (16 for digits, 255 otherwise)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)


def _tensor_data(x: np.ndarray, y: np.ndarray, ids: np.ndarray, scale: float) -> TensorData:
    labels = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return TensorData(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)),
        y=labels,
        y_true=labels.clone(),
        ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
        scale=scale,
    )


# --- digits (bundled with scikit-learn) ---------------------------------------------------


def _stratified_test_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    mask = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        mask[members[: round(members.size * fraction)]] = True
    return mask


def load_digits_source() -> SourceData:
    """The 1797 real 8x8 digits bundled with scikit-learn, split 80/20 stratified and fixed."""
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if images.min() < 0 or images.max() > 16 or not np.array_equal(images, np.round(images)):
        raise ValueError("sklearn digits: pixels are not integers in 0..16")
    x = images.astype(np.uint8)[:, None, :, :]
    ids = np.arange(labels.shape[0], dtype=np.int64)
    test = _stratified_test_mask(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return SourceData(
        name="digits",
        num_classes=10,
        train=_tensor_data(x[~test], labels[~test], ids[~test], 1.0 / 16),
        test=_tensor_data(x[test], labels[test], ids[test], 1.0 / 16),
        pixel_max=16,
    )


# --- FashionMNIST (IDX files) ---------------------------------------------------------------


def parse_idx(data: bytes, source: str, ndim: int) -> np.ndarray:
    """Decode an IDX ubyte array with `ndim` dimensions; `source` names the file in errors."""
    header = 4 + 4 * ndim
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source}: bad IDX magic number {data[:4].hex() or '(empty)'}")
    if data[2] != _IDX_UBYTE:
        raise ValueError(f"{source}: IDX dtype code 0x{data[2]:02x}, expected 0x08 (ubyte)")
    if data[3] != ndim:
        raise ValueError(f"{source}: IDX has {data[3]} dimensions, expected {ndim}")
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(data) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "trailing bytes"
        raise ValueError(
            f"{source}: {problem}: dims {dims} need {expected} data bytes, file has {actual}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx_file(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"{data_dir}: missing {stem} (or {stem}.gz)")


def read_idx_file(path: Path, ndim: int) -> np.ndarray:
    """Read a plain or gzip-compressed IDX file."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip data: {exc}") from exc
    return parse_idx(raw, str(path), ndim)


def _load_idx_split(data_dir: Path, images_key: str, labels_key: str) -> tuple[np.ndarray, ...]:
    images_path = _find_idx_file(data_dir, FASHION_MNIST_FILES[images_key])
    labels_path = _find_idx_file(data_dir, FASHION_MNIST_FILES[labels_key])
    images = read_idx_file(images_path, 3)
    labels = read_idx_file(labels_path, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
        )
    if labels.size and int(labels.max()) >= 10:
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return images[:, None, :, :], labels.astype(np.int64)


def load_fashion_mnist(data_dir: Path) -> SourceData:
    """FashionMNIST from the four IDX files (plain or .gz) in `data_dir`."""
    train_x, train_y = _load_idx_split(data_dir, "train_images", "train_labels")
    test_x, test_y = _load_idx_split(data_dir, "test_images", "test_labels")
    n_train = train_y.shape[0]
    return SourceData(
        name="fashionmnist",
        num_classes=10,
        train=_tensor_data(train_x, train_y, np.arange(n_train), 1.0 / 255),
        test=_tensor_data(test_x, test_y, n_train + np.arange(test_y.shape[0]), 1.0 / 255),
        pixel_max=255,
    )


# --- CIFAR-10 (python-version pickled batches) ----------------------------------------------


class DisallowedPickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list (a ValueError too, for callers)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles from Python 3 store bytes as _codecs.encode(str, "latin1");
    # only that codec is allowed so the global cannot reach arbitrary codecs.
    if encoding not in ("latin1", "latin-1"):
        raise DisallowedPickleError(f"codec {encoding!r} is not allowed")
    return text.encode("latin1")


# numpy's array reconstructor, taken from ndarray itself so it matches the installed numpy.
_NUMPY_RECONSTRUCT = cast(tuple[Callable[..., Any], Any], np.zeros(0).__reduce__())[0]

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the few globals numpy arrays in CIFAR batches need."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DisallowedPickleError(f"global {module}.{name} is not allowed") from None


def restricted_load(path: Path) -> Any:
    """Unpickle `path` with `RestrictedUnpickler`; py2 strings come back as bytes."""
    with path.open("rb") as handle:
        return RestrictedUnpickler(handle, encoding="bytes").load()


def _batch_field(batch: dict[Any, Any], key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise KeyError(key)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch as (x (N,3,32,32) uint8, y (N,) int64), validated."""
    if not path.is_file():
        raise ValueError(f"{path}: missing CIFAR-10 batch file")
    try:
        batch = restricted_load(path)
    except DisallowedPickleError as exc:
        raise DisallowedPickleError(f"{path}: {exc}") from None
    except Exception as exc:  # any decode failure means a corrupt file
        raise ValueError(f"{path}: cannot unpickle CIFAR-10 batch: {exc}") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    try:
        data, labels = _batch_field(batch, "data"), _batch_field(batch, "labels")
    except KeyError as exc:
        raise ValueError(f"{path}: batch has no {exc.args[0]!r} entry") from None
    return _validate_cifar_arrays(path, data, labels)


def _validate_cifar_arrays(path: Path, data: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: 'labels' are not integers: {exc}") from exc
    if y.shape != (data.shape[0],):
        raise ValueError(f"{path}: {y.size} labels for {data.shape[0]} images")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= 10):
        raise ValueError(f"{path}: labels out of range 0..9")
    return data.reshape(-1, 3, 32, 32).copy(), y


def _cifar_batches_dir(data_dir: Path) -> Path:
    nested = data_dir / CIFAR10_SUBDIR
    return nested if nested.is_dir() else data_dir


def load_cifar10(data_dir: Path) -> SourceData:
    """CIFAR-10 from its python batches in `data_dir` (or its `cifar-10-batches-py`)."""
    batches_dir = _cifar_batches_dir(data_dir)
    parts = [read_cifar_batch(batches_dir / name) for name in CIFAR10_TRAIN_BATCHES]
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    test_x, test_y = read_cifar_batch(batches_dir / CIFAR10_TEST_BATCH)
    n_train = train_y.shape[0]
    return SourceData(
        name="cifar10",
        num_classes=10,
        train=_tensor_data(train_x, train_y, np.arange(n_train), 1.0 / 255),
        test=_tensor_data(test_x, test_y, n_train + np.arange(test_y.shape[0]), 1.0 / 255),
        pixel_max=255,
    )


# --- dispatch --------------------------------------------------------------------------------


def _has_fashion_files(data_dir: Path) -> bool:
    return all(
        (data_dir / stem).is_file() or (data_dir / f"{stem}.gz").is_file()
        for stem in FASHION_MNIST_FILES.values()
    )


def _has_cifar_files(data_dir: Path) -> bool:
    batches_dir = _cifar_batches_dir(data_dir)
    names = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    return all((batches_dir / name).is_file() for name in names)


def find_data_dir(name: str, candidates: Sequence[Path], complete: Callable[[Path], bool]) -> Path:
    """First candidate directory holding a complete copy of the data set."""
    for candidate in candidates:
        if candidate.is_dir() and complete(candidate):
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise ValueError(f"{name}: no data directory given and none found; searched {searched}")


_ALIASES = {"fashion-mnist": "fashionmnist", "fashion_mnist": "fashionmnist", "cifar-10": "cifar10"}
SOURCE_NAMES: tuple[str, ...] = ("digits", "fashionmnist", "cifar10")


def load_source(name: str, data_dir: Path | None = None) -> SourceData:
    """Load a source by name; `data_dir` is ignored for the bundled digits."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in SOURCE_NAMES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(SOURCE_NAMES)}")
    if key == "digits":
        return load_digits_source()
    if data_dir is not None and not data_dir.is_dir():
        raise ValueError(f"{key}: data directory {data_dir} does not exist")
    if key == "fashionmnist":
        found = data_dir or find_data_dir(key, DEFAULT_FASHION_MNIST_DIRS, _has_fashion_files)
        return load_fashion_mnist(found)
    found = data_dir or find_data_dir(key, DEFAULT_CIFAR10_DIRS, _has_cifar_files)
    return load_cifar10(found)
