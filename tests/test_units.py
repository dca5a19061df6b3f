"""Units: published text -> SI, with the unit bugs of peer simulators ruled out."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsim.dtypes import BITS_PER_ELEMENT, bytes_per_element
from capsim.units import (
    BINARY_PREFIXES,
    DECIMAL_PREFIXES,
    UnitError,
    exact_text,
    format_quantity,
    parse_quantity,
)


@pytest.mark.parametrize(
    "text, value, dim",
    [
        ("3.35 TB/s", 3.35e12, "B/s"),  # H100 SXM HBM3: decimal tera, not 2**40
        ("80 GB", 80e9, "B"),
        ("141 GiB", 141 * 2**30, "B"),  # binary only when the text says GiB
        ("989.4 TFLOPS", 989.4e12, "FLOP/s"),
        ("64 GT/s", 64e9, "T/s"),
        ("900 GB/s bidirectional", 900e9, "B/s"),
        ("400 Gb/s", 50e9, "B/s"),  # bits: 400e9 / 8
        ("1,979 teraFLOPS*", 1979e12, "FLOP/s"),
        ("Up to 700W (configurable)", 700.0, "W"),
        ("$1,599", 1599.0, "USD"),
        ("$98.32/hr", 98.32, "USD/h"),
        ("1.4M IOPS", 1.4e6, "IO/s"),
        ("92 µs", 92e-6, "s"),
        ("2.0 GHz", 2.0e9, "Hz"),
        ("4800 MT/s", 4.8e9, "T/s"),
        ("10.2kW", 10.2e3, "W"),
        ("56 cores", 56.0, "1"),
        ("30.3 teraFLOPs", 30.3e12, "FLOP/s"),  # L4 datasheet spelling
        ("485 TOPs*", 485e12, "FLOP/s"),
    ],
)
def test_parse_exact(text, value, dim):
    p = parse_quantity(text)
    assert p.dimension == dim
    assert math.isclose(p.value, value, rel_tol=1e-12)


def test_qualifiers_are_kept():
    assert parse_quantity("1,979 teraFLOPS*").qualifiers == {"sparse"}
    assert parse_quantity("900 GB/s bidirectional").qualifiers == {"bidirectional"}
    assert parse_quantity("1.8 TB/s total").qualifiers == {"bidirectional"}
    assert parse_quantity("25 GB/s per direction").qualifiers == {"per-direction"}


def test_classic_unit_bugs_impossible():
    # "tera" is 10**12 everywhere (one peer uses 2**40 for FLOPS).
    assert parse_quantity("1 TFLOPS").value == 1e12
    assert parse_quantity("1 TB/s").value == 1e12
    # GiB/s and GB/s differ by 2**30 / 10**9 = 1.0737...; neither is silently the other.
    assert parse_quantity("1 GiB/s").value == 2**30
    assert parse_quantity("1 GB/s").value == 1e9
    # 3.35 TB/s is 3.35e12 B/s, not 3072e9 (3 TiB/s truncated) nor 3.35 * 2**40.
    assert parse_quantity("3.35 TB/s").value == 3.35e12
    # Binary prefixes exist only for bytes.
    with pytest.raises(UnitError, match="binary prefix"):
        parse_quantity("1 TiFLOPS")
    # int4 is half a byte, never zero (integer division bug).
    assert bytes_per_element("int4") == 0.5
    assert all(bits > 0 for bits in BITS_PER_ELEMENT.values())


@pytest.mark.parametrize(
    "text, match",
    [
        ("5 furlongs", "unknown unit 'furlongs'"),
        ("3 KB", "ambiguous"),
        ("fast", "no number"),
        ("", "expected a quantity"),
        ("$5 per fortnight", "unknown currency unit"),
    ],
)
def test_bad_units_rejected(text, match):
    with pytest.raises(UnitError, match=match):
        parse_quantity(text)


_DIM_PREFIX = st.sampled_from(
    [("B", p) for p in [*DECIMAL_PREFIXES, *BINARY_PREFIXES]]
    + [("B/s", p) for p in [*DECIMAL_PREFIXES, *BINARY_PREFIXES]]
    + [(d, p) for d in ("FLOP/s", "W", "Hz", "T/s", "IO/s") for p in DECIMAL_PREFIXES]
    + [("USD", ""), ("USD/h", ""), ("s", "")]
)


@given(value=st.floats(min_value=1e-3, max_value=1e21, allow_nan=False), dim_prefix=_DIM_PREFIX)
def test_round_trip_exact(value, dim_prefix):
    dim, prefix = dim_prefix
    p = parse_quantity(exact_text(value, dim, prefix))
    assert p.dimension == dim
    assert math.isclose(p.value, value, rel_tol=1e-12)


@given(
    value=st.floats(min_value=1.0, max_value=1e20, allow_nan=False),
    dim=st.sampled_from(["B", "B/s", "FLOP/s", "W", "Hz", "T/s"]),
)
def test_round_trip_display(value, dim):
    # The human format keeps 4 significant digits: parsing it back is within 5e-4 relative.
    p = parse_quantity(format_quantity(value, dim))
    assert p.dimension == dim
    assert math.isclose(p.value, value, rel_tol=5e-4)
