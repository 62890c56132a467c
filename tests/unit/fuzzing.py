"""Shared pieces of the codec fuzz tests: hypothesis settings, strategies, hostile mutations.

Every decoder must either return a result that satisfies its contract or raise its documented
ValueError subclass; any other exception (IndexError, struct.error, RecursionError, a leaked
zstd or torch error, ...) fails the test, because `accept_or_reject` lets it propagate."""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
import zstandard
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")
Tensors = dict[str, torch.Tensor]

# Derandomized (same examples every run), no example database (nothing written to the
# checkout), no deadline (shared CI machines are slow): each test sets only max_examples.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


# Every dtype the tensor codec can decode (the default allow-list is a subset).
ALL_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
ALLOW_ALL = frozenset(ALL_DTYPES)
DTYPE_STRS = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GIB = 2**30


def accept_or_reject(decode: Callable[[], T], error: type[ValueError]) -> T | None:
    """The decoder's result, or None when it refused with its documented error type."""
    try:
        return decode()
    except error:
        return None


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """Raw bytes of a tensor: compares bit patterns (-0.0 != 0.0), not values."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def tensor_from_bytes(raw: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Every bit pattern of ``dtype``, except non-finite floats (replaced by -0.0)."""
    u8 = torch.tensor(list(raw), dtype=torch.uint8)
    tensor = (u8 & 1).view(torch.bool) if dtype == torch.bool else u8.view(dtype)
    if dtype.is_floating_point:
        tensor = torch.where(torch.isfinite(tensor), tensor, torch.full_like(tensor, -0.0))
    return tensor.reshape(shape)


# --------------------------------------------------------------------------- strategies

# Realistic state-dict names; no "_" so the reserved "__metadata__" can never come up.
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789.-", min_size=1, max_size=12)
metadata = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)


@st.composite
def tensor_values(draw: st.DrawFn, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return tensor_from_bytes(draw(st.binary(min_size=size, max_size=size)), dtype, shape)


@st.composite
def tensor_dicts(
    draw: st.DrawFn, min_size: int = 0, dtypes: list[torch.dtype] = ALL_DTYPES
) -> Tensors:
    out: Tensors = {}
    for name in draw(st.lists(names, min_size=min_size, max_size=4, unique=True)):
        dtype = draw(st.sampled_from(dtypes))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        out[name] = draw(tensor_values(dtype, shape))
    return out


@st.composite
def float32_vectors(draw: st.DrawFn, numel: int) -> torch.Tensor:
    """Either arbitrary float32 bit patterns or float16-representable values."""
    if draw(st.booleans()):
        return draw(tensor_values(torch.float32, (numel,)))
    floats = st.floats(-65504.0, 65504.0, width=16)
    values = draw(st.lists(floats, min_size=numel, max_size=numel))
    return torch.tensor(values, dtype=torch.float32).reshape(numel)


@st.composite
def position_sets(draw: st.DrawFn) -> tuple[np.ndarray[Any, np.dtype[np.int64]], int]:
    """Masks shaped to make each encoding method win: sparse, dense, strided, runs."""
    n = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["sparse", "dense", "strided", "runs", "empty", "full"]))
    if kind in ("sparse", "dense"):
        chosen = draw(st.sets(st.integers(0, n - 1), max_size=min(n, 200)))
        if draw(st.booleans()):  # hypothesis favours small integers: reach the end too
            chosen = {n - 1 - x for x in chosen}
        keep = np.zeros(n, dtype=bool)
        keep[list(chosen)] = True
        if kind == "dense":
            keep = ~keep
        positions = np.flatnonzero(keep)
    elif kind == "strided":
        positions = np.arange(draw(st.integers(0, n - 1)), n, draw(st.integers(1, 64)))
    elif kind == "runs":
        bounds = sorted(draw(st.sets(st.integers(0, n), max_size=12)))
        keep = np.zeros(n, dtype=bool)
        for begin, end in zip(bounds[::2], bounds[1::2], strict=False):
            keep[begin:end] = True
        positions = np.flatnonzero(keep)
    elif kind == "empty":
        positions = np.zeros(0, dtype=np.int64)
    else:
        positions = np.arange(n)
    return positions.astype(np.int64), n


# --------------------------------------------------------------------------- mutations


def mutate_bytes(data: st.DataObject, payload: bytes) -> bytes:
    """One generic corruption: truncate, flip, splice in, delete or overwrite bytes."""
    kind = data.draw(st.sampled_from(["flip", "splice", "delete", "overwrite", "truncate"]))
    size = len(payload)
    if kind == "truncate" or size == 0:
        return payload[: data.draw(st.integers(min(1, size - 1), max(0, size - 1)))]
    if kind == "flip":
        out = bytearray(payload)
        for at in data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=4)):
            out[at] ^= data.draw(st.integers(1, 255))
        return bytes(out)
    at = data.draw(st.integers(0, size))
    if kind == "splice":
        return payload[:at] + data.draw(st.binary(min_size=1, max_size=24)) + payload[at:]
    length = data.draw(st.integers(1, 24))
    if kind == "delete":
        return payload[:at] + payload[at + length :]
    return payload[:at] + data.draw(st.binary(min_size=length, max_size=length)) + payload[at:]


