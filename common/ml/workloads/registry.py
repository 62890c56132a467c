"""Finding a workload by reference: a built-in name, an entry point of the `fused.workloads`
group (a user package installed next to FUSED), or `module:attribute`.

The attribute (or entry point target) may be a `Workload` instance or a `Workload` subclass
taking no arguments. Every failure is a `WorkloadError` naming the reference and the cause.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points

from fused.common.ml.workloads.base import Workload, WorkloadError
from fused.common.ml.workloads.builtin import PAIRS, builtin

ENTRY_POINT_GROUP = "fused.workloads"


def resolve_workload(reference: str) -> Workload:
    """The workload `reference` names. Built-ins first, so no installed package can shadow
    them; `module:attribute` when there is a colon; otherwise an entry point."""
    found = builtin(reference)
    if found is not None:
        return found
    return _resolve_external(reference)


def workload_for(reference: str, num_classes: int) -> Workload:
    """The workload `reference` names, for data of `num_classes` classes (what a task says)."""
    return resolve_workload(reference).with_classes(num_classes)


@lru_cache(maxsize=64)  # imports and entry point scans are slow next to a task's other work
def _resolve_external(reference: str) -> Workload:
    if ":" in reference:
        return _as_workload(reference, _import_attribute(reference))
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == reference]
    if not matches:
        raise WorkloadError(reference, f"unknown; {_known()}")
    try:
        target = matches[0].load()
    except Exception as exc:  # any error of the user's import is the workload's failure
        raise WorkloadError(reference, f"entry point {matches[0].value!r} failed: {exc!r}") from exc
    return _as_workload(reference, target)


def _import_attribute(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise WorkloadError(reference, "expected module:attribute")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # ImportError, AttributeError, or whatever the module raised
        raise WorkloadError(reference, f"cannot import: {exc!r}") from exc
    return target


def _as_workload(reference: str, target: object) -> Workload:
    if isinstance(target, type) and issubclass(target, Workload):
        cls = target
        try:
            target = cls()
        except Exception as exc:  # the user's constructor: report it as the workload's failure
            raise WorkloadError(reference, f"{cls.__name__}() failed: {exc!r}") from exc
    if not isinstance(target, Workload):
        raise WorkloadError(reference, f"is a {type(target).__name__}, not a Workload")
    return target


def _known() -> str:
    installed = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return (
        f"built-in: {', '.join(sorted(PAIRS))}; installed ({ENTRY_POINT_GROUP}): "
        f"{', '.join(installed) or 'none'}; or give module:attribute"
    )


def clear_cache() -> None:
    """Forget resolved external workloads (tests install and remove packages)."""
    _resolve_external.cache_clear()
