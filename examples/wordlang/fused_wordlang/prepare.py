"""`fused-wordlang-prepare`: build the word-language data set from Debian's word lists and
split it among participants.

The data set: words of five languages (the `LANGUAGES` table, label = position), lowercased
(NFC), keeping only words of 2..16 letters of the vocabulary's alphabet (so no apostrophes,
hyphens, spaces or digits). Duplicates within a language collapse to one word; a word found
in several languages is dropped from all of them, since its label would be ambiguous. Each
language contributes the same number of words (a seeded subset), split train/test per
language. Words are ranked by a hash of the seed and the word (not by file order or
Python's per-process string hash), and the participants' split comes from a seeded numpy
generator, so two runs with the same settings write the same bytes.

The train split is divided among participants with a per-language Dirichlet(alpha) label
skew; each participant's test split follows the same proportions over the test words, so a
participant is tested on its own label mix, and `global-test/` holds the whole test split.

Output, under --out:
    p0/train.csv, p0/test.csv, ... p{N-1}/...   columns id,word,label
    global-test/test.csv                        the full test split
    dataset.json                                settings and counts
`id` is the word's row in the whole data set sorted by word: unique, and stable across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from fused_wordlang.data import LANGUAGE_NAMES, LANGUAGES, Sample, write_csv
from fused_wordlang.vocab import LETTERS, MAX_LEN, in_alphabet

MIN_LEN = 2  # single letters are shared by every alphabet and say nothing about a language
MAX_PARTITION_TRIES = 1000
# a whole line (surrounding blanks allowed) that is one word of the alphabet, 2..16 letters
_LINE_WORD = re.compile(rf"^[ \t]*([{LETTERS}]{{{MIN_LEN},{MAX_LEN}}})[ \t]*$", re.MULTILINE)


class MissingDictionary(FileNotFoundError):
    def __init__(self, path: Path, package: str) -> None:
        super().__init__(
            f"word list {path} is missing: install the Debian package {package} "
            f"(apt-get install {package}) or point --dict-dir at a folder holding it"
        )
        self.path = path
        self.package = package


@dataclass(frozen=True)
class LanguageStats:
    name: str
    encoding: str  # how the list was decoded: utf-8, or latin-1 when it is not valid UTF-8
    lines: int  # non-empty lines in the list
    kept: int  # distinct words passing the filters
    unambiguous: int  # of those, words found in no other language
    selected: int  # sampled into the data set
    train: int
    test: int


@dataclass(frozen=True)
class Dataset:
    train: tuple[Sample, ...]  # sorted by id
    test: tuple[Sample, ...]  # sorted by id
    stats: tuple[LanguageStats, ...]


def read_word_list(path: Path) -> tuple[str, str]:
    """A word list's text and the encoding it was read in. Debian's lists are UTF-8; a file
    that is not valid UTF-8 is read as latin-1 (older lists were), explicitly."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def normalise(word: str) -> str | None:
    """The word as the data set stores it (lowercase NFC), or None if it is filtered out."""
    word = unicodedata.normalize("NFC", word.strip()).lower()
    if not MIN_LEN <= len(word) <= MAX_LEN or not in_alphabet(word):
        return None
    return word


def words_of(text: str) -> tuple[set[str], int]:
    """The distinct words of a word list's text that pass `normalise`, and its count of
    non-empty lines. The same as `normalise` line by line, done on the whole text at once."""
    rows = text.splitlines()  # any line ending (\n, \r\n, \r)
    lines = sum(1 for row in rows if row.strip())
    text = unicodedata.normalize("NFC", "\n".join(rows)).lower()
    return set(_LINE_WORD.findall(text)), lines


def _ranker(seed: int, purpose: str) -> Callable[[str], bytes]:
    """A sort key: sha256 of seed, purpose and word, so a word's rank needs no other word."""
    prefix = hashlib.sha256(f"{seed}:{purpose}:".encode())

    def rank(word: str) -> bytes:
        h = prefix.copy()
        h.update(word.encode())
        return h.digest()

    return rank


