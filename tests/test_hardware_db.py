"""The built-in hardware database: complete, consistent with its sources, free of unit bugs."""

import math

import pytest
from pydantic import ValidationError

from capsim.hardware import db as hwdb
from capsim.hardware.quantity import Quantity, evaluate_formula
from capsim.hardware.schema import Accelerator
from capsim.units import parse_quantity


@pytest.fixture(scope="module")
def db():
    return hwdb.load()


def test_builtin_loads_without_problems():
    _, problems = hwdb.check(hwdb.BUILTIN_DB)
    assert [str(p) for p in problems] == []


def test_size(db):
    # Issue #2 acceptance: at least 30 hardware items and 8 systems.
    assert len(db.items) >= 30
    assert len(db.list("system")) >= 8


def test_every_numeric_leaf_parses_to_its_value_and_cites_a_source(db):
    leaves = 0
    for item in db.items.values():
        for path, q in hwdb.iter_quantities(item):
            leaves += 1
            where = f"{item.id}.{path}"
            # Re-derive independently of the validator: parse the text, apply the formula.
            x = parse_quantity(q.as_published).value
            expected = evaluate_formula(q.formula, x) if q.formula else x
            assert math.isclose(expected, q.value, rel_tol=1e-6), where
            assert q.source in db.sources, where
            src = db.sources[q.source]
            assert src.title and (src.url or src.document), where
            if q.kind == "derived":
                assert q.formula, where
            if q.kind == "estimate":
                assert q.reason, where
    assert leaves > 300


def test_no_sparse_peak_stored_as_dense(db):
    for acc in db.list("accelerator"):
        for dtype, q in acc.peak_flop_per_s.items():
            if "sparse" in parse_quantity(q.as_published).qualifiers:
                # Stored value must be half the printed 2:4-sparse figure.
                assert q.value == pytest.approx(parse_quantity(q.as_published).value / 2), (acc.id, dtype)


def test_ids_are_file_names(db):
    for item_id, path in db.files.items():
        assert path.stem == item_id


# Spot values against datasheets (SI units).
@pytest.mark.parametrize(
    "alias, field, expected",
    [
        ("h100", "memory.bandwidth_bytes_per_s", 3.35e12),  # NVIDIA H100 datasheet: 3.35 TB/s
        ("h100", "peak_flop_per_s.bf16", 989.5e12),  # 1,979 TFLOPS* sparse / 2
        ("a100-80gb", "memory.bandwidth_bytes_per_s", 2.039e12),  # A100 80GB SXM datasheet: 2,039 GB/s
        ("a100-80gb", "peak_flop_per_s.bf16", 312e12),  # A100 datasheet: BF16 312 TFLOPS (dense)
        ("h200", "memory.bandwidth_bytes_per_s", 4.8e12),  # H200 datasheet: 4.8 TB/s
        ("h200", "memory.capacity_bytes", 141e9),  # 141 GB
        ("mi300x", "memory.bandwidth_bytes_per_s", 5.3e12),  # AMD ROCm docs: 5.3 TB/s
        ("mi300x", "memory.capacity_bytes", 192e9),  # 192 GB
        ("mi300x", "peak_flop_per_s.bf16", 1307.4e12),  # AMD ROCm: 1,307.4 TFLOPS dense
        ("4090", "memory.bandwidth_bytes_per_s", 1008e9),  # Ada whitepaper: 1,008 GB/s
    ],
)
def test_spot_values(db, alias, field, expected):
    item = db.get(alias, "accelerator")
    obj = item
    for part in field.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    assert obj.value == pytest.approx(expected, rel=1e-9)


def test_pcie_and_ddr_derivations(db):
    # PCIe 5.0 x16: 32 GT/s x 16 lanes x 128/130 / 8 = 63.015 GB/s per direction.
    assert db.get("pcie-gen5-x16").bandwidth_per_direction_bytes_per_s.value == pytest.approx(63.0154e9, rel=1e-5)
    # DDR5-4800 channel: 4800 MT/s x 8 B = 38.4 GB/s.
    assert db.get("ddr5-4800").bandwidth_per_channel_bytes_per_s.value == pytest.approx(38.4e9)


@pytest.mark.parametrize(
    "fields, match",
    [
        # 2**40 "tera": value disagrees with the decimal text.
        ({"value": 3.35 * 2**40, "as_published": "3.35 TB/s"}, "gives 3.35e\\+12"),
        # GiB/s bandwidth stored as if it were GB/s.
        ({"value": 800e9, "as_published": "800 GiB/s"}, "gives"),
        # 3072e9 for 3.35 TB/s.
        ({"value": 3072e9, "as_published": "3.35TB/s"}, "gives"),
        # Sparse peak stored as dense.
        ({"value": 1979e12, "as_published": "1,979 teraFLOPS*"}, "2:4-sparse"),
        # Bidirectional link figure stored as per direction.
        ({"value": 900e9, "as_published": "900 GB/s total"}, "both directions"),
        ({"value": -1.0, "as_published": "-1 GB/s"}, ">= 0"),
    ],
)
def test_schema_refuses_classic_unit_bugs(fields, match):
    base = {"source": "x", "kind": "vendor-spec"}
    with pytest.raises(ValidationError, match=match):
        Quantity(**{**base, **fields})


def test_field_unit_is_enforced():
    # A bandwidth field given a capacity: dimension mismatch, not silently accepted.
    good = Accelerator.model_validate(_acc({"bandwidth_bytes_per_s": _q(3.35e12, "3.35 TB/s")}))
    assert good.memory.bandwidth_bytes_per_s.value == 3.35e12
    with pytest.raises(ValidationError, match="needs 'B/s'"):
        Accelerator.model_validate(_acc({"bandwidth_bytes_per_s": _q(80e9, "80 GB")}))


def _q(value, text):
    return {"value": value, "as_published": text, "source": "s", "kind": "vendor-spec"}


def _acc(memory_overrides):
    memory = {"type": "HBM3", "capacity_bytes": _q(80e9, "80 GB"), **memory_overrides}
    return {
        "id": "x-gpu",
        "kind": "accelerator",
        "name": "X",
        "vendor": "X",
        "memory": memory,
        "peak_flop_per_s": {"bf16": _q(1e15, "1 PFLOPS")},
        "tdp_w": _q(700.0, "700 W"),
    }
