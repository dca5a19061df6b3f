"""Dollars per million output tokens from a price and power, both from the hardware database.

Hourly cost: an on-demand cloud price when the system has one (energy included);
otherwise the purchase price written off evenly over AMORTISATION_YEARS plus
energy at the device's or system's maximum power (an upper bound) and
ELECTRICITY_USD_PER_KWH. Refined by the CAP-analysis issue.
"""

from __future__ import annotations

import numpy as np

# Amazon 2024 Form 10-K: servers and networking equipment useful life changed from six to five
# years effective 1 January 2025 (quoted by deepquarry.substack.com, 2025-02-11).
AMORTISATION_YEARS = 5.0
HOURS_PER_YEAR = 8766.0  # 365.25 days x 24 h
# US EIA Electricity Monthly Update (data for September 2024): "Kansas had the median average
# revenue at 11.94 cents per kWh" (median over states of average revenue per kWh, all sectors).
ELECTRICITY_USD_PER_KWH = 0.1194


def hourly_usd(cloud_usd_per_h=None, purchase_usd=None, power_w=None,
               electricity_usd_per_kwh=ELECTRICITY_USD_PER_KWH) -> float | None:
    if cloud_usd_per_h is not None:
        return float(cloud_usd_per_h)
    if purchase_usd is None:
        return None
    energy = (power_w or 0.0) / 1000.0 * electricity_usd_per_kwh
    return purchase_usd / (AMORTISATION_YEARS * HOURS_PER_YEAR) + energy


def usd_per_million_tokens(usd_per_h, seconds, tokens) -> np.ndarray:
    """Cost of ``tokens`` produced in ``seconds`` of the hardware's time, per 1e6 tokens."""
    return np.asarray(usd_per_h, float) / 3600.0 * np.asarray(seconds, float) / np.asarray(tokens, float) * 1e6
