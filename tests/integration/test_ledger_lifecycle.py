"""A request's life after it is applied, through real processes: three stacked requests,
withdrawal of the middle one (a job applies the later one again on the first one's version),
withdrawal of the top one (an exact pointer switch), and a consolidation that retrains without
the remaining request and replaces the chain while switching back to it stays exact."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fused.client.initial_weights import start_training
from fused.common.codecs.adapter_file import decode_adapter_file
from fused.common.codecs.adapter_file_apply import merge_into, unmerge
from fused.common.codecs.tensor_codec import decode_tensors, state_dict_digest
from fused.common.domain.specs import FusedConfig, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.rpc.control_convert import unlearning_spec_to_proto
from fused.proto.v1 import control_pb2
from fused.tools.launch import LocalFederation
from tests.integration.conftest import NUM_PARTICIPANTS

TRAIN = TrainConfig(local_epochs=2, lr=0.05, batch_size=32)
TRAINING = TrainingSpec(
    rounds=6, train=TRAIN, min_participants=NUM_PARTICIPANTS, evaluate_each_round=False
)
REQUESTS = (  # the order they are applied in
    ForgetSpec("class", class_label=3),
    ForgetSpec("class", class_label=5),
    ForgetSpec("participant", participant_id="p0"),
)


def finished(fed: LocalFederation, job_id: str) -> dict[str, Any]:
    stub = fed.control()
    for _ in stub.WatchJob(control_pb2.WatchJobRequest(job_id=job_id), timeout=300):
        pass
    info = stub.GetJob(control_pb2.GetJobRequest(job_id=job_id))
    assert info.status == "completed", info.reason
    out: dict[str, Any] = json.loads(info.result_json)
    return out


@dataclass
class Chain:
    fed: LocalFederation
    base: str
    versions: list[str]  # one per request, each stacked on the one before
    entries: list[str]  # their ledger entries


def versions(fed: LocalFederation) -> dict[str, control_pb2.ModelVersionInfo]:
    return {
        m.version_id: m for m in fed.control().ListModels(control_pb2.ListModelsRequest()).models
    }


def forgets(fed: LocalFederation, version_id: str) -> list[str]:
    meta = json.loads(versions(fed)[version_id].meta_json)
    return list(meta.get("forgets", []))


def served(fed: LocalFederation) -> str:
    return next(v for v, m in versions(fed).items() if m.active)


def export_digest(fed: LocalFederation) -> str:
    chunks = fed.control().ExportModel(control_pb2.ExportModelRequest())
    return hashlib.sha256(b"".join(c.data for c in chunks)).hexdigest()


def statuses(fed: LocalFederation) -> dict[str, str]:
    entries = fed.control().ListLedger(control_pb2.ListLedgerRequest()).entries
    return {e.entry_id: e.status for e in entries}


def fusedctl(fed: LocalFederation, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fused.cli.main", "--coordinator", fed.address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def chain(federation: LocalFederation) -> Chain:
    """The shared digits federation (conftest): a trained base and three stacked requests."""
    fed = federation
    base = finished(fed, start_training(fed.control(), TRAINING).job_id)["version_id"]
    made: list[str] = []
    entries: list[str] = []
    for forget in REQUESTS:
        spec = UnlearningSpec(
            forget,
            FusedConfig(top_k=3, density=0.3),
            rounds=3,
            train=TRAIN,
            min_participants=2,
            evaluate_each_round=False,
        )
        request = control_pb2.StartUnlearningRequest(spec=unlearning_spec_to_proto(spec))
        done = finished(fed, fed.control().StartUnlearning(request).job_id)
        made.append(done["version_id"])
        entries.extend(done["ledger_entries"])
    return Chain(fed, base, made, entries)


def test_each_version_forgets_its_request_and_those_below(chain: Chain) -> None:
    fed = chain.fed
    assert [forgets(fed, v) for v in chain.versions] == [
        sorted(chain.entries[: i + 1]) for i in range(3)
    ]
    assert forgets(fed, chain.base) == []
    assert served(fed) == chain.versions[-1]


def test_an_adapter_file_applies_to_its_base_exactly(chain: Chain, tmp_path: Path) -> None:
    """The second request's adapter (stacked on the first one's version) as a portable file:
    applied to the exported base it gives the exported unlearned model, byte for byte; the
    wrong base, a damaged file and a version without an adapter are refused."""
    fed, first, second = chain.fed, chain.versions[0], chain.versions[1]
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("a", "base", "m", "out")}
    assert fusedctl(fed, "export", "--adapter", second, "--out", str(paths["a"])).returncode == 0
    assert fusedctl(fed, "export", first, "--out", str(paths["base"])).returncode == 0
    assert fusedctl(fed, "export", second, "--out", str(paths["m"])).returncode == 0
    f = decode_adapter_file(paths["a"].read_bytes())
    assert f.base_sha256 == sha256(paths["base"]) and f.model_sha256 == sha256(paths["m"])
    assert f.extra["version_id"] == second and f.extra["base_version"] == first
    assert paths["a"].stat().st_size < paths["m"].stat().st_size / 2  # density 0.3 here
    applied = fusedctl(
        fed,
        "--json",
        "apply-adapter",
        *map(str, (paths["base"], paths["a"])),
        "--out",
        str(paths["out"]),
    )
    assert applied.returncode == 0, applied.stderr
    assert paths["out"].read_bytes() == paths["m"].read_bytes()
    state, _ = decode_tensors(paths["base"].read_bytes())
    before = state_dict_digest(state)
    saved = merge_into(state, f)
    assert state_dict_digest(state) == state_dict_digest(decode_tensors(paths["m"].read_bytes())[0])
    unmerge(state, saved)
    assert state_dict_digest(state) == before  # off again, exactly
    foreign = fusedctl(fed, "apply-adapter", str(paths["m"]), str(paths["a"]), "--out", "x")
    assert foreign.returncode != 0 and "applies to the base model with sha256" in foreign.stderr
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(paths["a"].read_bytes()[:-7])
    bad = fusedctl(fed, "apply-adapter", str(paths["base"]), str(damaged), "--out", "x")
    assert bad.returncode != 0 and "is not a valid adapter file" in bad.stderr
    none = fusedctl(fed, "export", "--adapter", chain.base, "--out", str(tmp_path / "n"))
    assert none.returncode != 0 and "without an adapter" in none.stderr


def test_a_receipt_proves_what_a_request_did(chain: Chain, tmp_path: Path) -> None:
    fed, first = chain.fed, chain.versions[0]
    r, key, model = tmp_path / "r.json", tmp_path / "k.pub", tmp_path / "m.safetensors"
    for argv in (
        ("receipt", first, "--out", str(r)),
        ("receipt-key", "--out", str(key)),
        ("export", first, "--out", str(model)),
    ):
        assert fusedctl(fed, *argv).returncode == 0
    done = fusedctl(
        fed, "--json", "verify-receipt", str(r), "--public-key", str(key), "--model", str(model)
    )
    assert done.returncode == 0, done.stderr
    content = json.loads(done.stdout)
    assert content["version_id"] == first and content["request"]["class_label"] == 3
    assert content["model_sha256"] == sha256(model) == versions(fed)[first].digest
    assert content["base_sha256"] == versions(fed)[chain.base].digest
    assert [e["entry_id"] for e in content["ledger_entries"]] == [chain.entries[0]]
    assert content["bytes"] > 0 and content["fa_after"] < content["fa_before"]
    assert 0 <= content["mia_after"] <= 1 and 0 <= content["mia_before"] <= 1
    other = tmp_path / "base.safetensors"
    assert fusedctl(fed, "export", chain.base, "--out", str(other)).returncode == 0
    wrong = fusedctl(fed, "verify-receipt", str(r), "--public-key", str(key), "--model", str(other))
    assert wrong.returncode != 0 and "the model file has sha256" in wrong.stderr
    envelope = json.loads(r.read_text())
    envelope["receipt"]["fa_after"] = 0.0
    r.write_text(json.dumps(envelope))
    forged = fusedctl(fed, "verify-receipt", str(r), "--public-key", str(key))
    assert forged.returncode != 0 and "does not match the receipt" in forged.stderr
    none = fusedctl(fed, "receipt", chain.base, "--out", str(tmp_path / "x"))
    assert none.returncode != 0 and "only unlearning versions have receipts" in none.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_withdrawing_a_middle_request_applies_the_later_one_again(chain: Chain) -> None:
    fed, (r1, r2, r3) = chain.fed, chain.entries
    request = control_pb2.WithdrawalRequest(entry_id=r2)
    reply = fed.control().WithdrawRequest(request)
    assert reply.entry.status == "withdrawn" and reply.job_id and not reply.version_id
    assert chain.versions[0] in reply.message and r3 in reply.message
    assert served(fed) == chain.versions[-1]  # forgets more than asked until the job is done
    rebuilt = finished(fed, reply.job_id)
    assert rebuilt["base_version"] == chain.versions[0]
    assert rebuilt["ledger_entries"] == [r3]
    assert served(fed) == rebuilt["version_id"]
    assert forgets(fed, rebuilt["version_id"]) == sorted([r1, r3])
    assert statuses(fed) == {r1: "active", r2: "withdrawn", r3: "active"}  # no new entry
    chain.versions.append(rebuilt["version_id"])


def test_withdrawing_the_top_request_is_a_pointer_switch(chain: Chain) -> None:
    fed, (r1, _, r3) = chain.fed, chain.entries
    done = fusedctl(fed, "--json", "ledger", "withdraw", r3)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    first = chain.versions[0]
    assert reply["version_id"] == first and not reply.get("job_id")
    assert served(fed) == first and export_digest(fed) == versions(fed)[first].digest
    assert forgets(fed, first) == [r1]
    again = fusedctl(fed, "ledger", "withdraw", r3)
    assert again.returncode != 0 and "already withdrawn" in again.stderr


def test_consolidation_retrains_without_the_remaining_request(chain: Chain) -> None:
    fed, r1 = chain.fed, chain.entries[0]
    first = chain.versions[0]
    done = fusedctl(fed, "--json", "consolidate")
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job_id"]
    result = finished(fed, job_id)
    assert result["base_version"] == first and result["served"] is True
    assert result["consolidated"] == [r1] and result["rounds"] == TRAINING.rounds
    [audit] = result["requests"]
    assert audit["entry_id"] == r1
    assert audit["fa_consolidated"] <= 0.05  # retrained without class 3: it never learnt it
    consolidated = result["version_id"]
    assert served(fed) == consolidated and versions(fed)[consolidated].parent_id == first
    assert forgets(fed, consolidated) == [r1]
    assert statuses(fed)[r1] == "consolidated"
    job = fed.control().GetJob(control_pb2.GetJobRequest(job_id=job_id))
    phases = {(r.phase, r.round) for r in job.rounds}
    assert {("audit", 1), ("audit", 2), ("retrain", TRAINING.rounds)} <= phases
    fed.control().Revert(control_pb2.VersionRequest(version_id=consolidated))
    assert export_digest(fed) == versions(fed)[first].digest  # the old chain, exactly
    again = fusedctl(fed, "consolidate")
    assert again.returncode != 0 and "no active request to consolidate" in again.stderr


def test_the_replaced_chain_can_be_dropped(chain: Chain) -> None:
    fed = chain.fed
    consolidated = next(
        v
        for v, m in versions(fed).items()
        if json.loads(m.meta_json).get("accuracy") and m.parent_id == chain.versions[0]
    )
    old = [chain.base, *chain.versions]
    served_refused = fusedctl(fed, "models", "drop", *old)  # the first version is served
    assert served_refused.returncode != 0 and "is the served version" in served_refused.stderr
    fed.control().Reapply(control_pb2.VersionRequest(version_id=consolidated))
    gone = versions(fed)[chain.versions[1]].digest  # an adapter version's merged weights
    artifacts = fed.work_dir / "state" / "artifacts"
    assert any(artifacts.rglob(gone + "*"))
    done = fusedctl(fed, "--json", "models", "drop", *old)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == old
    left = versions(fed)
    assert list(left) == [consolidated] and left[consolidated].parent_id == ""  # now a root
    assert not any(artifacts.rglob(gone + "*"))  # collected: no job runs
    assert export_digest(fed) == left[consolidated].digest
    unknown = fusedctl(fed, "models", "drop", chain.base)
    assert unknown.returncode != 0 and f"no model version '{chain.base}'" in unknown.stderr
