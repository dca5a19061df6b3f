"""The vllm-cpu profile against vLLM's CPU build measured here: the cases are the campaign's points, counted by
hand, and the committed profile and report are the fit of exactly those cases (capsim validate --vllm-cpu)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from capsim import engines
from capsim.validation import vllm_cpu

REPO = Path(__file__).resolve().parents[1]


def test_cases_are_the_campaign_points():
    cases = vllm_cpu.load_cases(REPO / "validation")
    # decode: one per measured point: 14 + 14 + 14 + 13 (qwen3-moe-like skipped batch 64 x 512) = 55
    assert sum(c.phase == "decode" for c in cases) == 55
    # prefill: points whose batch x prompt fits one engine step (max_num_batched_tokens):
    # budget 4096: prompt 128 -> batch 1..32 (6 points), prompt 512 -> batch 1..8 (4): 10 per shape x 3 shapes;
    # deepseek-like (MLA, budget 2048): prompt 128 -> batch 1..16 (5), prompt 512 -> batch 1..4 (3): 8. Total 38
    assert sum(c.phase == "prefill" for c in cases) == 38
    # decode at the mean context of its 31 steps: prompt + 32 // 2
    assert {c.length for c in cases if c.phase == "decode"} == {144, 528}
    one = next(c for c in cases if c.id == "mixtral-like/decode/b1/128")  # ids name the prompt length
    assert one.measured_s == pytest.approx(0.0125, abs=5e-4)  # the README's decode step, 12.5 ms


def test_the_committed_fit_is_the_campaign_and_its_report():
    from capsim.hardware import db as hwdb
    from capsim.hardware.target import resolve_target
    from capsim.validation.cases import predict_case

    cases = vllm_cpu.load_cases(REPO / "validation")
    prof = engines.load(vllm_cpu.ENGINE)
    assert set(prof.fitted_cases) == {c.id for c in cases}, "refit with capsim validate --vllm-cpu --fit"
    target = resolve_target(hwdb.load(REPO / "validation" / vllm_cpu.HARDWARE_DB), vllm_cpu.HARDWARE)
    med = float(np.median([abs(predict_case(c, target, prof, vllm_cpu.DTYPE) / c.measured_s - 1) for c in cases]))
    report = (REPO / "validation" / "VLLM_CPU.md").read_text()
    stated = re.search(r"^\| all \| \d+ \| [0-9.]+% \| [+-][0-9]+% \| ([0-9.]+)% \|$", report, re.M)
    assert stated, "no 'all' row in validation/VLLM_CPU.md"
    assert med * 100 == pytest.approx(float(stated.group(1)), abs=0.05)

