"""The workload interface and registry: a user workload in ~30 lines, resolution by built-in
name, module:attribute and entry point, clear errors, the schema digest, and built-ins that
build exactly the models the old model registry built."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.partition import partition_to_directory
from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import load_shard
from fused.common.ml.models.lenet import LeNet5, LeNetConfig
from fused.common.ml.models.mlp import MLP, MLPConfig
from fused.common.ml.models.resnet import ResNet18, ResNetConfig
from fused.common.ml.workloads import (
    ImageClassification,
    Workload,
    WorkloadError,
    canonical_json,
    clear_cache,
    parse_schema,
    resolve_workload,
    schema_digest,
    schema_of_model,
    state_matches,
    workload_for,
)
from fused.common.ml.workloads.builtin import PAIRS
from fused.participant.training import train_local

# What a user writes: one module, a class workload on CSV rows "id,f1,f2,f3,f4,label".
USER_MODULE = '''\
"""A user's workload: a small classifier on CSV rows of 4 features and a label in 0..2."""
from pathlib import Path

import torch
from torch import nn

from fused.common.ml.data.tensors import TensorData
from fused.common.ml.workloads import LocalData, Workload, WorkloadInfo


def _read(path: Path) -> TensorData:
    rows = [line.split(",") for line in path.read_text().split()]
    x = torch.tensor([[float(v) for v in row[1:5]] for row in rows])
    y = torch.tensor([int(row[5]) for row in rows])
    ids = torch.tensor([int(row[0]) for row in rows])
    return TensorData(x=x, y=y, y_true=y, ids=ids, scale=1.0)


class CsvClassifier(Workload):
    info = WorkloadInfo("toy-csv", "0.1", num_classes=3)

    def make_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def load_data(self, data_dir: Path) -> LocalData:
        return LocalData(_read(data_dir / "train.csv"), _read(data_dir / "test.csv"), 3)


