"""A frozen prefix computed once: when only some parameters train (a FUSED adapter on fc
layers), everything between the input and the first trainable tensor gives the same result in
every epoch, so it runs once per task, without autograd or argmax indices (prefix_pool), and
each epoch runs only the rest. Its results are kept for later tasks: an adapter job's rounds
and their evaluations share the base and the rows, so from its second round on the prefix
does not run at all.

The model is traced with torch.fx and cut where the trainable part begins. The cut is used only
when it is exact for this model and data: the trace succeeds, the prefix ends in tensors with
one row per sample, and a sample's row does not depend on the rest of its batch or on chance
(checked on the first chunk, which catches dropout, batch statistics and random augmentation).
Otherwise `cut_prefix` returns None and training runs the whole model as before. Kept results
are reused only for the same prefix code, parameter bytes, rows and input step.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

from fused.participant.prefix_pool import index_free

__all__ = ["PREFIX_CACHE_BYTES", "CachedPrefix", "Rows", "cut_prefix", "drop_kept"]

# The activations one task keeps (and the process keeps for the next task); a prefix output
# larger than this runs the whole model every epoch, as before.
PREFIX_CACHE_BYTES = 512 << 20
CHUNK = 256  # samples per prefix batch: large enough for throughput, small enough for cache

Inputs = Callable[[torch.Tensor], torch.Tensor]  # stored rows -> the model's inputs
Activations = tuple[torch.Tensor, ...]  # each (N, ...): one row per sample


@dataclass(frozen=True)
class Rows:
    """What the prefix runs on."""

    x: torch.Tensor  # (N, ...) the stored rows, on the device training runs on
    inputs: Inputs  # rows -> the model's inputs (the workload's input step)
    key: Callable[[], Hashable]  # identifies x's bytes and how it runs (device, autocast)


@dataclass(frozen=True)
class CachedPrefix:
    """The frozen prefix's outputs for every sample, and the trainable rest of the model."""

    activations: Activations
    suffix: fx.GraphModule  # the activations' rows -> the model's outputs

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.suffix(*(a[idx] for a in self.activations))
        return out


class _Kept:
    """Recent prefix outputs by what made them: in an adapter job's round, the training rows
    and, for its evaluation, the test rows and the forgotten ones. The oldest go first, to stay
    within `entries` and `max_bytes` together."""

    def __init__(self, entries: int, max_bytes: int) -> None:
        self._entries, self._max_bytes = entries, max_bytes
        self._kept: OrderedDict[Hashable, Activations] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Activations | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def put(self, key: Hashable, activations: Activations) -> None:
        with self._lock:
            self._kept[key] = activations
            self._kept.move_to_end(key)
            while len(self._kept) > self._entries or self._bytes() > self._max_bytes:
                self._kept.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def _bytes(self) -> int:
        return sum(_size(a) for a in self._kept.values())


def _size(activations: Activations) -> int:
    return sum(t.nelement() * t.element_size() for t in activations)


KEEP_ENTRIES = 4
_kept = _Kept(KEEP_ENTRIES, PREFIX_CACHE_BYTES)


def drop_kept() -> None:
    """Forget the kept activations (a bench measures a job's first round this way)."""
    _kept.clear()


def cut_prefix(
    model: nn.Module, rows: Rows, max_bytes: int = PREFIX_CACHE_BYTES
) -> CachedPrefix | None:
    """The model split at its first tensor that requires grad (a trained one, or an adapter's
    values being evaluated), with the prefix's outputs on every row; None when no exact cut
    exists or they exceed `max_bytes`."""
    graph = _trace(model)
    cut = None if graph is None else _cut(model, graph)
    if graph is None or cut is None:
        return None
    frozen, frontier = cut
    prefix = fx.GraphModule(model, _prefix_graph(graph, frontier))
    key = (rows.key(), rows.inputs, repr(prefix), prefix.code, _digest(prefix))
    activations = _kept.get(key) or _activations(
        prefix, _fast(model, graph, frontier), rows, max_bytes
    )
    if activations is None:
        return None
    _kept.put(key, activations)
    suffix = fx.GraphModule(model, _suffix_graph(graph, frozen, frontier))
    suffix.graph.eliminate_dead_code()  # frozen parameter-only nodes the rest does not read
    suffix.recompile()
    return CachedPrefix(activations, suffix)


def _fast(model: nn.Module, graph: fx.Graph, frontier: list[fx.Node]) -> fx.GraphModule | None:
    """The prefix with index-free max pools, if it has pools to rewrite."""
    fast = fx.GraphModule(model, _prefix_graph(graph, frontier))
    return fast if index_free(fast) else None


