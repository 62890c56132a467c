"""The participant's hardware settings on a CPU-only host: how --device and --amp resolve, that
the process-wide choice reaches training and evaluation, that weights come back as CPU float32
under the same names and dtypes, and that device=cpu is bit-identical to the default."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from fused.common.ml.adapters import adapter_values, attach_adapter, build_layout
from fused.common.ml.data.tensors import TensorData
from fused.participant.main import main
from fused.participant.training import (
    Accelerators,
    Hardware,
    TrainConfig,
    current_hardware,
    evaluate,
    resolve_hardware,
    train_local,
    use_hardware,
)

ROOT = Path(__file__).resolve().parents[2]
NONE = Accelerators()
MPS = Accelerators(mps=True)
AMPERE = Accelerators(cuda_capabilities=((8, 0),))
TURING = Accelerators(cuda_capabilities=((7, 5),))
MIXED = Accelerators(cuda_capabilities=((7, 5), (9, 0)), mps=True)
CPU = torch.device("cpu")

# --------------------------------------------------------------------------- resolution table


@pytest.mark.parametrize(
    ("device", "amp", "present", "expected", "amp_dtype", "warned"),
    [
        ("auto", False, NONE, "cpu", None, False),
        ("auto", False, MPS, "mps", None, False),
        ("auto", False, TURING, "cuda:0", None, False),
        ("auto", False, MIXED, "cuda:0", None, False),  # CUDA before MPS
        ("cpu", False, MIXED, "cpu", None, False),
        ("cuda", False, MIXED, "cuda:0", None, False),
        ("cuda:1", False, MIXED, "cuda:1", None, False),
        (" CUDA:1 ", False, MIXED, "cuda:1", None, False),
        ("mps", False, MPS, "mps", None, False),
        ("cuda", True, AMPERE, "cuda:0", torch.bfloat16, False),
        ("cuda", True, TURING, "cuda:0", torch.float16, False),
        ("cuda:1", True, MIXED, "cuda:1", torch.bfloat16, False),  # that device's capability
        ("auto", True, AMPERE, "cuda:0", torch.bfloat16, False),
        ("auto", True, NONE, "cpu", None, True),  # one config for a mixed fleet
        ("auto", True, MPS, "mps", None, True),
    ],
)
def test_device_resolution(
    device: str,
    amp: bool,
    present: Accelerators,
    expected: str,
    amp_dtype: torch.dtype | None,
    warned: bool,
) -> None:
    hardware, notes = resolve_hardware(device, amp, present)
    assert hardware.device == torch.device(expected)
    assert hardware.amp_dtype == amp_dtype
    assert hardware.loss_scaling == (amp_dtype == torch.float16)
    assert bool(notes) == warned


@pytest.mark.parametrize(
    ("device", "amp", "present", "message"),
    [
        ("tpu", False, MIXED, "expected auto, cpu, cuda, cuda:N or mps"),
        ("", False, MIXED, "expected auto"),
        ("cpu:0", False, MIXED, "expected auto"),
        ("cuda:x", False, MIXED, "expected auto"),
        ("cuda:-1", False, MIXED, "expected auto"),
        ("cuda:7", False, MIXED, "this host has 2 CUDA device"),
        ("cuda", False, MPS, "this host has no CUDA device"),
        ("mps", False, TURING, "no MPS"),
        ("cpu", True, MIXED, "amp needs a CUDA device, not cpu"),
        ("mps", True, MPS, "amp needs a CUDA device, not mps"),
    ],
)
def test_invalid_devices_are_refused(
    device: str, amp: bool, present: Accelerators, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_hardware(device, amp, present)


def test_this_host_resolves_auto_to_what_torch_reports() -> None:
    hardware, _ = resolve_hardware("auto", False)
    if torch.cuda.is_available():
        assert hardware.device == torch.device("cuda:0")
    elif torch.backends.mps.is_available():
        assert hardware.device == torch.device("mps")
    else:
        assert hardware.device == CPU


# --------------------------------------------------------------------------- startup


def test_bad_device_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fused.participant.main", "--device", "tpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fused-participant: device 'tpu': expected auto, cpu, cuda, cuda:N or mps"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda:7"], "device 'cuda:7': this host has"),
        (["--device", "cpu", "--amp"], "amp needs a CUDA device, not cpu"),
        (["--threads", "-1"], "threads must be 0"),
    ],
)
def test_startup_refusals(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this host has a cuda:7")
    # checked before the shard is read: a missing shard must not hide the real mistake
    assert main([*argv, "--data-dir", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_device_comes_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FUSED_DEVICE", "tpu")
    assert main(["--data-dir", str(tmp_path)]) == 2
    assert "device 'tpu'" in capsys.readouterr().err


# --------------------------------------------------------------------------- plumbing


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # BatchNorm: buffers travel to the device and back too
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3)
    )


def _data(n: int = 60) -> TensorData:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorData(x=x, y=y, y_true=y.clone(), ids=torch.arange(n), scale=1.0 / 255)


CFG = TrainConfig(local_epochs=2, lr=0.1, batch_size=8, seed=5)


@pytest.fixture
def restore_hardware() -> Iterator[None]:
    saved = current_hardware()
    yield
    use_hardware(saved)


def test_default_hardware_is_cpu_without_amp() -> None:
    assert current_hardware() == Hardware(CPU, None)


def test_cpu_is_bit_identical_to_the_default(restore_hardware: None) -> None:
    runs = []
    for how in ("default", "argument", "process"):
        model, data = _model(), _data()
        if how == "argument":
            stats = train_local(model, data, CFG, hardware=Hardware(CPU))
            counts = evaluate(model, data, 3, hardware=Hardware(CPU))
        else:
            if how == "process":
                use_hardware(resolve_hardware("cpu", False, NONE)[0])
            stats = train_local(model, data, CFG)
            counts = evaluate(model, data, 3)
        runs.append((model.state_dict(), stats, counts))
    (ref, ref_stats, ref_counts), *others = runs
    for state, stats, counts in others:
        assert stats == ref_stats and counts == ref_counts
        assert state.keys() == ref.keys()
        for name, tensor in ref.items():
            assert torch.equal(state[name], tensor), name


def test_weights_come_back_on_cpu_with_their_names_and_dtypes() -> None:
    model = _model()
    before = {k: (v.dtype, v.shape) for k, v in model.state_dict().items()}
    ids = [id(p) for p in model.parameters()]
    # bfloat16 autocast runs on CPU too, so the mixed-precision path is exercised here
    stats = train_local(model, _data(), CFG, hardware=Hardware(CPU, torch.bfloat16))
    after = model.state_dict()
    assert {k: (v.dtype, v.shape) for k, v in after.items()} == before
    assert all(v.device == CPU for v in after.values())
    assert [id(p) for p in model.parameters()] == ids
    assert torch.isfinite(torch.tensor(stats.mean_loss))
    counts = evaluate(model, _data(), 3, hardware=Hardware(CPU, torch.bfloat16))
    assert counts.num_examples == 60


def test_loss_scaling_path_trains_and_returns_float32() -> None:
    model, data = _model(), _data()
    hardware = Hardware(CPU, torch.float16)
    assert hardware.loss_scaling
    stats = train_local(model, data, CFG, hardware=hardware)
    assert stats.steps == 2 * 8
    assert all(v.dtype == torch.float32 for v in model.parameters())
    assert all(torch.isfinite(v).all() for v in model.parameters())


def test_adapter_values_train_on_the_chosen_hardware(restore_hardware: None) -> None:
    results = []
    for hardware in (None, Hardware(CPU)):
        if hardware is not None:
            use_hardware(hardware)
        model = _model()
        base = {k: v.clone() for k, v in model.state_dict().items()}
        shapes = {"1.weight": (12, 16), "4.weight": (3, 12)}
        trainable = attach_adapter(model, build_layout(shapes, 0.25, seed=9))
        train_local(model, _data(), CFG, params=trainable.values(), freeze_norm_stats=True)
        values = adapter_values(model)
        assert all(v.device == CPU and v.dtype == torch.float32 for v in values.values())
        # the base, norm statistics included, is untouched
        state = model.state_dict()
        for name, tensor in base.items():
            key = (
                name
                if name in state
                else name.replace("weight", "parametrizations.weight.original")
            )
            assert torch.equal(state[key], tensor), name
        results.append(values)
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
