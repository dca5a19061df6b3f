"""The CAP cost model as pure functions (no I/O); every function broadcasts over numpy arrays of scenarios.

Model (SI: seconds, watts, joules, USD):

* capex = sum over parts of unit price x count (GPUs, CPUs, DRAM by capacity x $/byte, SSD by capacity x
  $/byte, NICs, switches); a part without a price is listed as unpriced, never counted as $0
  (:func:`system_capex_usd`).
* power: P_max is the system's published maximum power, else the sum of its parts' TDPs. Serving draws
  P_max (an upper bound); idle draws f x P_max (f = idle power fraction). Over a lifetime in which the system
  serves a fraction u of the time, the average draw is P_avg = P_max x (f + (1 - f) x u)
  (:func:`average_power_w`).
* owned hardware, per hour of serving: $/h = (capex / lifetime_h + P_avg[kW] x PUE x $/kWh) / u. At u = 1 that
  is capex / lifetime_h + P_max[kW] x PUE x $/kWh; below 1 the capital and the energy of the idle hours are
  spread over the hours of use (:func:`hourly_cost_usd`).
* cloud, per hour of serving: cloud $/h / u (the instance is paid for while idle; energy is in the price).
* $/1M output tokens = $/h / (output tokens/s x 3600) x 1e6 (:func:`usd_per_million_tokens`).
* J/token at the facility = (P_avg / u) x PUE / (tokens/s): PUE and the idle hours' share included, so that
  J/token x $/J gives the energy part of $/token. J/token of the IT equipment while serving = P_max / tokens/s
  (no PUE, no idle share) (:func:`joules_per_token`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SECONDS_PER_HOUR = 3600.0
JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Capex:
    """Capital cost of a set of parts: the priced sum, and which parts have no price."""

    priced_usd: float
    unpriced: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.unpriced

    @property
    def usd(self) -> float | None:
        """The capital cost, or None while any part is unpriced (a partial sum is not a capex)."""
        return self.priced_usd if self.complete else None


def system_capex_usd(parts: Iterable) -> Capex:
    """Sum of unit price x count over ``parts`` (objects with ``name``, ``count``, ``unit_usd``)."""
    total, unpriced = 0.0, []
    for p in parts:
        if p.unit_usd is None:
            unpriced.append(p.name)
        else:
            total += float(p.unit_usd) * p.count
    return Capex(priced_usd=total, unpriced=tuple(unpriced))


def average_power_w(max_power_w, utilisation, idle_fraction):
    """Lifetime-average electrical draw: P_max x (f + (1 - f) x u)."""
    f = np.asarray(idle_fraction, float)
    return np.asarray(max_power_w, float) * (f + (1.0 - f) * np.asarray(utilisation, float))


def energy_usd_per_h(power_w, pue, usd_per_kwh):
    """Cost of one wall-clock hour of drawing ``power_w`` at the facility: kW x PUE x $/kWh."""
    return np.asarray(power_w, float) / 1000.0 * np.asarray(pue, float) * np.asarray(usd_per_kwh, float)


def hourly_cost_usd(capex_usd, lifetime_s, utilisation, power_w, pue, usd_per_kwh):
    """Owned hardware: USD per hour of serving. ``power_w`` is the lifetime-average draw (:func:`average_power_w`).

    (capex / lifetime_h + kW x PUE x $/kWh) / u.
    """
    lifetime_h = np.asarray(lifetime_s, float) / SECONDS_PER_HOUR
    capital = np.asarray(capex_usd, float) / lifetime_h
    return (capital + energy_usd_per_h(power_w, pue, usd_per_kwh)) / np.asarray(utilisation, float)


def cloud_hourly_cost_usd(cloud_usd_per_h, utilisation):
    """Rented hardware: USD per hour of serving, the hourly price over the fraction of hours used."""
    return np.asarray(cloud_usd_per_h, float) / np.asarray(utilisation, float)


def usd_per_million_tokens(usd_per_h, tokens_per_s):
    """USD per 1e6 tokens produced at ``tokens_per_s`` while serving: $/h / (tokens/s x 3600) x 1e6."""
    return np.asarray(usd_per_h, float) / (np.asarray(tokens_per_s, float) * SECONDS_PER_HOUR) * 1e6


def joules_per_token(power_w, tokens_per_s, pue=1.0):
    """Energy per token: power x PUE / tokens/s (pass pue=1 for the IT equipment alone)."""
    return np.asarray(power_w, float) * np.asarray(pue, float) / np.asarray(tokens_per_s, float)


def facility_power_per_serving_w(max_power_w, utilisation, idle_fraction):
    """Draw attributed to each second of serving: P_avg / u (the busy draw plus the idle hours' share)."""
    return average_power_w(max_power_w, utilisation, idle_fraction) / np.asarray(utilisation, float)
