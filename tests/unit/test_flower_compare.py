"""The Flower comparison's own arithmetic and its counting proxy (no Flower needed)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.flower_compare import parse_args, resolve_settings
from bench.flower_compute import epoch_seconds
from bench.flower_env import REPO_ROOT, check_venv_path
from bench.flower_job import MODEL_DATASETS, Job, prepare_shards
from bench.flower_report import (
    MEDIAN_KEYS,
    compare,
    first_round_extra,
    measured_window,
    median_compute,
    median_report,
    message_bytes_by_method,
    ratio,
    round_compute,
    system_report,
)
from bench.flower_side import REPO_MODULES, fused_mean
from bench.proxy import DOWN, UP, CountingProxy, WireEvent, bytes_in_window


def test_bytes_in_window_counts_each_way_inclusive_bounds() -> None:
    events = [
        WireEvent(0.5, UP, 1000),  # before: registration
        WireEvent(1.0, DOWN, 10),
        WireEvent(1.5, UP, 20),
        WireEvent(2.0, DOWN, 30),
        WireEvent(2.5, UP, 4000),  # after: final evaluation
    ]
    assert bytes_in_window(events, 1.0, 2.0) == {UP: 20, DOWN: 40, "total": 60}
    with pytest.raises(ValueError, match="before it starts"):
        bytes_in_window(events, 2.0, 1.0)


def test_measured_window_skips_warmup_rounds() -> None:
    started, finished = [10.0, 20.0, 23.0], [19.0, 22.0, 26.0]
    whole = measured_window(started, finished, 0)
    assert (whole.start, whole.end, whole.rounds) == (10.0, 26.0, 3)
    warm = measured_window(started, finished, 1)  # from the end of round 1
    assert (warm.start, warm.end, warm.rounds) == (19.0, 26.0, 2)
    with pytest.raises(ValueError, match="none to measure"):
        measured_window(started, finished, 3)
    with pytest.raises(ValueError, match="round ends"):
        measured_window(started, finished[:2], 0)


def test_system_report_per_measured_round() -> None:
    events = [WireEvent(5.0, UP, 999), WireEvent(12.0, UP, 300), WireEvent(14.0, DOWN, 100)]
    report = system_report(events, [0.0, 10.0, 13.0], [10.0, 13.0, 16.0], 1, 0.75, 2)
    assert report["bytes_per_round"] == 200.0  # 400 bytes over 2 measured rounds
    assert report["bytes_per_participant_per_round"] == 100.0
    assert report["bytes_up_per_round"] == 150.0
    assert report["bytes_down_per_round"] == 50.0
    assert report["seconds_per_round"] == 3.0  # (16 - 10) / 2
    assert report["seconds_per_round_all"] == pytest.approx(16.0 / 3)
    assert report["round_seconds"] == [10.0, 3.0, 3.0]
    assert report["first_round_extra_seconds"] == 7.0
    assert report["accuracy"] == 0.75
    with pytest.raises(ValueError, match="participants"):
        system_report(events, [0.0, 10.0], [10.0, 13.0], 1, 0.75, 0)


def test_first_round_extra_against_the_later_rounds_mean() -> None:
    assert first_round_extra([5.0, 2.0, 4.0]) == 2.0
    assert first_round_extra([1.0, 1.5]) == -0.5  # a first round may be the quicker one
    assert first_round_extra([1.0]) is None


def test_round_compute_is_the_max_or_the_sum_over_the_cores() -> None:
    epochs = [2.0, 1.0, 1.5, 1.5]
    shared = round_compute(epochs, cores=2)  # 4 participants on 2 cores: 6 s of work / 2
    assert (shared.parallel, shared.seconds) == (2, 3.0)
    own = round_compute(epochs, cores=8)  # a core each: the slowest participant
    assert (own.parallel, own.seconds) == (4, 2.0)
    lopsided = round_compute([5.0, 0.5, 0.5], cores=2)  # one long epoch bounds it
    assert lopsided.seconds == 5.0
    assert own.as_json()["sum_epoch_seconds"] == 6.0
    for bad in (([], 2), ([1.0, 0.0], 2), ([1.0], 0)):
        with pytest.raises(ValueError):
            round_compute(*bad)


def _pass(seconds: float, extra: float | None) -> dict[str, object]:
    figures = dict.fromkeys(MEDIAN_KEYS, 10.0)
    return {
        **figures,
        "seconds_per_round": seconds,
        "first_round_extra_seconds": extra,
        "round_seconds": [seconds],
        "accuracy": 0.5,
    }


def test_median_report_over_passes() -> None:
    report = median_report([_pass(3.0, 1.0), _pass(1.0, 2.0), _pass(2.0, 0.5)])
    assert report["seconds_per_round"] == 2.0
    assert report["first_round_extra_seconds"] == 1.0
    assert report["bytes_per_round"] == 10.0
    assert report["accuracy"] == 0.5  # the first pass's, not a figure with a median
    assert [p["seconds_per_round"] for p in report["passes"]] == [3.0, 1.0, 2.0]
    assert median_report([_pass(1.0, None), _pass(2.0, 1.0)])["first_round_extra_seconds"] is None
    with pytest.raises(ValueError):
        median_report([])


def test_median_compute_takes_each_participants_median_epoch() -> None:
    passes = [round_compute(e, cores=2) for e in ([1.0, 4.0], [3.0, 2.0], [2.0, 3.0])]
    compute = median_compute(passes)
    assert compute.epoch_seconds == (2.0, 3.0)
    assert compute.seconds == 3.0  # max(3, 5 / 2)


def test_compare_ratios_and_goal() -> None:
    fused = {"bytes_per_round": 90.0, "seconds_per_round": 2.0}
    flower = {"bytes_per_round": 100.0, "seconds_per_round": 1.0}
    result = compare(fused, flower, 1.0)
    assert result["ratio_bytes"] == pytest.approx(0.9)
    assert result["ratio_seconds"] == pytest.approx(2.0)
    assert result["seconds_per_round_over_compute"] == {"fused": 2.0, "flower": 1.0}
    assert result["goal_met"] == {"bytes": True, "seconds": False, "compute_ratio": False}
    assert compare(fused, flower, 1.8)["goal_met"]["compute_ratio"]  # 2.0 / 1.8 <= 1.2
    assert ratio(1.0, 0.0) is None
    assert compare(fused, {"bytes_per_round": 0.0, "seconds_per_round": 0.0}, 0.0)["goal_met"] == {
        "bytes": False,
        "seconds": False,
        "compute_ratio": False,
    }


def _sample(method: str, phase: str, direction: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"method": method, "phase": phase, "direction": direction}  # the coordinator's
    return ("fused_wire_bytes_total", tuple(sorted(labels.items())))


def test_message_bytes_by_method_takes_growth_of_participant_methods() -> None:
    before = {_sample("PullTask", "none", "sent"): 100.0, _sample("Register", "none", "sent"): 50.0}
    after = {
        _sample("PullTask", "none", "sent"): 160.0,
        _sample("Register", "none", "sent"): 50.0,
        _sample("DownloadBlob", "train", "sent"): 1000.0,
        _sample("DownloadBlob", "train", "received"): 10.0,
        _sample("DownloadBlob", "evaluate", "sent"): 777.0,  # not a training round's
        _sample("GetJob", "none", "sent"): 5.0,  # control traffic, not a participant's
        ("fused_wire_messages_total", _sample("PullTask", "none", "sent")[1]): 9.0,
    }
    methods = frozenset({"PullTask", "Register", "DownloadBlob"})
    assert message_bytes_by_method(before, after, methods, frozenset({"train", "none"})) == {
        "DownloadBlob": 1010.0,
        "PullTask": 60.0,
        "Register": 0.0,
    }
    train = message_bytes_by_method(before, after, methods, frozenset({"train"}))
    assert train == {"DownloadBlob": 1010.0}


def _args(**values: object) -> argparse.Namespace:
    defaults: dict[str, object] = {
        "quick": False,
        "rounds": 5,
        "warmup_rounds": 1,
        "participants": 4,
        "model": "lenet",
        "compute_repeats": 2,
        "repeats": 1,
    }
    return argparse.Namespace(**{**defaults, **values})


def test_quick_means_three_rounds_of_the_mlp() -> None:
    args = resolve_settings(_args(quick=True))
    assert (args.rounds, args.model, args.participants) == (3, "mlp", 4)
    assert resolve_settings(_args()).rounds == 5
    bad_settings = (
        {"rounds": 1},  # nothing left after the warm-up round
        {"warmup_rounds": -1},
        {"participants": 0},
        {"compute_repeats": 0},
        {"repeats": 0},
    )
    for bad in bad_settings:
        with pytest.raises(SystemExit):
            resolve_settings(_args(**bad))


def test_model_names_its_data_set_and_the_agents_warm_up_by_default() -> None:
    args = parse_args(["--model", "lenet"])
    assert (MODEL_DATASETS[args.model], args.rounds, args.agent_warmup) == (
        "fashionmnist",
        5,
        True,
    )
    assert parse_args(["--no-agent-warmup"]).agent_warmup is False
    assert MODEL_DATASETS[parse_args([]).model] == "digits"
    with pytest.raises(SystemExit):
        parse_args(["--model", "resnet18"])


def test_epoch_seconds_times_each_participant(tmp_path: Path) -> None:
    summary = prepare_shards("digits", None, 2, 0, tmp_path / "shards")
    job = Job(
        dataset="digits",
        model="mlp",
        num_classes=int(summary["num_classes"]),
        participants=2,
        rounds=2,
        warmup=1,
        seed=0,
        shards=tmp_path / "shards",
        work_dir=tmp_path,
    )
    seconds = epoch_seconds(job, repeats=1)
    assert len(seconds) == 2
    assert all(s > 0 for s in seconds)


def test_never_installs_into_the_project_venv(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="refusing"):
        check_venv_path(REPO_ROOT / ".venv")
    check_venv_path(tmp_path / "flwr")  # anywhere else is fine


def test_proxy_forwards_and_counts_both_ways() -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        port = upstream.getsockname()[1]

        def echo_twice() -> None:
            conn, _ = upstream.accept()
            with conn:
                data = b""
                while len(data) < 1000:
                    data += conn.recv(4096)
                conn.sendall(data + data)

        server = threading.Thread(target=echo_twice, daemon=True)
        server.start()
        with CountingProxy(port) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as c:
            c.sendall(b"x" * 1000)
            got = b""
            while len(got) < 2000:
                chunk = c.recv(4096)
                assert chunk
                got += chunk
            assert got == b"x" * 2000
            server.join(5)
            events = proxy.events()
        assert proxy.connections == 1
        moved = bytes_in_window(events, 0.0, float("inf"))
        assert moved == {UP: 1000, DOWN: 2000, "total": 3000}


def test_flower_side_imports_no_generated_protobuf_code() -> None:
    """The Flower environment's protobuf is older than our generated code accepts."""
    probe = (
        "import importlib, sys\n"
        f"for name in {REPO_MODULES!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('fused.proto', 'google.protobuf'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert done.stdout.strip() == "[]"


def test_fused_mean_is_the_weighted_mean_whatever_the_order() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    names = ["w", "b"]
    results = [
        (
            [
                rng.standard_normal((3, 4), dtype=np.float32),
                rng.standard_normal(4, dtype=np.float32),
            ],
            n,
        )
        for n in (7, 3, 11)
    ]
    mean = fused_mean(names, results)
    expected = sum(n * arrays[0].astype(np.float64) for arrays, n in results) / 21
    np.testing.assert_allclose(mean[0], expected, rtol=1e-6)
    assert mean[1].dtype == np.float32
    reordered = fused_mean(names, results[::-1])
    for a, b in zip(mean, reordered, strict=True):
        assert np.array_equal(a, b)  # an exact sum: arrival order changes no bit
