"""Source loaders: IDX and CIFAR parsing on generated files, the real digits and FashionMNIST."""

from __future__ import annotations

import builtins
import codecs
import gzip
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fused.common.ml.data import sources
from fused.common.ml.data.sources import (
    DEFAULT_FASHION_MNIST_DIRS,
    FASHION_MNIST_FILES,
    DisallowedPickleError,
    load_cifar10,
    load_digits_source,
    load_fashion_mnist,
    load_source,
    parse_idx,
    read_cifar_batch,
)

# --- IDX ---------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.astype(np.uint8).tobytes()


def write_idx(path: Path, payload: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_fashion_dir(
    root: Path, n_train: int = 12, n_test: int = 5, gz: bool = False
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    for key, array in arrays.items():
        write_idx(root / FASHION_MNIST_FILES[key], idx_bytes(array), gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_generated_idx(tmp_path: Path, gz: bool) -> None:
    expected = make_fashion_dir(tmp_path, gz=gz)
    source = load_fashion_mnist(tmp_path)
    assert source.name == "fashionmnist" and source.num_classes == 10 and source.pixel_max == 255
    assert source.train.x.shape == (12, 1, 28, 28) and source.train.x.dtype == torch.uint8
    assert np.array_equal(source.train.x[:, 0].numpy(), expected["train_images"])
    assert np.array_equal(source.test.y.numpy(), expected["test_labels"])
    assert torch.equal(source.train.y, source.train.y_true)
    assert source.train.ids.tolist() == list(range(12))
    assert source.test.ids.tolist() == list(range(12, 17))
    assert source.train.scale == pytest.approx(1 / 255)


def test_parse_idx_roundtrip() -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(array), "mem", 3), array)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "magic"),
        (b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc", "dtype code"),
        (b"\x00\x00\x08\x02" + (3).to_bytes(4, "big") + b"abc", "dimensions"),
        (b"\x00\x00\x08\x01\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated"),
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "trailing bytes"),
        (b"", "magic"),
    ],
)
def test_parse_idx_rejects_corrupt(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_idx(payload, "labels-file", 1)


def test_fashion_truncated_file_names_it(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    path = tmp_path / FASHION_MNIST_FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated"):
        load_fashion_mnist(tmp_path)


def test_fashion_label_count_mismatch(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    write_idx(tmp_path / FASHION_MNIST_FILES["test_labels"], idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: 4 labels for 5 images"):
        load_fashion_mnist(tmp_path)


def test_fashion_label_out_of_range(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    labels = np.full(12, 10, np.uint8)
    write_idx(tmp_path / FASHION_MNIST_FILES["train_labels"], idx_bytes(labels))
    with pytest.raises(ValueError, match="label 10 out of range"):
        load_fashion_mnist(tmp_path)


def test_fashion_wrong_image_size(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    images = np.zeros((5, 27, 28), np.uint8)
    write_idx(tmp_path / FASHION_MNIST_FILES["test_images"], idx_bytes(images))
    with pytest.raises(ValueError, match="expected \\(28, 28\\)"):
        load_fashion_mnist(tmp_path)


def test_fashion_bad_gzip_and_missing_file(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path, gz=True)
    gz_path = tmp_path / (FASHION_MNIST_FILES["train_labels"] + ".gz")
    gz_path.write_bytes(gz_path.read_bytes()[:10])
    with pytest.raises(ValueError, match="corrupt gzip"):
        load_fashion_mnist(tmp_path)
    gz_path.unlink()
    with pytest.raises(ValueError, match="missing train-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)


# --- CIFAR-10 ------------------------------------------------------------------------------


def cifar_batch(n: int, seed: int) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"generated batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def make_cifar_dir(root: Path, protocol: int) -> dict[str, dict[bytes, Any]]:
    root.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {name: cifar_batch(3 + i, seed=i) for i, name in enumerate(names)}
    for name, batch in batches.items():
        with (root / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar_from_generated_batches(tmp_path: Path, protocol: int) -> None:
    batches = make_cifar_dir(tmp_path, protocol)
    source = load_cifar10(tmp_path)
    n_train = sum(3 + i for i in range(5))
    assert source.name == "cifar10" and source.pixel_max == 255
    assert source.train.x.shape == (n_train, 3, 32, 32) and len(source.test) == 8
    first = batches["data_batch_1"][b"data"]
    # Rows are channel-major: 1024 red, then green, then blue values, each row by row.
    assert int(source.train.x[1, 2, 5, 7]) == int(first[1, 2 * 1024 + 5 * 32 + 7])
    labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][b"labels"]]
    assert source.train.y.tolist() == labels
    assert source.test.ids.tolist() == list(range(n_train, n_train + 8))


def test_cifar_legacy_numpy_module_and_str_keys(tmp_path: Path) -> None:
    # Files written under numpy 1.x (the official ones) name numpy.core.multiarray.
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    batch = {"data": data, "labels": [3, 4]}
    raw = pickle.dumps(batch, protocol=2)
    assert b"numpy._core.multiarray" in raw
    path = tmp_path / "test_batch"
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = read_cifar_batch(path)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 4]
    assert np.array_equal(x.reshape(2, -1), data)


def test_cifar_nested_tarball_directory(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path / "cifar-10-batches-py", protocol=2)
    assert len(load_source("cifar10", tmp_path).train) == 25


class SystemCall:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo hi",))


class EvalCall:
    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.eval, ("1 + 1",))


class ZlibCodec:
    def __reduce__(self) -> tuple[Any, ...]:
        return (codecs.encode, (b"x", "zlib"))


@pytest.mark.parametrize("payload", [SystemCall(), EvalCall(), ZlibCodec()])
def test_cifar_rejects_malicious_pickle(
    tmp_path: Path, payload: object, capfd: pytest.CaptureFixture[str]
) -> None:
    make_cifar_dir(tmp_path, protocol=2)
    with (tmp_path / "data_batch_1").open("wb") as handle:
        pickle.dump({b"data": payload, b"labels": [0]}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        read_cifar_batch(tmp_path / "data_batch_1")
    with pytest.raises(pickle.UnpicklingError):
        load_cifar10(tmp_path)
    assert "hi" not in capfd.readouterr().out  # the shell command never ran


def test_disallowed_pickle_is_also_value_error() -> None:
    assert issubclass(DisallowedPickleError, ValueError)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"labels": [0]}, "no 'data'"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, "expected 3072"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "uint8"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "out of range"),
        ([1, 2, 3], "expected a pickled dict"),
    ],
)
def test_cifar_rejects_bad_batches(tmp_path: Path, batch: object, message: str) -> None:
    path = tmp_path / "test_batch"
    with path.open("wb") as handle:
        pickle.dump(batch, handle)
    with pytest.raises(ValueError, match=message):
        read_cifar_batch(path)


def test_cifar_garbage_file_is_value_error(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(ValueError, match="test_batch"):
        read_cifar_batch(path)


# --- dispatch and defaults -------------------------------------------------------------------


def test_load_source_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown data set 'mnist3d'"):
        load_source("mnist3d")


def test_load_source_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_source("cifar10", tmp_path / "nope")


def test_load_source_lists_searched_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    candidates = (tmp_path / "a", tmp_path / "b")
    monkeypatch.setattr(sources, "DEFAULT_FASHION_MNIST_DIRS", candidates)
    searched = re.escape(f"searched {tmp_path / 'a'}, {tmp_path / 'b'}")
    with pytest.raises(ValueError, match=searched):
        load_source("fashionmnist")


def test_load_source_searches_default_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    make_fashion_dir(tmp_path / "full")
    monkeypatch.setattr(
        sources, "DEFAULT_FASHION_MNIST_DIRS", (tmp_path / "empty", tmp_path / "full")
    )
    assert len(load_source("fashion-mnist").train) == 12


# --- real data -------------------------------------------------------------------------------


def test_real_digits() -> None:
    source = load_digits_source()
    assert source.name == "digits" and source.num_classes == 10 and source.pixel_max == 16
    assert source.input_shape == (1, 8, 8) and source.train.x.dtype == torch.uint8
    assert len(source.train) + len(source.test) == 1797
    ids = torch.cat([source.train.ids, source.test.ids]).sort().values
    assert torch.equal(ids, torch.arange(1797))
    assert int(source.train.x.max()) <= 16 and source.train.scale == pytest.approx(1 / 16)
    # Stratified 80/20: every class appears in test at about a fifth of its members.
    test_counts = torch.bincount(source.test.y, minlength=10)
    all_counts = test_counts + torch.bincount(source.train.y, minlength=10)
    assert torch.all((test_counts.float() / all_counts.float() - 0.2).abs() < 0.01)
    again = load_digits_source()
    assert torch.equal(again.test.ids, source.test.ids)


def _installed_fashion_dir() -> Path | None:
    for candidate in DEFAULT_FASHION_MNIST_DIRS:
        if sources._has_fashion_files(candidate):
            return candidate
    return None


@pytest.mark.skipif(_installed_fashion_dir() is None, reason="FashionMNIST files not installed")
def test_real_fashion_mnist() -> None:
    source = load_source("fashionmnist")
    assert len(source.train) == 60000 and len(source.test) == 10000
    assert source.input_shape == (1, 28, 28)
    assert torch.equal(torch.bincount(source.train.y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(source.test.y), torch.full((10,), 1000))
    assert int(source.test.ids[0]) == 60000
