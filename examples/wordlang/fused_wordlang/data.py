"""The languages and the on-disk format: one CSV per split, columns id,word,label.

`id` is a non-negative integer unique across the whole data set (stable across runs, so a
sample can be named for unlearning), `word` a lowercase word of at most `MAX_LEN`
characters, `label` the language's index in `LANGUAGES`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fused_wordlang.vocab import encode, encode_batch


@dataclass(frozen=True)
class Language:
    name: str
    file: str  # the word list's file name under the dictionary folder
    package: str  # the Debian package that installs it


LANGUAGES: tuple[Language, ...] = (
    Language("english", "american-english", "wamerican"),
    Language("german", "ngerman", "wngerman"),
    Language("french", "french", "wfrench"),
    Language("italian", "italian", "witalian"),
    Language("spanish", "spanish", "wspanish"),
)
LANGUAGE_NAMES: tuple[str, ...] = tuple(lang.name for lang in LANGUAGES)
NUM_CLASSES = len(LANGUAGES)

CSV_HEADER = ("id", "word", "label")
_INT = re.compile(r"[0-9]+")  # plain digits: no sign, spaces or underscores


@dataclass(frozen=True)
class Sample:
    id: int
    word: str
    label: int


@dataclass(frozen=True)
class Split:
    """One CSV's samples as tensors."""

    x: torch.Tensor  # (N, MAX_LEN) int64 token ids
    y: torch.Tensor  # (N,) int64 labels
    ids: torch.Tensor  # (N,) int64 sample ids


def write_csv(path: Path, samples: Sequence[Sample]) -> None:
    """Write `samples` to `path` (replacing it whole, so a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows((s.id, s.word, s.label) for s in samples)
    tmp.replace(path)


def read_csv(path: Path) -> list[Sample]:
    """The samples of one CSV. ValueError naming the file (and line) on anything malformed:
    a missing file, a wrong header, a row without exactly three fields, an id or label that is
    not a plain integer, a label outside the languages, an empty or too long word, a repeated
    id."""
    if not path.is_file():
        raise ValueError(
            f"{path} is missing (fused-wordlang-prepare writes train.csv and test.csv)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    rows = csv.reader(text.splitlines(), strict=True)
    try:
        header = next(rows, None)
        if header is None or tuple(header) != CSV_HEADER:
            raise ValueError(f"{path}:1: header must be {','.join(CSV_HEADER)}, got {header!r}")
        samples: list[Sample] = []
        seen: set[int] = set()
        for row in rows:
            where = f"{path}:{rows.line_num}"
            sample = _sample(row, where)
            if sample.id in seen:
                raise ValueError(f"{where}: id {sample.id} repeats")
            seen.add(sample.id)
            samples.append(sample)
    except csv.Error as exc:
        raise ValueError(f"{path}:{rows.line_num}: {exc}") from exc
    return samples


def _sample(row: list[str], where: str) -> Sample:
    if len(row) != len(CSV_HEADER):
        raise ValueError(f"{where}: expected {len(CSV_HEADER)} fields id,word,label, got {row!r}")
    id_text, word, label_text = row
    if not _INT.fullmatch(id_text):
        raise ValueError(f"{where}: id {id_text!r} is not a non-negative integer")
    if not _INT.fullmatch(label_text) or int(label_text) >= NUM_CLASSES:
        raise ValueError(f"{where}: label {label_text!r} is not in 0..{NUM_CLASSES - 1}")
    sample_id = int(id_text)
    if sample_id >= 1 << 63:
        raise ValueError(f"{where}: id {id_text} does not fit in int64")
    try:
        encode(word)  # empty or longer than MAX_LEN
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return Sample(sample_id, word, int(label_text))


def to_split(samples: Sequence[Sample]) -> Split:
    return Split(
        x=encode_batch([s.word for s in samples]),
        y=torch.tensor([s.label for s in samples], dtype=torch.int64),
        ids=torch.tensor([s.id for s in samples], dtype=torch.int64),
    )
