"""Unlearning methods, by the name a request gives (`fusedctl unlearn --method NAME`).

Adding a method: one module with an `UnlearningMethod` subclass, and one line here.
"""

from __future__ import annotations

from fused.coordinator.methods.base import UnlearningMethod
from fused.coordinator.methods.finetune import Finetune
from fused.coordinator.methods.fused import Fused
from fused.coordinator.methods.retrain import Retrain

METHODS: dict[str, UnlearningMethod] = {m.name: m for m in (Fused(), Retrain(), Finetune())}
