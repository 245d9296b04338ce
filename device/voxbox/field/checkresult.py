"""The record every self-test check returns: one row of the ``voxbox selftest`` table
(:class:`CheckResult`), shared by the checks (:mod:`voxbox.field.audiocheck`,
:mod:`voxbox.field.netcheck`, the button and wake checks) and the orchestrator
(:mod:`voxbox.field.selftest`), and the helpers that build one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CheckResult:
    """One row of the table.

    Attributes:
        name: check name (one of :data:`voxbox.field.selftest.CHECKS`).
        result: ``"PASS"``, ``"FAIL"`` or ``"SKIP"``.
        value: the measurement (a number in ``unit``), or None.
        unit: unit of ``value`` (``dBFS``, ``ms``, ``dB``, ``score``).
        limit: the pass criterion, human-readable.
        hint: what a technician should do or know (empty when all is well).
        details: further measurements (numbers, strings), also in the JSON output.
    """

    name: str
    result: str
    value: float | None = None
    unit: str = ""
    limit: str = ""
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def value_text(self) -> str:
        if self.value is None:
            return "-"
        v = self.value
        fmt = ".3f" if self.unit == "score" else ".0f" if self.name in ("network", "button") else ".1f"
        return f"{v:{fmt}} {self.unit}".strip() if isinstance(v, float) else f"{v} {self.unit}".strip()


def _skip(name: str, hint: str) -> CheckResult:
    return CheckResult(name, "SKIP", hint=hint)


def _round(x: float, nd: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)
