"""The word-language workload: which of five languages a single word comes from.

Each participant's data folder holds `train.csv` and `test.csv` (see `data.py`), as
`fused-wordlang-prepare` writes them. Inputs are (N, 16) int64 character ids, labels 0..4 in
the order of `LANGUAGE_NAMES`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fused.common.ml.data.tensors import TensorData
from fused.common.ml.workloads import LocalData, Workload, WorkloadInfo
from fused_wordlang.data import LANGUAGE_NAMES, NUM_CLASSES, read_csv, to_split
from fused_wordlang.model import WordClassifier, WordConfig, is_adaptable

VERSION = "1"  # bump when the alphabet, the model or the data's meaning changes


class WordLanguage(Workload):
    """A 2-block character transformer (~42k parameters) on words of five languages."""

    info = WorkloadInfo(
        "wordlang",
        VERSION,
        NUM_CLASSES,
        f"word-language identification ({', '.join(LANGUAGE_NAMES)}) with a small "
        "character transformer, on Debian's word lists",
    )

    def __init__(self, config: WordConfig | None = None) -> None:
        self.config = WordConfig(num_classes=NUM_CLASSES) if config is None else config

    def make_model(self) -> nn.Module:
        return WordClassifier(self.config)

    def load_data(self, data_dir: Path) -> LocalData:
        if not data_dir.is_dir():
            raise ValueError(f"data folder {data_dir} is missing")
        splits = [read_csv(data_dir / f"{name}.csv") for name in ("train", "test")]
        overlap = {s.id for s in splits[0]} & {s.id for s in splits[1]}
        if overlap:
            raise ValueError(
                f"{data_dir}: ids {sorted(overlap)[:5]} are in both train.csv and test.csv"
            )
        train, test = (to_split(samples) for samples in splits)
        return LocalData(
            train=TensorData.labelled(train.x, train.y, train.ids),
            test=TensorData.labelled(test.x, test.y, test.ids),
            num_classes=NUM_CLASSES,
            source="wordlang",
        )

    def adaptable(self, name: str) -> bool:
        """Adapters go on 2-D weight matrices only (token and position embeddings, q/k/v/out,
        MLP and head weights); LayerNorm parameters and biases stay fixed (see
        `model.is_adaptable`)."""
        return is_adaptable(name)