WORKLOAD = CsvClassifier()
'''


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The user module, a broken module and a dist-info declaring entry points, on sys.path."""
    (tmp_path / "toy_workload.py").write_text(USER_MODULE)
    (tmp_path / "broken_workload.py").write_text("raise RuntimeError('no GPU driver here')\n")
    info = tmp_path / "toy_workload-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-workload\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[fused.workloads]\ntoy = toy_workload:CsvClassifier\nbroken = broken_workload:X\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    clear_cache()
    yield tmp_path
    clear_cache()


def _write_csv(path: Path, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    path.write_text(
        "".join(
            f"{i},{','.join(f'{v:.4f}' for v in r)},{int(c)}\n"
            for i, (r, c) in enumerate(zip(x.tolist(), y, strict=True))
        )
    )


def test_the_user_workload_is_about_thirty_lines() -> None:
    code = [line for line in USER_MODULE.splitlines() if line.strip()]
    assert len(code) <= 30


def test_a_user_workload_trains_one_step(user_package: Path) -> None:
    workload = resolve_workload("toy_workload:WORKLOAD")
    _write_csv(user_package / "train.csv", 32, 0)
    _write_csv(user_package / "test.csv", 8, 1)
    data = workload.load_data(user_package)
    model = workload.build_model(seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = workload.loss(model(workload.transform(data.train.features())), data.train.y)
    torch.autograd.backward(loss)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    counts = workload.evaluate(model(data.test.features()), data.test.y)
    assert sum(counts.total) == 8 and len(counts.correct) == 3
    # and the participant's trainer takes its data as it is
    cfg = TrainConfig(local_epochs=1, batch_size=8, lr=0.1, seed=0)
    assert train_local(model, data.train, cfg).num_examples == 32


@dataclass(frozen=True)
class Case:
    reference: str
    name: str | None  # the resolved workload's name; None: a WorkloadError
    error: str = ""  # a fragment of the error's message


CASES = [
    Case("mlp", "mlp"),
    Case("lenet", "lenet"),
    Case("resnet18", "resnet18"),
    Case("digits-mlp", "mlp"),
    Case("cifar10-resnet18", "resnet18"),
    Case("resnet", "resnet18"),
    Case("toy_workload:WORKLOAD", "toy-csv"),  # an instance
    Case("toy_workload:CsvClassifier", "toy-csv"),  # a class, built without arguments
    Case("toy", "toy-csv"),  # entry point
    Case("vgg", None, "unknown; built-in: lenet, mlp, resnet18; installed (fused.workloads): "),
    Case("broken", None, "entry point 'broken_workload:X' failed: RuntimeError('no GPU driver"),
    Case("broken_workload:X", None, "cannot import: RuntimeError('no GPU driver here')"),
    Case("toy_workload:Missing", None, "cannot import: AttributeError("),
    Case("no_such_module:W", None, "cannot import: ModuleNotFoundError("),
    Case("toy_workload:_read", None, "is a function, not a Workload"),
    Case("toy_workload:", None, "expected module:attribute"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.reference for c in CASES])
def test_registry_resolves_or_says_why(case: Case, user_package: Path) -> None:
    if case.name is not None:
        assert resolve_workload(case.reference).name == case.name
        return
    with pytest.raises(WorkloadError) as caught:
        resolve_workload(case.reference)
    assert caught.value.reference == case.reference
    assert str(caught.value).startswith(f"workload {case.reference!r}: ")
    assert case.error in str(caught.value)


def test_a_fixed_head_workload_refuses_another_class_count(user_package: Path) -> None:
    assert workload_for("toy", 3).num_classes == 3
    with pytest.raises(WorkloadError, match="has 3 classes, the task needs 10"):
        workload_for("toy", 10)


def _old_registry(name: str, num_classes: int, seed: int) -> torch.nn.Module:
    """What fused.common.ml.models.init_model did before workloads."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            return MLP(MLPConfig(num_classes=num_classes))
        if name == "lenet":
            return LeNet5(LeNetConfig(num_classes=num_classes))
        return ResNet18(ResNetConfig(num_classes=num_classes))


def _state_sha(model: torch.nn.Module) -> str:
    sha = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].contiguous()
        sha.update(key.encode())
        sha.update(str(t.dtype).encode())
        sha.update(str(tuple(t.shape)).encode())
        sha.update(t.numpy().tobytes())
    return sha.hexdigest()


# sha256 of the state dicts the old registry built (computed before the change)
GOLDEN = [
    ("mlp", 10, 0, "2532897c1b7bb8492c761b63fd4766e69abb1cf05c7e8040dfd86a127912ee88"),
    ("mlp", 4, 7, "49ba6388594492a79ffd2a2839da7ba972c20943ba91fdfa77b56cd4e8670647"),
    ("lenet", 10, 0, "a0f8360a15cf4e3f4db9a934dde80ca6cdf16ebe20e9f33dbea1ced80626c08e"),
    ("resnet18", 10, 0, "8c260cefe92f0be1b9e7cbdb46d9ec28303e4a62832872e8176c10c894142950"),
]


@pytest.mark.parametrize(("name", "classes", "seed", "sha"), GOLDEN)
def test_builtins_build_the_old_registrys_models(
    name: str, classes: int, seed: int, sha: str
) -> None:
    torch.manual_seed(99)
    rng = torch.get_rng_state()
    model = workload_for(name, classes).build_model(seed)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    assert _state_sha(model) == sha
    assert _state_sha(_old_registry(name, classes, seed)) == sha


def test_schema_digest_is_stable() -> None:
    mlp = workload_for("mlp", 10)
    assert mlp.schema_digest() == (
        "f08e133718ba8cd4e5a211ad009d0f9db21785ba273b8ea6ce9194b77792ff46"
    )
    assert schema_digest(schema_of_model(mlp.build_model(5))) == mlp.schema_digest()  # seed free
    assert workload_for("mlp", 4).schema_digest() != mlp.schema_digest()
    entry = mlp.tensor_schema()[0]
    assert (entry.name, entry.shape, entry.dtype) == ("net.0.bias", (128,), "float32")
    assert entry.parameter and entry.adaptable


def test_schema_marks_buffers_and_what_fused_may_adapt() -> None:
    class OnlyWeights(ImageClassification):
        def adaptable(self, name: str) -> bool:
            return name.endswith("weight")

    workload = OnlyWeights(PAIRS["resnet18"])
    entries = {e.name: e for e in workload.tensor_schema()}
    assert not entries["bn1.running_mean"].parameter
    assert not entries["bn1.running_mean"].adaptable
    assert entries["fc.weight"].adaptable and not entries["fc.bias"].adaptable
    assert workload.schema_digest() != workload_for("resnet18", 10).schema_digest()


def test_schema_round_trips_through_its_canonical_json() -> None:
    schema = workload_for("lenet", 10).tensor_schema()
    text = canonical_json(schema).encode("ascii")
    assert parse_schema(text) == schema
    state = workload_for("lenet", 10).build_model(0).state_dict()
    assert state_matches(schema, state) == ""
    state["fc1.weight"] = state["fc1.weight"][:, :3]
    assert "fc1.weight" in state_matches(schema, state)
    for bad in (b"[", b'[{"name": 1}]', text.replace(b",", b", ", 1), b"x" * (2 << 20)):
        with pytest.raises(ValueError):
            parse_schema(bad)


def test_builtin_load_data_reads_the_shard(tmp_path: Path) -> None:
    config = PartitionConfig(num_participants=2, alpha=1.0, seed=3)
    partition_to_directory("digits", None, tmp_path, config)
    local = resolve_workload("mlp").load_data(tmp_path / "p0")
    shard = load_shard(tmp_path / "p0")
    assert torch.equal(local.train.x, shard.train.x) and torch.equal(local.test.ids, shard.test.ids)
    assert local.num_classes == 10
    with pytest.raises(WorkloadError, match="holds 'digits', not 'fashionmnist'"):
        resolve_workload("lenet").load_data(tmp_path / "p0")


def test_defaults_are_classification() -> None:
    workload: Workload = workload_for("mlp", 3)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    targets = torch.tensor([0, 2, 2])
    counts = workload.evaluate(logits, targets)
    assert (counts.correct, counts.total) == ([1, 0, 1], [1, 0, 2])
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    assert counts.loss_sum == pytest.approx(float(ce))
    assert torch.equal(workload.loss(logits, targets), ce / 3)
    assert workload.adaptable("net.0.weight")
    assert torch.equal(workload.transform(logits), logits)
