"""A price per hour of serving, and where it comes from (made by :mod:`capsim.cap.hourly`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    usd_per_h: float | None  # None: unpriced
    basis: str  # "cloud", "owned", "given" or "unpriced"
    detail: str  # the source, or why there is no price
