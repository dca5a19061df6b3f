"""Units: parse published quantities into SI base values, and format them for reading.

Inside capsim every number is in an SI base unit and the unit is in the name
(``bandwidth_bytes_per_s``, ``latency_s``). This module is the only place that
turns vendor text ("3.35 TB/s", "141 GiB", "989.4 TFLOPS", "64 GT/s",
"900 GB/s bidirectional") into those values, and back for printing.

Rules, each of which rules out a bug seen in peer simulators:

* Decimal prefixes are powers of ten (T = 10**12), binary prefixes powers of
  two (Ti = 2**40); the two are never mixed. "KB" is refused as ambiguous.
* Bits are converted to bytes (b / 8); "Gb/s" and "GB/s" differ by 8.
* Binary prefixes are accepted only on byte quantities (GiB, GiB/s), never on
  FLOP/s, watts or transfers.
* A unit that is not in the table is an error, never silently ignored.

Dimensions are short strings: ``B`` (bytes), ``B/s``, ``FLOP/s`` (also
integer OP/s, counted the same way: one multiply-add = 2), ``W``, ``J``,
``USD``, ``USD/h``, ``s``, ``Hz``, ``T/s`` (transfers per second), ``IO/s``
and ``1`` (a plain count).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from capsim.errors import CapsimError

DECIMAL_PREFIXES: dict[str, float] = {
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}
DECIMAL_WORDS: dict[str, str] = {"kilo": "k", "mega": "M", "giga": "G", "tera": "T", "peta": "P", "exa": "E"}
BINARY_PREFIXES: dict[str, float] = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
SMALL_PREFIXES: dict[str, float] = {"m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9}

DIMENSIONS = ("B", "B/s", "FLOP/s", "W", "J", "USD", "USD/h", "s", "Hz", "T/s", "IO/s", "s/B", "1")

# Base unit spellings -> (dimension, factor to SI, accepts binary prefixes, accepts decimal prefixes).
_BASE_UNITS: dict[str, tuple[str, float, bool, bool]] = {
    "B": ("B", 1.0, True, True),
    "byte": ("B", 1.0, True, True),
    "bytes": ("B", 1.0, True, True),
    "b": ("B", 1.0 / 8, True, True),
    "bit": ("B", 1.0 / 8, True, True),
    "bits": ("B", 1.0 / 8, True, True),
    "B/s": ("B/s", 1.0, True, True),
    "B/sec": ("B/s", 1.0, True, True),
    "Bps": ("B/s", 1.0, True, True),
    "b/s": ("B/s", 1.0 / 8, True, True),
    "bit/s": ("B/s", 1.0 / 8, True, True),
    "bps": ("B/s", 1.0 / 8, True, True),
    "FLOPS": ("FLOP/s", 1.0, False, True),
    "FLOP/s": ("FLOP/s", 1.0, False, True),
    "flops": ("FLOP/s", 1.0, False, True),
    "FLOPs": ("FLOP/s", 1.0, False, True),  # as datasheets print it ("teraFLOPs"): a rate there
    "OPs": ("FLOP/s", 1.0, False, True),
    "OPS": ("FLOP/s", 1.0, False, True),
    "OP/s": ("FLOP/s", 1.0, False, True),
    "W": ("W", 1.0, False, True),
    "J": ("J", 1.0, False, True),
    "Wh": ("J", 3600.0, False, True),
    "Hz": ("Hz", 1.0, False, True),
    "T/s": ("T/s", 1.0, False, True),
    "IOPS": ("IO/s", 1.0, False, True),
    "s": ("s", 1.0, False, False),
    "sec": ("s", 1.0, False, False),
    "h": ("s", 3600.0, False, False),
    "hr": ("s", 3600.0, False, False),
    "USD": ("USD", 1.0, False, False),
    "USD/h": ("USD/h", 1.0, False, False),
    "USD/hr": ("USD/h", 1.0, False, False),
}
_TIME_SMALL = {"ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# time per byte (a machine's cost to fault in a page, per byte): s/B with a small prefix on the seconds
_TIME_PER_BYTE = {"s/B": 1.0, **{f"{t}/B": v for t, v in _TIME_SMALL.items()}}
_COUNT_WORDS = {"", "cores", "core", "threads", "channels", "channel", "lanes", "SMs", "CUs", "links", "x"}
_AMBIGUOUS = {"KB": "kB (10^3 B) or KiB (2^10 B)", "Kb": "kb (10^3 bit) or Kib (2^10 bit)"}

# Qualifiers that may follow the unit. They do not change the parsed value; the
# hardware schema uses them to demand a derivation (sparse -> dense, total -> per direction).
QUALIFIERS: dict[str, str] = {
    "*": "sparse",
    "sparse": "sparse",
    "with sparsity": "sparse",
    "dense": "dense",
    "bidirectional": "bidirectional",
    "bi-directional": "bidirectional",
    "total": "bidirectional",
    "aggregate": "bidirectional",
    "per direction": "per-direction",
    "each direction": "per-direction",
    "unidirectional": "per-direction",
}
_LEADING_WORDS = ("up to", "about", "approx.", "approximately", "~", "≈", ">", "<", "≥", "≤")
_NUMBER = re.compile(r"^([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*")
_PAREN = re.compile(r"\s*\([^()]*\)\s*$")


@dataclass(frozen=True)
class Parsed:
    """A published quantity in SI: ``value`` in the base unit of ``dimension``."""

    value: float
    dimension: str
    qualifiers: frozenset[str] = field(default_factory=frozenset)


class UnitError(CapsimError):
    """A quantity whose text cannot be read; the message says what was expected."""


def _split_prefix(unit: str, base: str) -> str | None:
    """The prefix in front of ``base`` in ``unit``, or None when ``unit`` does not end with it."""
    if not unit.endswith(base):
        return None
    return unit[: len(unit) - len(base)]


def _unit_factor(unit: str) -> tuple[str, float]:
    """(dimension, factor to SI) for a unit string such as 'TB/s', 'GiB', 'TFLOPS', 'GT/s'."""
    if unit in _COUNT_WORDS:
        return "1", 1.0
    if unit in _AMBIGUOUS or unit.startswith(tuple(_AMBIGUOUS)):
        key = next(k for k in _AMBIGUOUS if unit.startswith(k))
        raise UnitError(f"unit '{unit}' is ambiguous: write {_AMBIGUOUS[key]}")
    if unit in _TIME_SMALL:
        return "s", _TIME_SMALL[unit]
    if unit in _TIME_PER_BYTE:
        return "s/B", _TIME_PER_BYTE[unit]
    for word, short in DECIMAL_WORDS.items():  # teraFLOPS, gigabytes
        if unit.lower().startswith(word) and len(unit) > len(word):
            rest = unit[len(word) :]
            rest = {"flops": "FLOPS", "FLOPs": "FLOPS", "bytes": "B", "byte": "B", "OPs": "OPS"}.get(rest, rest)
            return _unit_factor(short + rest)
    # Longest base spelling first so that 'B/s' wins over 'B' and 'FLOP/s' over 's'.
    for base in sorted(_BASE_UNITS, key=len, reverse=True):
        prefix = _split_prefix(unit, base)
        if prefix is None:
            continue
        dim, factor, binary_ok, decimal_ok = _BASE_UNITS[base]
        if prefix in BINARY_PREFIXES:
            if not binary_ok:
                raise UnitError(f"binary prefix '{prefix}' is not allowed on '{base}' (only on bytes)")
            return dim, factor * BINARY_PREFIXES[prefix]
        if prefix == "" or (decimal_ok and prefix in DECIMAL_PREFIXES):
            return dim, factor * DECIMAL_PREFIXES[prefix]
        if prefix == "K" and base in ("IOPS", "OPS", "FLOPS", "Hz", "W"):
            return dim, factor * 1e3
    raise UnitError(
        f"unknown unit '{unit}' (expected e.g. B, GB, GiB, GB/s, Gb/s, TFLOPS, TOPS, W, GHz, GT/s, IOPS, s, ms, USD, USD/h)"
    )


def parse_quantity(text: str) -> Parsed:
    """Parse published text like '3.35 TB/s' or '$1,599' into an SI value.

    >>> parse_quantity("3.35 TB/s").value
    3350000000000.0
    >>> parse_quantity("141 GiB").value == 141 * 2**30
    True
    """
    if not isinstance(text, str) or not text.strip():
        raise UnitError(f"expected a quantity such as '3.35 TB/s', got {text!r}")
    s = text.strip()
    while _PAREN.search(s):  # trailing remarks: "700 W (configurable)"
        s = _PAREN.sub("", s).strip()
    for word in _LEADING_WORDS:
        if s.lower().startswith(word):
            s = s[len(word) :].strip()
            break
    currency = False
    if s.startswith("$"):
        currency, s = True, s[1:].strip()
    m = _NUMBER.match(s)
    if not m:
        raise UnitError(f"no number at the start of {text!r}")
    number = float(m.group(1).replace(",", ""))
    rest = s[m.end() :].strip()
    qualifiers: set[str] = set()
    changed = True
    while changed:  # strip qualifiers from the end, longest first
        changed = False
        for q in sorted(QUALIFIERS, key=len, reverse=True):
            if rest.endswith(q) and (q == "*" or rest == q or rest[: -len(q)].endswith((" ", ","))):
                qualifiers.add(QUALIFIERS[q])
                rest = rest[: -len(q)].rstrip(" ,")
                changed = True
    if currency:
        if rest in ("", "USD"):
            return Parsed(number, "USD", frozenset(qualifiers))
        if rest in ("/h", "/hr", "/hour", "per hour"):
            return Parsed(number, "USD/h", frozenset(qualifiers))
        raise UnitError(f"unknown currency unit '{rest}' in {text!r} (expected '$N' or '$N/h')")
    if rest in ("USD/hour", "$/h", "$/hr"):
        rest = "USD/h"
    try:
        dim, factor = _unit_factor(rest)
    except UnitError as first:
        if " " not in rest:
            raise
        try:
            dim, factor = _unit_factor(rest.replace(" ", ""))  # "1.4 M IOPS", "3.35 TB /s"
        except UnitError:
            raise first from None
    value = number * factor
    if not math.isfinite(value):
        raise UnitError(f"{text!r} is not a finite quantity")
    return Parsed(value, dim, frozenset(qualifiers))


# ---------------------------------------------------------------- formatting

_DISPLAY_UNITS: dict[str, str] = {
    "B": "B",
    "B/s": "B/s",
    "FLOP/s": "FLOPS",
    "W": "W",
    "J": "J",
    "Hz": "Hz",
    "T/s": "T/s",
    "IO/s": "IOPS",
}


def format_quantity(value: float, dimension: str, digits: int = 4, binary: bool = False) -> str:
    """Human text for an SI value: 3.35e12 B/s -> '3.35 TB/s'. ``binary`` uses GiB etc. for bytes."""
    if dimension not in DIMENSIONS:
        raise UnitError(f"unknown dimension '{dimension}'")
    if dimension == "USD":
        return f"${value:,.{2 if abs(value) < 100 else 0}f}"
    if dimension == "USD/h":
        return f"${value:,.2f}/h"
    if dimension == "1":
        return f"{value:.{digits}g}"
    if dimension in ("s", "s/B"):
        per = "/B" if dimension == "s/B" else ""
        for name, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
            if abs(value) >= scale or name == "ns":
                return f"{value / scale:.{digits}g} {name}{per}"
    unit = _DISPLAY_UNITS[dimension]
    table = BINARY_PREFIXES if (binary and dimension == "B") else DECIMAL_PREFIXES
    prefix, scale = "", 1.0
    for p, f in sorted(table.items(), key=lambda kv: kv[1]):
        if abs(value) >= f:
            prefix, scale = p, f
    return f"{value / scale:.{digits}g} {prefix}{unit}"


def exact_text(value: float, dimension: str, prefix: str = "") -> str:
    """Text that parses back to exactly ``value`` (used by round-trip tests and writers)."""
    unit = {"USD": "USD", "USD/h": "USD/h", "1": "", "s": "s"}.get(dimension) or _DISPLAY_UNITS[dimension]
    scale = BINARY_PREFIXES.get(prefix) or DECIMAL_PREFIXES.get(prefix, 1.0)
    return f"{value / scale!r} {prefix}{unit}".strip()


def seconds_flag(flag: str, text: str | None, zero_ok: bool = False) -> float | None:
    """A command-line time: '50ms', '2 s' or a plain number of seconds (None stays None; 0 only with
    ``zero_ok``); a clear error naming ``flag`` otherwise."""
    if text is None:
        return None
    try:
        p = parse_quantity(text)
    except CapsimError:
        p = None
    ok = p is not None and p.dimension in ("s", "1") and (0 <= p.value if zero_ok else 0 < p.value) \
        and p.value < float("inf")
    if not ok:
        what = "a time >= 0" if zero_ok else "a positive time"
        raise CapsimError(f"{flag} {text}: expected {what} such as 50ms, 2s or 0.05 (seconds)")
    return p.value
