"""The artifacts of bench.load's simulated participants, without torch: models received
(checked and parsed once per process) and updates made with numpy and safetensors.numpy in
the layout the coordinator's strict decoder accepts."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import safetensors.numpy


class ModelCache:
    """Artifacts by digest, checked and parsed once for the whole process (load-generator
    work, not coordinator load): each participant still receives every byte, and an inline
    copy is compared with the checked one instead of hashed again."""

    def __init__(self) -> None:
        self._parsed: dict[str, dict[str, np.ndarray[Any, Any]]] = {}
        self._checked: dict[str, bytes] = {}

    def check(self, digest: str, data: bytes) -> bool:
        """Whether data is the artifact named digest."""
        known = self._checked.get(digest)
        if known is not None:
            return known == data
        if hashlib.sha256(data).hexdigest() != digest:
            return False
        self._checked[digest] = data
        return True

    def get(self, digest: str, data: bytes) -> dict[str, np.ndarray[Any, Any]]:
        parsed = self._parsed.get(digest)
        if parsed is None:
            parsed = self._parsed[digest] = safetensors.numpy.load(data)
        return parsed

    def held(self, digest: str) -> bytes | None:
        return self._checked.get(digest)


def make_update(
    weights: dict[str, np.ndarray[Any, Any]], model_name: str, pid: str, round_number: int
) -> bytes:
    """The model plus a small deterministic perturbation, as safetensors bytes with the
    header the coordinator's schema check expects (same names, shapes and dtypes)."""
    seed = int.from_bytes(hashlib.sha256(f"{pid}:{round_number}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, array in weights.items():
        if np.issubdtype(array.dtype, np.floating):
            noise = rng.standard_normal(array.shape).astype(array.dtype) * array.dtype.type(1e-3)
            out[name] = np.ascontiguousarray(array + noise)
        else:
            out[name] = np.ascontiguousarray(array)
    data: bytes = safetensors.numpy.save(out, metadata={"model": model_name})
    return data