def build_dataset(dict_dir: Path, per_language: int, test_fraction: float, seed: int) -> Dataset:
    """The balanced data set from the word lists in `dict_dir` (see the module docstring)."""
    if per_language < 2:
        raise ValueError(f"per_language must be at least 2, got {per_language}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    vocab: list[set[str]] = []
    meta: list[tuple[str, int]] = []
    for lang in LANGUAGES:
        path = dict_dir / lang.file
        if not path.is_file():
            raise MissingDictionary(path, lang.package)
        text, encoding = read_word_list(path)
        words, lines = words_of(text)
        vocab.append(words)
        meta.append((encoding, lines))
    seen_in = Counter(chain.from_iterable(vocab))  # word -> number of languages holding it
    chosen: list[tuple[str, int, bool]] = []  # (word, label, is_test)
    counts: list[tuple[int, int, int]] = []  # (unambiguous, train, test) per language
    for label, words in enumerate(vocab):
        unique = [w for w in words if seen_in[w] == 1]
        if len(unique) < per_language:
            raise ValueError(
                f"{LANGUAGES[label].name}: only {len(unique)} usable words, "
                f"{per_language} asked for"
            )
        name = LANGUAGES[label].name
        picked = heapq.nsmallest(per_language, unique, key=_ranker(seed, f"pick:{name}"))
        n_test = max(1, min(per_language - 1, round(per_language * test_fraction)))
        by_split = sorted(picked, key=_ranker(seed, "split"))
        test_words = set(by_split[:n_test])
        chosen += [(w, label, w in test_words) for w in picked]
        counts.append((len(unique), per_language - n_test, n_test))
    chosen.sort()  # by word: words are unique across languages, so this order is total
    samples = [(Sample(i, w, label), is_test) for i, (w, label, is_test) in enumerate(chosen)]
    stats = tuple(
        LanguageStats(lang.name, enc, lines, len(words), unamb, per_language, n_train, n_test)
        for lang, (enc, lines), words, (unamb, n_train, n_test) in zip(
            LANGUAGES, meta, vocab, counts, strict=True
        )
    )
    return Dataset(
        train=tuple(s for s, is_test in samples if not is_test),
        test=tuple(s for s, is_test in samples if is_test),
        stats=stats,
    )


def dirichlet_split(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    num_parts: int,
    alpha: float,
    seed: int,
    min_train: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sorted index arrays into the train and test samples, one per part. Each label's train
    and test samples are cut by the same Dirichlet(alpha) proportions; the draw repeats until
    every part holds at least `min_train` train samples."""
    if num_parts < 1 or not alpha > 0:
        raise ValueError(f"need at least 1 participant and alpha > 0, got {num_parts}, {alpha}")
    if train_labels.shape[0] < num_parts * min_train:
        raise ValueError(
            f"{train_labels.shape[0]} train samples cannot give {num_parts} participants "
            f"{min_train} each"
        )
    rng = np.random.default_rng(seed)
    labels = np.unique(np.concatenate([train_labels, test_labels]))
    for _ in range(MAX_PARTITION_TRIES):
        train: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
        test: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
        for c in labels:
            props = rng.dirichlet(np.full(num_parts, alpha))
            for source, parts in ((train_labels, train), (test_labels, test)):
                members = rng.permutation(np.flatnonzero(source == c))
                cuts = np.round(np.cumsum(props)[:-1] * members.size).astype(np.int64)
                for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                    part.append(chunk)
        train_idx = [np.sort(np.concatenate(p)) for p in train]
        if min(p.size for p in train_idx) >= min_train:
            return train_idx, [np.sort(np.concatenate(p)) for p in test]
    raise ValueError(
        f"no Dirichlet({alpha}) split into {num_parts} gave every participant "
        f"{min_train} train samples in {MAX_PARTITION_TRIES} tries; raise alpha"
    )


_PARTICIPANT = re.compile(r"p[0-9]+")


def participant_id(index: int) -> str:
    return f"p{index}"


def prepare(
    out: Path,
    dict_dir: Path = Path("/usr/share/dict"),
    participants: int = 4,
    alpha: float = 1.0,
    seed: int = 0,
    per_language: int = 4000,
    test_fraction: float = 0.2,
    min_train: int = 20,
) -> dict[str, object]:
    """Build the data set, write every participant's folder and global-test/ under `out`,
    and return (and write as dataset.json) the settings and counts."""
    stale = sorted(
        p.name
        for p in (out.iterdir() if out.is_dir() else ())
        if _PARTICIPANT.fullmatch(p.name) and int(p.name[1:]) >= participants
    )
    if stale:  # an earlier run's participants would look like part of this split
        raise ValueError(f"{out} holds folders of more participants ({', '.join(stale)})")
    data = build_dataset(dict_dir, per_language, test_fraction, seed)
    train_labels = np.array([s.label for s in data.train], dtype=np.int64)
    test_labels = np.array([s.label for s in data.test], dtype=np.int64)
    train_parts, test_parts = dirichlet_split(
        train_labels, test_labels, participants, alpha, seed, min_train
    )
    parts: dict[str, dict[str, list[int]]] = {}
    for i, (tr, te) in enumerate(zip(train_parts, test_parts, strict=True)):
        pid = participant_id(i)
        train = [data.train[j] for j in tr.tolist()]
        test = [data.test[j] for j in te.tolist()]
        write_csv(out / pid / "train.csv", train)
        write_csv(out / pid / "test.csv", test)
        parts[pid] = {
            "train_per_label": np.bincount(train_labels[tr], minlength=len(LANGUAGES)).tolist(),
            "test_per_label": np.bincount(test_labels[te], minlength=len(LANGUAGES)).tolist(),
        }
    write_csv(out / "global-test" / "test.csv", data.test)
    summary: dict[str, object] = {
        "labels": list(LANGUAGE_NAMES),
        "settings": {
            "dict_dir": str(dict_dir),
            "participants": participants,
            "alpha": alpha,
            "seed": seed,
            "per_language": per_language,
            "test_fraction": test_fraction,
            "min_train": min_train,
        },
        "languages": [vars(s) for s in data.stats],
        "participants": parts,
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fused-wordlang-prepare",
        description="Build the word-language data set from Debian word lists and split it "
        "among participants (one folder each, plus global-test/).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--dict-dir", type=Path, default=Path("/usr/share/dict"), help="word list folder"
    )
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label skew")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-language", type=int, default=4000, help="words per language")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--min-train", type=int, default=20, help="train words per participant")
    args = parser.parse_args(argv)
    try:
        summary = prepare(
            args.out,
            args.dict_dir,
            args.participants,
            args.alpha,
            args.seed,
            args.per_language,
            args.test_fraction,
            args.min_train,
        )
    except (OSError, ValueError) as exc:
        print(f"fused-wordlang-prepare: {exc}", file=sys.stderr)
        return 2
    parts = summary["participants"]
    assert isinstance(parts, dict)
    for pid, counts in parts.items():
        print(
            f"{args.out / pid}: train {counts['train_per_label']} test {counts['test_per_label']}"
        )
    print(f"{args.out / 'global-test'}: labels {', '.join(LANGUAGE_NAMES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
