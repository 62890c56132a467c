"""What a model version records about itself, as typed records.

Stored as one flat JSON object (SQLite, the control protocol's `meta_json`); `to_dict` and
`from_dict` are the one conversion, and the keys live here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fused.common.domain.tasks import AdapterRef

_ADAPTER_KEYS = (
    "adapter_digest",
    "base_digest",
    "layers",
    "density",
    "mask_seed",
    "mask_digest",
    "adapter_params",
)


@dataclass(frozen=True)
class AdapterMeta:
    """How to rebuild an adapter version: its base, the mask's seed and the trained values."""

    adapter_digest: str  # the values' artifact
    base_digest: str  # the frozen base's weights
    layers: tuple[str, ...]
    density: float
    mask_seed: int
    mask_digest: str
    adapter_params: int

    def to_dict(self) -> dict[str, Any]:
        return {**{key: getattr(self, key) for key in _ADAPTER_KEYS}, "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterMeta:
        values = {key: data[key] for key in _ADAPTER_KEYS}
        return cls(**{**values, "layers": tuple(values["layers"])})

    def ref(self) -> AdapterRef:
        """The adapter as participants receive it: the mask from the seed, values from a blob."""
        return AdapterRef(
            self.layers, self.density, self.mask_seed, self.mask_digest, self.adapter_digest
        )


@dataclass(frozen=True)
class UnlearnedMeta:
    method: str
    ra: float  # after unlearning
    fa: float | None


@dataclass(frozen=True)
class VersionMeta:
    dataset: str = ""
    num_classes: int = 0
    schema_digest: str = ""  # the tensor schema's artifact (sha256 of its canonical JSON)
    init_digest: str = ""  # the initial weights of the training that led here (for retrain)
    accuracy: float | None = None  # a trained version's test accuracy
    adapter: AdapterMeta | None = None  # an adapter version
    unlearned: UnlearnedMeta | None = None  # a version an unlearning job produced
    # The forget-ledger entries whose data this model has not learnt or has unlearnt (sorted).
    forgets: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset, "num_classes": self.num_classes}
        out.update({k: v for k, v in self._digests().items() if v})
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.adapter is not None:
            out.update(self.adapter.to_dict())
        if self.unlearned is not None:
            u = self.unlearned
            out.update({"method": u.method, "ra": u.ra, "fa": u.fa})
        if self.forgets:
            out["forgets"] = list(self.forgets)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionMeta:
        adapter = AdapterMeta.from_dict(data) if "adapter_digest" in data else None
        unlearned = None
        if "method" in data:
            unlearned = UnlearnedMeta(str(data["method"]), float(data["ra"]), data.get("fa"))
        accuracy = data.get("accuracy")
        return cls(
            dataset=str(data.get("dataset", "")),
            num_classes=int(data.get("num_classes", 0)),
            schema_digest=str(data.get("schema_digest", "")),
            init_digest=str(data.get("init_digest", "")),
            accuracy=None if accuracy is None else float(accuracy),
            adapter=adapter,
            unlearned=unlearned,
            forgets=tuple(str(e) for e in data.get("forgets", ())),
        )

    def _digests(self) -> dict[str, str]:
        return {"schema_digest": self.schema_digest, "init_digest": self.init_digest}

    def blobs(self) -> list[str]:
        """Other artifacts this version needs besides its own."""
        a = self.adapter
        own = [d for d in (self.schema_digest, self.init_digest) if d]
        return own + ([a.adapter_digest, a.base_digest] if a is not None else [])