def split_safetensors(payload: bytes) -> tuple[list[tuple[str, Any]], bytes]:
    (header_len,) = struct.unpack("<Q", payload[:8])
    header: dict[str, Any] = json.loads(payload[8 : 8 + header_len])
    return list(header.items()), payload[8 + header_len :]


def join_safetensors(pairs: list[tuple[str, Any]], data: bytes) -> bytes:
    """Header text written pair by pair, so that it can hold duplicate keys."""
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


# Mutation kinds are pytest parameters, not drawn: hypothesis draws the first item of a
# sampled_from far more often than the rest, which starved the others.
SAFETENSORS_MUTATIONS = ["bytes", "header_len", "duplicate", "inflate", "unsqueeze"]


def mutate_safetensors(data: st.DataObject, payload: bytes, kind: str) -> bytes:
    """Generic corruption, or a lie in the framing: header length, duplicate key, sizes,
    or a shape of the same size with extra unit dimensions (torch handles at most 64)."""
    pairs, buffer = split_safetensors(payload)
    entries = [i for i, (k, _) in enumerate(pairs) if k != "__metadata__"]
    if kind == "header_len":
        (header_len,) = struct.unpack("<Q", payload[:8])
        new_len = data.draw(
            st.integers(0, 2**64 - 1) | st.integers(max(0, header_len - 16), header_len + 16)
        )
        return struct.pack("<Q", new_len) + payload[8:]
    if kind == "duplicate" and pairs:
        pairs.insert(data.draw(st.integers(0, len(pairs))), data.draw(st.sampled_from(pairs)))
        return join_safetensors(pairs, buffer)
    if kind == "inflate" and entries:
        i = data.draw(st.sampled_from(entries))
        entry = dict(pairs[i][1])
        grow = data.draw(st.integers(1, 16) | st.sampled_from([2**31, 2**63, 2**64, 2**80]))
        if entry["shape"] and data.draw(st.booleans()):
            shape = list(entry["shape"])
            shape[data.draw(st.integers(0, len(shape) - 1))] += grow
            entry["shape"] = shape
        else:
            entry["data_offsets"] = [entry["data_offsets"][0], entry["data_offsets"][1] + grow]
        pairs[i] = (pairs[i][0], entry)
        return join_safetensors(pairs, buffer)
    if kind == "unsqueeze" and entries:
        # Prefer non-empty float tensors: the ones whose values torch goes on to check.
        floats = [
            i
            for i in entries
            if pairs[i][1]["dtype"] in ("F64", "F32", "F16", "BF16") and all(pairs[i][1]["shape"])
        ]
        i = data.draw(st.sampled_from(floats or entries))
        entry = dict(pairs[i][1])
        extra = data.draw(st.integers(60, 70) | st.integers(1, 3))
        entry["shape"] = list(entry["shape"]) + [1] * extra
        pairs[i] = (pairs[i][0], entry)
        return join_safetensors(pairs, buffer)
    return mutate_bytes(data, payload)


def fcs_span(frame: bytes, at: int) -> tuple[int, int]:
    """(offset, width) of the Frame_Content_Size field of the zstd frame at ``at``."""
    descriptor = frame[at + 4]
    single_segment = descriptor >> 5 & 1
    start = at + 5 + (1 - single_segment) + (0, 1, 2, 4)[descriptor & 3]
    return start, (single_segment, 2, 4, 8)[descriptor >> 6]


def redeclare(data: st.DataObject, payload: bytes) -> bytes:
    """Make the (first) zstd frame in ``payload`` declare another, often huge, content size."""
    at = payload.find(ZSTD_MAGIC)
    if at < 0:
        return mutate_bytes(data, payload)
    start, width = fcs_span(payload, at)
    size = data.draw(
        st.integers(0, 2**64 - 1)
        | st.sampled_from([0, GIB, 2**40, 2**63, 2**64 - 2, 2**64 - 1])
        | st.integers(0, 4096)
    )
    descriptor = (payload[at + 4] & 0x3F) | 0xC0  # an 8-byte content size field
    return (
        payload[: at + 4]
        + bytes([descriptor])
        + payload[at + 5 : start]
        + size.to_bytes(8, "little")
        + payload[start + width :]
    )


def rle_frame(total: int, declared: int | None) -> bytes:
    """A hand-built zstd frame of ``total`` zero bytes as RLE blocks (4 bytes per 128 KiB),
    declaring ``declared`` as its content size (None: no size field): a cheap, honest bomb."""
    block = 128 * 2**10
    descriptor = 0x00 if declared is None else 0xC0  # 8-byte size field, window descriptor
    frame = ZSTD_MAGIC + bytes([descriptor, 0x38])  # window 2**17 bytes
    if declared is not None:
        frame += declared.to_bytes(8, "little")
    blocks = []
    left = total
    while True:
        size = min(left, block)
        left -= size
        last = int(left == 0)
        blocks.append(((size << 3) | (1 << 1) | last).to_bytes(3, "little") + b"\x00")
        if last:
            return frame + b"".join(blocks)


def zstd_frame(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=True).compress(raw)


def traced_peak(run: Callable[[], object]) -> int:
    """Peak Python-heap bytes allocated while ``run`` executes (bytes objects included)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