def _activations(
    prefix: fx.GraphModule, fast: fx.GraphModule | None, rows: Rows, max_bytes: int
) -> Activations | None:
    """The prefix on every row, in chunks; None unless exact and within the size bound. The
    `fast` prefix computes the chunks when it gives the first one bit for bit."""
    first = _run(prefix, _inputs(rows, 0, CHUNK))
    if first is None or not _per_sample(prefix, rows, first):
        return None
    if _size(first) // len(first[0]) * len(rows.x) > max_bytes:
        return None
    exact = fast is not None and _equal(_run(fast, _inputs(rows, 0, CHUNK)), first)
    runner = fast if fast is not None and exact else prefix
    chunks = [first]
    for start in range(CHUNK, len(rows.x), CHUNK):
        chunk = _run(runner, _inputs(rows, start, start + CHUNK))
        if chunk is None:
            return None
        chunks.append(chunk)
    return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))


def _inputs(rows: Rows, start: int, end: int) -> torch.Tensor:
    # a copy: a model that works on its input in place must not change the stored rows
    return rows.inputs(rows.x[start:end].clone())


def _equal(a: Activations | None, b: Activations) -> bool:
    return a is not None and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _digest(module: nn.Module) -> bytes:
    """The prefix's parameters and buffers, by name, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=32)
    for name, t in module.state_dict(keep_vars=False).items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:{t.device}".encode())
        h.update(tensor_bytes(t))
    return h.digest()


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's bytes, without a copy where it is contiguous on the CPU."""
    flat = t.detach().contiguous().reshape(-1).cpu()
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


def _trace(model: nn.Module) -> fx.Graph | None:
    try:
        return fx.Tracer().trace(model)
    except Exception:  # a workload's model need not be traceable: run it whole
        return None


def _live(model: nn.Module, node: fx.Node, live: set[fx.Node]) -> bool:
    """Whether a node's value depends on a trainable tensor."""
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        if any(p.requires_grad for p in module.parameters()):
            return True
    if node.op == "get_attr":
        value = _attr(model, str(node.target))
        return isinstance(value, torch.Tensor) and value.requires_grad
    return any(arg in live for arg in node.all_input_nodes)


def _attr(model: nn.Module, target: str) -> object:
    owner, _, name = target.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, name)


def _cut(model: nn.Module, graph: fx.Graph) -> tuple[set[fx.Node], list[fx.Node]] | None:
    """The frozen prefix (the nodes that depend on the input and on no trainable tensor) and
    its frontier (those of them the rest reads). None when the model has not exactly one
    input, or the cut would be at the input itself."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    live: set[fx.Node] = set()
    fed: set[fx.Node] = set(placeholders)  # depends on the input
    for node in graph.nodes:
        if _live(model, node, live):
            live.add(node)
        elif any(arg in fed for arg in node.all_input_nodes):
            fed.add(node)
    prefix = fed - live
    frontier = [
        n
        for n in graph.nodes
        if n in prefix and any(u in live or u.op == "output" for u in n.users)
    ]
    if not live or not frontier or placeholders[0] in frontier:
        return None
    return prefix, frontier


def _prefix_graph(graph: fx.Graph, frontier: list[fx.Node]) -> fx.Graph:
    needed = _ancestors(frontier)
    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in needed:
            env[node] = out.node_copy(node, lambda n: env[n])
    out.output(tuple(env[n] for n in frontier))
    return out


def _suffix_graph(graph: fx.Graph, frozen: set[fx.Node], frontier: list[fx.Node]) -> fx.Graph:
    """The rest of the model, reading the frontier's values as its inputs."""
    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: out.placeholder(f"cut_{i}") for i, n in enumerate(frontier)}
    for node in graph.nodes:
        if node not in frozen:
            env[node] = out.node_copy(node, lambda n: env[n])
    return out


def _ancestors(nodes: Iterable[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


def _run(prefix: fx.GraphModule, batch: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """The prefix's outputs on one batch; None unless each is a tensor with a row per sample."""
    with torch.no_grad():
        outputs = prefix(batch)
    ok = all(isinstance(t, torch.Tensor) and t.dim() > 0 and len(t) == len(batch) for t in outputs)
    return tuple(outputs) if ok else None


def _per_sample(prefix: fx.GraphModule, rows: Rows, first: Activations) -> bool:
    """Whether the first sample's activations are the same computed alone: a prefix that mixes
    a batch's samples or draws at random would not give cached rows equal to fresh ones."""
    try:
        alone = _run(prefix, _inputs(rows, 0, 1))
    except Exception:  # batch statistics refuse a batch of one: not per sample either
        return False
    return alone is not None and all(
        torch.allclose(a.float(), b[:1].float(), rtol=1e-4, atol=1e-5)
        for a, b in zip(alone, first, strict=True)
    )
