"""The character vocabulary: a fixed alphabet, so token ids never depend on the data.

Index 0 pads a word to `MAX_LEN`, index 1 stands for any character outside the alphabet, and
the letters follow from index 2: a-z, then the accented letters of English, German, French,
Italian and Spanish. Appending letters later keeps every existing id; removing or reordering
them changes the model's meaning (bump the workload version).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

PAD = 0
UNK = 1
MAX_LEN = 16  # characters per word; longer words are dropped when the data set is built

# a-z, then German (äöüß), French (àâçéèêëîïôûùÿœæ), Spanish (áíóúñ), Italian (ìò) and å,
# which English loan words carry (Ångström). Exactly one id per character.
LETTERS = "abcdefghijklmnopqrstuvwxyz" + "äöüß" + "àâçéèêëîïôûùÿœæ" + "áíóúñ" + "ìòå"
VOCAB_SIZE = 2 + len(LETTERS)

_INDEX = {ch: i + 2 for i, ch in enumerate(LETTERS)}
assert len(_INDEX) == len(LETTERS), "duplicate letter in LETTERS"


_WORD = re.compile(f"[{LETTERS}]*")


def in_alphabet(word: str) -> bool:
    """True if every character of `word` has its own id (no UNK needed)."""
    return _WORD.fullmatch(word) is not None


def encode(word: str) -> list[int]:
    """`MAX_LEN` token ids: one per character (UNK outside the alphabet), then PAD. The word
    is taken as given (lowercase NFC, as the data set stores it). ValueError if it is empty
    or longer than `MAX_LEN`."""
    if not word:
        raise ValueError("cannot encode an empty word")
    if len(word) > MAX_LEN:
        raise ValueError(f"word {word!r} has {len(word)} characters, at most {MAX_LEN} fit")
    ids = [_INDEX.get(ch, UNK) for ch in word]
    return ids + [PAD] * (MAX_LEN - len(ids))


def encode_batch(words: Sequence[str]) -> torch.Tensor:
    """(N, MAX_LEN) int64 token ids of `words`."""
    if not words:
        return torch.zeros((0, MAX_LEN), dtype=torch.int64)
    return torch.tensor([encode(w) for w in words], dtype=torch.int64)


def decode(ids: Sequence[int] | torch.Tensor) -> str:
    """The word behind one row of token ids (PAD dropped, UNK shown as '?')."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    out = []
    for i in values:
        if i == PAD:
            continue
        out.append("?" if i == UNK or not 2 <= i < VOCAB_SIZE else LETTERS[i - 2])
    return "".join(out)
