"""docs/ADAPTER_FILE.md stays true: its torch-only snippet, run as written, applies and removes
an adapter file bit for bit, and the size figures it quotes are what the writer produces."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import Any

import torch

from fused.common.codecs.adapter_file import build_adapter_file, decode_adapter_file
from fused.common.codecs.adapter_file_apply import apply_adapter_file
from fused.common.codecs.positions import entropy_bound_bytes
from fused.common.codecs.tensor_codec import encode_tensors, state_dict_digest
from fused.common.ml.adapters import build_layout, merge_weights
from fused.common.ml.models.lenet import LeNet5
from tests.unit.test_adapter_file import ROUND_TRIPS, SHA_A, SHA_B, lenet_case

DOC = Path(__file__).resolve().parents[2] / "docs" / "ADAPTER_FILE.md"


def _snippet() -> dict[str, Any]:
    """The page's one Python block, checked to be short and torch/safetensors-only, executed."""
    (snippet,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(snippet.strip().splitlines()) <= 20
    imported: set[str] = set()
    for node in ast.walk(ast.parse(snippet)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(str(node.module).split(".")[0])
    assert imported == {"torch", "safetensors"}
    namespace: dict[str, Any] = {}
    exec(compile(snippet, str(DOC), "exec"), namespace)
    return namespace


def test_the_snippet_applies_and_removes_bit_for_bit(tmp_path: Path) -> None:
    snippet = _snippet()
    for case in ("lenet-f32-all", "lenet-bf16", "negative-zero", "int32-gaps"):
        base, merged = ROUND_TRIPS[case]()
        path = tmp_path / f"{case}.safetensors"
        path.write_bytes(build_adapter_file(base, merged, SHA_A, SHA_B, {}))
        state = {n: t.clone() for n, t in base.items()}
        undo = snippet["apply_adapter"](state, str(path))
        expected = apply_adapter_file(base, decode_adapter_file(path.read_bytes()))
        assert state_dict_digest(state) == state_dict_digest(expected), case
        assert state_dict_digest(state) == state_dict_digest(merged), case
        snippet["remove_adapter"](state, undo)
        assert state_dict_digest(state) == state_dict_digest(base), case


def test_the_snippet_switches_a_live_model(tmp_path: Path) -> None:
    snippet = _snippet()
    model = LeNet5()
    base = {n: t.clone() for n, t in model.state_dict().items()}
    layout = build_layout({"fc1.weight": (120, 256), "fc2.weight": (84, 120)}, 0.1, seed=5)
    values = {n: torch.randn(layout.indices[n].numel()) for n in layout.names}
    merged = merge_weights(base, layout, values)
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(build_adapter_file(base, merged, SHA_A, SHA_B, {}))
    undo = snippet["apply_adapter"](model.state_dict(), str(path))
    assert state_dict_digest(model.state_dict()) == state_dict_digest(merged)
    snippet["remove_adapter"](model.state_dict(), undo)
    assert state_dict_digest(model.state_dict()) == state_dict_digest(base)


def test_the_quoted_size_figures() -> None:
    """LeNet-5, every tensor adapted at density 0.1: file against values + entropy bound."""
    base, merged = lenet_case(torch.float32, 0.1)
    data = build_adapter_file(base, merged, SHA_A, SHA_B, {})
    patches = decode_adapter_file(data).patches.values()
    count = sum(p.values.numel() for p in patches)
    values = sum(p.values.numel() * p.values.element_size() for p in patches)
    entropy = sum(entropy_bound_bytes(math.prod(p.shape), p.values.numel()) for p in patches)
    header = 8 + int.from_bytes(data[:8], "little")
    bound = values + entropy
    quoted = (
        f"({count:,} changed elements): {len(data):,} bytes, against {values:,} bytes of float32 "
        f"values plus {round(entropy):,} bytes of entropy bound for the positions "
        f"({len(data) / bound:.2f}\u00d7; {(len(data) - header) / bound:.2f}\u00d7 without the "
        f"{header:,}-byte header); the full merged model is {len(encode_tensors(merged)):,} bytes"
    )
    assert quoted in " ".join(DOC.read_text().split()), quoted
    assert len(data) <= 1.25 * bound and len(data) - header <= 1.1 * bound
