"""Measured achievable matmul rates (hardware_db achievable_matmul_flop_per_s, capsim.sim.peaks.achievable): what
GPU engine profiles run their matmuls at, while the ideal bound and the utilisation metrics keep the datasheet
peaks. Figures: stas00/ml-engineering's "Maximum Achievable Matmul FLOPS comparison table" (744d01e)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from capsim.hardware.db import load
from capsim.hardware.schema import Accelerator
from capsim.predict import Query
from capsim.scenario import resolve
from capsim.sim.peaks import UNMEASURED_MATMUL_FRACTION, achievable

DB = load()


def test_measured_dtypes_take_their_rate_and_the_others_the_bf16_fraction():
    # H100 SXM: bf16 794.5 of 989.5 TFLOPS, fp8 1402.6 TFLOPS measured; int8 (not measured) at the bf16 fraction
    # 794.5 / 989.5 = 0.80293 of its 1979 TOPS = 1589.0 TOPS; fp32 (vector) keeps its peak
    peaks = {"bf16": 989.5e12, "fp8": 1979e12, "int8": 1979e12, "fp32": 67e12}
    got = achievable(peaks, {"bf16": 794.5e12, "fp8": 1402.6e12})
    assert got["bf16"] == 794.5e12 and got["fp8"] == 1402.6e12 and got["fp32"] == 67e12
    assert got["int8"] == pytest.approx(1979e12 * 794.5 / 989.5)
    # MI300X: bf16 668.4 of 1307.4 measured, no fp8 row: fp8 2614.9 x 668.4 / 1307.4 = 1336.85 TFLOPS
    mi = achievable({"bf16": 1307.4e12, "fp8": 2614.9e12}, {"bf16": 668.4e12})
    assert mi["fp8"] == pytest.approx(1336.85e12, rel=1e-5)
    # a device measured in nothing: the table's median efficiency, (77.6% + 78.6%) / 2
    assert UNMEASURED_MATMUL_FRACTION == pytest.approx((0.776 + 0.786) / 2)
    assert achievable({"bf16": 100.0}, {})["bf16"] == pytest.approx(78.1)


def test_the_database_figures_are_the_tables():
    h100, mi300x = DB.get("h100-sxm5-80gb"), DB.get("mi300x")
    assert h100.achievable_matmul_flop_per_s["bf16"].value == 794.5e12  # row 'NVIDIA H100 SXM', BF16
    assert h100.achievable_matmul_flop_per_s["fp8"].value == 1402.6e12  # row 'NVIDIA H100 SXM', FP8
    assert mi300x.achievable_matmul_flop_per_s["bf16"].value == 668.4e12  # row 'AMD MI300X', BF16
    assert "fp8" not in mi300x.achievable_matmul_flop_per_s  # its FP8 row is empty


def test_engines_that_ask_for_it_run_at_the_achievable_rate_and_the_bound_does_not():
    def sc(engine):
        return resolve(Query(model="mixtral-8x7b", hardware="h100-sxm5-80gb", devices=1, engine=engine, batch=1,
                             input_len=512, output_len=64, check_memory=False), DB)
    vllm, ideal = sc("vllm"), sc("roofline")
    assert vllm.profile.achievable_matmul and not ideal.profile.achievable_matmul
    assert vllm.peaks.matmul == ideal.peaks.matmul == 989.5e12  # S-MFU is against the datasheet peak
    assert vllm.peaks.run_at(True).matmul == 794.5e12
    assert ideal.peaks.run_at(ideal.profile.achievable_matmul).matmul == 989.5e12


def test_a_rate_above_the_peak_or_for_a_dtype_without_one_is_refused():
    raw = DB.get("mi300x").model_dump()
    for dt, value in (("bf16", 2e15), ("fp4", 1e12)):
        bad = dict(raw, achievable_matmul_flop_per_s={dt: {"value": value, "as_published": f"{value / 1e12:g} TFLOPS",
                                                           "source": "stas00-mamf", "kind": "measured",
                                                           "command": "mamf-finder.py"}})
        with pytest.raises(ValidationError, match="achievable_matmul_flop_per_s"):
            Accelerator.model_validate(bad)
