"""GGUF storage as llama-quantize writes it: block formats, their fallback for rows the block does not divide, the
output and embedding tensors (capsim.precision, capsim.sim.shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsim import precision
from capsim.model.spec import spec_from_config
from capsim.sim.shape import shape_of, weight_bytes

RUNS = Path(__file__).resolve().parents[1] / "validation/measured/llama.cpp"


def _shape(name: str, prec: str):
    run = json.loads((RUNS / f"{name}.json").read_text())
    return shape_of(spec_from_config(run["config"], name), precision.get(prec)), run


def test_bits_for_row_follow_llama_quantize_fallbacks():
    q8, q4k = precision.get("q8_0"), precision.get("q4_k_m")
    assert q8.bits_for_row(1024) == 8.5  # 1024 % 32 == 0: Q8_0 (34 bytes per 32)
    assert q8.bits_for_row(336) == 16.0  # 336 % 32 == 16: F16 (a 32-block type has no smaller block)
    assert q4k.bits_for_row(1024) == 4.84  # 1024 % 256 == 0: the Q4_K_M mix
    assert q4k.bits_for_row(1408) == 5.5  # 1408 % 256 == 128, 1408 % 32 == 0: Q5_0 (22 bytes per 32)
    assert q4k.bits_for_row(336) == 16.0  # neither divides: F16
    assert precision.get("bf16").bits_for_row(336) == 16.0  # not a block format


def test_qwen3_like_down_projection_falls_back_to_f16():
    # qwen3-moe-like: hidden 1024, expert intermediate 336. gate_up (K = 1024) stays Q8_0 (8.5 bits); down
    # (K = 336) is F16. Bytes per expert weight: (2 x 1024 x 336 x 8.5 + 336 x 1024 x 16) / (3 x 1024 x 336) / 8
    # = (17 + 16) / 24 = 1.375; the F16 share of the experts' weights (and FLOPs): 1/3.
    s, _ = _shape("qwen3-moe-like", "gguf-q8_0")
    assert s.expert_weight_bytes == pytest.approx(33 / 24)
    assert s.sixteen_share_of("routed_experts") == pytest.approx(1 / 3)
    assert s.sixteen_share_of("attn_proj") == 0.0


@pytest.mark.parametrize("name", ["qwen3-moe-like", "olmoe-like", "deepseek-like"])
@pytest.mark.parametrize("quant, prec", [("Q8_0", "gguf-q8_0"), ("Q4_K_M", "gguf-q4_k_m")])
def test_stored_bytes_match_the_gguf_files_the_campaign_wrote(name, quant, prec):
    # Measured: the size of each GGUF file llama-quantize wrote (run file quants.<q>.file_bytes; the file adds a
    # few hundred kB of metadata and tokenizer). Q8_0 is exact per block; Q4_K_M's 4.84 bits is the mix's average
    # on Llama 2 7B (tools/quantize/README.md), so its files differ by up to 2.3% (qwen3-moe-like).
    s, run = _shape(name, prec)
    ratio = sum(weight_bytes(s).values()) / run["quants"][quant]["file_bytes"]
    assert ratio == pytest.approx(1.0, abs=0.005 if quant == "Q8_0" else 0.025)
