"""A participant's site: a workload opened on local data, what it declares at registration, and
a workload without classes (a regression) trained, evaluated and forgotten through the same
executor as the built-ins, refusing only class requests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.data.tensors import TensorData
from fused.common.ml.schema import parse_schema
from fused.common.ml.workloads import EvalCounts, LocalData, Workload, WorkloadError, WorkloadInfo
from fused.participant.executor import local_evaluate, local_update
from fused.participant.forgetting import remaining_train
from fused.participant.main import main
from fused.participant.site import Site, builtin_summary, offer_of, open_site

CFG = TrainConfig(local_epochs=2, lr=0.05, batch_size=8)


def rows(n: int, first_id: int) -> TensorData:
    gen = torch.Generator().manual_seed(first_id)
    x = torch.rand(n, 3, generator=gen)
    y = x.sum(dim=1, keepdim=True)  # (N, 1) float targets: no classes
    return TensorData.labelled(x, y.squeeze(1), torch.arange(first_id, first_id + n))


class Sum(Workload):
    """Regress the sum of three numbers; correct when within 0.25."""

    info = WorkloadInfo("sum", "1", num_classes=None)

    def make_model(self) -> nn.Module:
        return nn.Linear(3, 1)

    def load_data(self, data_dir: Path) -> LocalData:
        return LocalData(rows(40, 0), rows(10, 1000), None)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.squeeze(1), targets)

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> EvalCounts:
        error = (outputs.squeeze(1) - targets).abs()
        loss = float(F.mse_loss(outputs.squeeze(1), targets, reduction="sum"))
        return EvalCounts([int((error < 0.25).sum())], [len(targets)], loss)


class NoData(Sum):
    def load_data(self, data_dir: Path) -> LocalData:
        raise FileNotFoundError(data_dir / "rows.csv")


def site() -> Site:
    workload = Sum()
    return Site("p0", workload, workload.load_data(Path(".")))


def test_a_workload_without_classes_trains_evaluates_and_forgets_samples() -> None:
    s = site()
    weights = s.workload.build_model(0).state_dict()
    trained, stats = local_update(s, weights, CFG)
    assert stats.num_examples == 40 and stats.mean_loss > 0
    before, after = local_evaluate(s, weights), local_evaluate(s, trained)
    assert len(after.total) == 1 and after.total[0] == 10  # one bucket
    assert after.loss_sum < before.loss_sum
    forget = ForgetSpec("samples", participant_id="p0", sample_ids=(0, 1, 2))
    assert len(remaining_train(s, forget, 0)) == 37
    assert local_evaluate(s, trained, forget).forget_total == 3


def test_a_class_request_is_refused_saying_why() -> None:
    with pytest.raises(ValueError, match="'sum' has no classes: it cannot forget a class"):
        remaining_train(site(), ForgetSpec("class", class_label=0), 0)


def test_tasks_for_another_workload_or_class_count_are_refused() -> None:
    s = site()
    s.check_task("sum", 1)  # one evaluation bucket
    with pytest.raises(ValueError, match="serves 'sum', not 'mlp'"):
        s.check_task("mlp", 1)
    with pytest.raises(ValueError, match="for 10 classes"):
        s.check_task("sum", 10)


def test_the_offer_declares_the_schema_and_one_bucket() -> None:
    offer = offer_of(site())
    assert (offer.workload, offer.version, offer.num_classes) == ("sum", "1", 0)
    assert offer.class_counts == (40,) and (offer.num_train, offer.num_test) == (40, 10)
    assert hashlib.sha256(offer.schema_json).hexdigest() == offer.schema_digest
    assert [e.name for e in parse_schema(offer.schema_json)] == ["bias", "weight"]


def test_opening_fails_with_the_reference_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "usersum.py").write_text(
        "from tests.unit.test_participant_site import NoData, Sum\nNO_DATA, SUM = NoData(), Sum()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WorkloadError, match="'nowhere:X': cannot import"):
        open_site("p0", "nowhere:X", tmp_path)
    with pytest.raises(WorkloadError, match=r"loading data from .* failed: FileNotFoundError"):
        open_site("p0", "usersum:NO_DATA", tmp_path)
    assert open_site("p0", "usersum:SUM", tmp_path).workload.name == "sum"


def test_builtin_summaries_declare_what_an_agent_would() -> None:
    summary = builtin_summary("digits-mlp", [5] * 10, 20, "digits")
    assert (summary.workload, summary.num_classes, summary.num_train) == ("mlp", 10, 50)
    assert hashlib.sha256(summary.tensor_schema).hexdigest() == summary.schema_digest


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "name a workload (--workload) for data that is not a shard"),
        (["--workload", "mlp"], "give --participant-id (no partition shard in"),
    ],
)
def test_the_agent_refuses_to_start_without_what_it_needs(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--data-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
