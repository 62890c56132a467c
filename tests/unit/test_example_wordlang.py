"""The example user package examples/wordlang (word-language identification): its data
preparation from Debian's word lists, strict CSV loading, a deterministic model, the tensor
schema and a training step, through the same Workload interface a participant uses.

The package is imported from its source folder when it is not installed (it is its own
distribution; nothing in fused imports it), so its modules are looked up at run time."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from fused.common.domain.train_config import TrainConfig
from fused.common.ml.adapters import attach_adapter, layout_for, remove_adapter
from fused.common.ml.workloads import Workload, clear_cache, resolve_workload
from fused.participant.training import evaluate, train_local

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wordlang"
DICT_DIR = Path("/usr/share/dict")
WORD_LISTS = {
    "american-english": "wamerican",
    "ngerman": "wngerman",
    "french": "wfrench",
    "italian": "witalian",
    "spanish": "wspanish",
}
PER_LANGUAGE = 400  # small: the test is about the pipeline, not the accuracy

_missing = [
    f"{name} ({pkg})" for name, pkg in WORD_LISTS.items() if not (DICT_DIR / name).is_file()
]
needs_word_lists = pytest.mark.skipif(
    bool(_missing),
    reason=f"Debian word lists missing in {DICT_DIR}: {', '.join(_missing)}",
)


def _module(name: str) -> ModuleType:
    if importlib.util.find_spec("fused_wordlang") is None:
        sys.path.insert(0, str(EXAMPLE))
    return importlib.import_module(f"fused_wordlang.{name}")


def _workload() -> Workload:
    workload: Workload = _module("workload").WordLanguage()
    return workload


def _prepare(out: Path, **kwargs: Any) -> dict[str, Any]:
    summary: dict[str, Any] = _module("prepare").prepare(
        out, DICT_DIR, per_language=PER_LANGUAGE, **kwargs
    )
    return summary


def _rows(path: Path) -> list[tuple[int, str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id,word,label"
    return [(int(i), w, int(c)) for i, w, c in (line.split(",") for line in lines[1:])]


def _state_bytes(model: torch.nn.Module) -> bytes:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + tensor.numpy().tobytes())
    return h.digest()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _missing:
        pytest.skip(f"Debian word lists missing in {DICT_DIR}: {', '.join(_missing)}")
    out = tmp_path_factory.mktemp("wordlang") / "data"
    _prepare(out)
    return out


@needs_word_lists
def test_prepare_is_balanced_with_unique_stable_ids(
    prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    again = tmp_path_factory.mktemp("wordlang-again") / "data"
    _prepare(again)
    files = sorted(p.relative_to(prepared) for p in prepared.rglob("*") if p.is_file())
    assert [str(f) for f in files] == [
        "dataset.json",
        "global-test/test.csv",
        *(f"p{i}/{split}.csv" for i in range(4) for split in ("test", "train")),
    ]
    for f in files:  # the same settings write the same bytes
        assert (prepared / f).read_bytes() == (again / f).read_bytes(), f

    train = [r for i in range(4) for r in _rows(prepared / f"p{i}" / "train.csv")]
    test = [r for i in range(4) for r in _rows(prepared / f"p{i}" / "test.csv")]
    everything = train + test
    ids = [r[0] for r in everything]
    assert len(set(ids)) == len(ids) == 5 * PER_LANGUAGE  # unique across the whole data set
    assert sorted(ids) == list(range(5 * PER_LANGUAGE))
    assert sorted(test) == _rows(prepared / "global-test" / "test.csv")
    words = [r[1] for r in everything]
    assert len(set(words)) == len(words)  # no word in two languages (or twice in one)
    assert all(w == w.lower() and 2 <= len(w) <= 16 for w in words)
    for label in range(5):  # balanced, 80/20 within each language
        assert sum(r[2] == label for r in train) == PER_LANGUAGE * 4 // 5
        assert sum(r[2] == label for r in test) == PER_LANGUAGE // 5
    summary = json.loads((prepared / "dataset.json").read_text(encoding="utf-8"))
    assert summary["labels"] == ["english", "german", "french", "italian", "spanish"]
    assert all(lang["encoding"] == "utf-8" for lang in summary["languages"])


@needs_word_lists
def test_load_data_round_trips(prepared: Path) -> None:
    vocab = _module("vocab")
    data = _workload().load_data(prepared / "p1")
    for split, name in ((data.train, "train"), (data.test, "test")):
        rows = _rows(prepared / "p1" / f"{name}.csv")
        assert split.x.dtype == torch.int64 and split.x.shape == (len(rows), 16)
        assert split.ids.tolist() == [r[0] for r in rows]
        assert [vocab.decode(x) for x in split.x] == [r[1] for r in rows]
        assert split.y.tolist() == [r[2] for r in rows]
        assert torch.equal(split.y_true, split.y)
        assert torch.equal(split.features(), split.x)  # token ids reach the model as stored
    assert data.num_classes == 5


def test_vocab_encodes_words_and_refuses_what_does_not_fit() -> None:
    vocab = _module("vocab")
    ids = vocab.encode("straße")
    assert len(ids) == 16 and ids[6:] == [vocab.PAD] * 10
    assert vocab.decode(ids) == "straße"
    assert vocab.encode("a1")[1] == vocab.UNK
    for bad in ("", "x" * 17):
        with pytest.raises(ValueError):
            vocab.encode(bad)


def test_build_model_is_deterministic_and_classifies_a_batch() -> None:
    workload = _workload()
    first, second, other = (workload.build_model(seed) for seed in (0, 0, 1))
    assert _state_bytes(first) == _state_bytes(second)
    assert _state_bytes(first) != _state_bytes(other)
    params = sum(p.numel() for p in first.parameters())
    assert 20_000 <= params <= 60_000
    vocab = _module("vocab")
    x = vocab.encode_batch(["hello", "bonjour", "ciao", "hola", "guten", "straße", "ça"])
    first.train()
    logits = first(x)
    assert logits.shape == (7, 5) and torch.isfinite(logits).all()
    first.eval()  # no dropout or fast path: training and evaluation compute the same thing
    with torch.no_grad():
        assert torch.equal(first(x), logits.detach())
        # padding does not leak into a word's logits: batch composition changes nothing
        assert torch.allclose(first(x[:1]), logits[:1].detach(), atol=1e-6)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("id,word,label\n0,abc,0\n1,def,9\n", "train.csv:3: label '9'"),
        ("id,word,label\n0,abc,0\nx,def,1\n", "train.csv:3: id 'x'"),
        ("id,word,label\n0,abc,0\n-1,def,1\n", "train.csv:3: id '-1'"),
        ("id,word,label\n0,abc,0\n1,def\n", "train.csv:3: expected 3 fields"),
        ("id,word,label\n0,abc,0\n1,,1\n", "train.csv:3: cannot encode an empty word"),
        ("id,word,label\n0,abc,0\n1,abcdefghijklmnopq,1\n", "train.csv:3: word"),
        ("id,word,label\n0,abc,0\n0,def,1\n", "train.csv:3: id 0 repeats"),
        ("id,text,label\n0,abc,0\n", "train.csv:1: header"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "train.csv").write_text(content, encoding="utf-8")
    (tmp_path / "test.csv").write_text("id,word,label\n5,xyz,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        _workload().load_data(tmp_path)
    assert str(tmp_path / "train.csv") in str(info.value)


def test_missing_files_and_overlapping_ids_are_refused(tmp_path: Path) -> None:
    workload = _workload()
    with pytest.raises(ValueError, match="is missing"):
        workload.load_data(tmp_path / "absent")
    (tmp_path / "train.csv").write_text("id,word,label\n0,abc,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.csv is missing"):
        workload.load_data(tmp_path)
    (tmp_path / "test.csv").write_text("id,word,label\n0,def,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"in both train\.csv and test\.csv"):
        workload.load_data(tmp_path)


def test_tensor_schema_adapts_weight_matrices_only() -> None:
    workload = _workload()
    schema = workload.tensor_schema()
    shapes = {e.name: e.shape for e in schema}
    assert shapes["tok_emb.weight"][0] == _module("vocab").VOCAB_SIZE
    assert shapes["head.weight"] == (5, 48)
    assert all(e.parameter and e.dtype == "float32" for e in schema)
    assert {e.name for e in schema if e.adaptable} == {e.name for e in schema if len(e.shape) == 2}
    assert not workload.adaptable("blocks.0.ln_1.weight")
    assert not workload.adaptable("blocks.0.attn.q.bias")
    assert workload.adaptable("blocks.1.attn.q.weight")
    assert len(workload.schema_digest()) == 64
    assert workload.schema_digest() == _workload().schema_digest()
    # the registry takes the class by module:attribute, as it would the entry point
    clear_cache()
    resolved = resolve_workload("fused_wordlang.workload:WordLanguage")
    assert resolved.info.name == "wordlang" and resolved.num_classes == 5
    assert resolved.schema_digest() == workload.schema_digest()


@needs_word_lists
def test_a_short_training_run_lowers_the_loss(prepared: Path) -> None:
    workload = _workload()
    data = workload.load_data(prepared / "p0").train.subset(slice(0, 256))
    model = workload.build_model(0)
    before = evaluate(model, data, 5, objective=workload)
    stats = train_local(
        model, data, TrainConfig(local_epochs=2, lr=0.05, batch_size=32), objective=workload
    )
    after = evaluate(model, data, 5, objective=workload)
    assert stats.steps == 16
    assert after.loss_sum < before.loss_sum


def test_missing_word_list_exits_2_naming_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in WORD_LISTS:
        if name != "ngerman":
            (tmp_path / name).write_text("Haus\nhouse\n", encoding="utf-8")
    main = _module("prepare").main
    assert main(["--out", str(tmp_path / "out"), "--dict-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ngerman" in err and "wngerman" in err


def test_word_list_lines_in_any_ending_and_encoding(tmp_path: Path) -> None:
    prepare = _module("prepare")
    path = tmp_path / "list"
    path.write_bytes("Straße\r\nçà\r\nl'été\r\nx\r\n\r\nab1\n".encode("latin-1"))
    text, encoding = prepare.read_word_list(path)
    assert encoding == "latin-1"
    assert prepare.words_of(text) == ({"straße", "çà"}, 5)


def test_prepare_refuses_an_output_of_more_participants(tmp_path: Path) -> None:
    (tmp_path / "p4").mkdir()
    with pytest.raises(ValueError, match=r"more participants \(p4\)"):
        _module("prepare").prepare(tmp_path, DICT_DIR, participants=4)


def test_a_sparse_adapter_on_the_adaptable_tensors_trains_and_comes_off() -> None:
    workload = _workload()
    model = workload.build_model(0)
    base = _state_bytes(model)
    names = [e.name for e in workload.tensor_schema() if e.adaptable]
    layout = layout_for(model, names, density=0.1, seed=0)
    values = attach_adapter(model, layout)
    x = _module("vocab").encode_batch(["wörter", "words", "mots", "parole", "palabras"])
    loss = workload.loss(model(x), torch.arange(5))
    torch.autograd.backward(loss)
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in values.values())
    remove_adapter(model)
    assert _state_bytes(model) == base
