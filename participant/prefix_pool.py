"""Max pooling without argmax indices, for a frozen prefix that never backpropagates.

PyTorch's CPU max_pool2d computes the position of every maximum (for the backward pass) even
under no_grad; in LeNet's frozen convolutions it costs more than the convolutions do. The
usual pooling (kernel equal to stride, no padding or dilation, floor mode) is the elementwise
maximum of kernel-many strided views, which gives the same values exactly. `index_free`
rewrites such calls in a prefix graph; the caller keeps the rewrite only when it gives the
original's outputs to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["index_free", "strided_max"]

_PARAMS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def strided_max(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """max_pool2d(x, (kh, kw)) with stride = kernel, no padding, floor mode."""
    h, w = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
    views = [x[..., i:h:kh, j:w:kw] for i in range(kh) for j in range(kw)]
    if len(views) == 1:
        return views[0].clone()
    out = torch.maximum(views[0], views[1])
    for view in views[2:]:
        torch.maximum(out, view, out=out)
    return out


def index_free(prefix: fx.GraphModule) -> bool:
    """Rewrite the plain 2-d max pools of `prefix` to `strided_max`, in place; whether any was."""
    changed = False
    for node in prefix.graph.nodes:
        kernel = _plain_pool(prefix, node)
        if kernel is not None:
            node.op, node.target = "call_function", strided_max
            node.args, node.kwargs = (node.args[0], *kernel), {}
            changed = True
    if changed:
        prefix.graph.lint()
        prefix.recompile()
    return changed


def _plain_pool(prefix: fx.GraphModule, node: fx.Node) -> tuple[int, int] | None:
    """(kh, kw) of a max pool node with stride = kernel, no padding or dilation, floor mode
    and no indices; None for any other node."""
    if node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
        bound = dict(zip(_PARAMS, node.args, strict=False)) | dict(node.kwargs)
    elif node.op == "call_module" and isinstance(
        module := prefix.get_submodule(str(node.target)), nn.MaxPool2d
    ):
        bound = {name: getattr(module, name) for name in _PARAMS[1:]}
        bound["input"] = node.args[0] if node.args else None
    else:
        return None
    kernel = _pair(bound.get("kernel_size"))
    if kernel is None or bound.get("input") is None:
        return None
    stride = bound.get("stride")
    strided = stride is None or stride in ([], ()) or _pair(stride) == kernel
    plain = (
        _pair(bound.get("padding", 0)) == (0, 0)
        and _pair(bound.get("dilation", 1)) == (1, 1)
        and not bound.get("ceil_mode", False)
        and not bound.get("return_indices", False)
    )
    return kernel if strided and plain else None


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(type(v) is int for v in value):
        return value[0], value[1]
    return None
