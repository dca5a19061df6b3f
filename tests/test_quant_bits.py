"""Real bits per weight from a checkpoint's quantization_config (issue 24): the quantised values plus the scales and
zero points its format stores, each derived in a comment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsim.model.catalogue import native_bits_per_weight
from capsim.model.quant import bits_per_weight

CONFIGS = Path(__file__).parents[1] / "capsim" / "catalogue" / "configs"


@pytest.mark.parametrize("q, bits", [
    # DeepSeek-V3: fp8 E4M3 with a float32 scale per 128 x 128 block: 8 + 32 / 16,384
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, 8 + 32 / 16384),
    # per-tensor fp8: one scale per matrix, negligible
    ({"quant_method": "fp8"}, 8.0),
    # AWQ 4 bits, group 128: an fp16 scale and a 4-bit zero point per 128 weights: 4 + 20 / 128 = 4.15625
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}, 4.15625),
    # AWQ without zero points, group 64: 4 + 16 / 64 = 4.25
    ({"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": False}, 4.25),
    # GPTQ 4 bits, group 32: 4 + 20 / 32 = 4.625; per-row groups (-1): 4
    ({"quant_method": "gptq", "bits": 4, "group_size": 32}, 4.625),
    ({"quant_method": "gptq", "bits": 4, "group_size": -1}, 4.0),
    # gpt-oss mxfp4: an E8M0 scale per 32 E2M1 values: 4 + 8 / 32 = 4.25
    ({"quant_method": "mxfp4"}, 4.25),
    # compressed-tensors W4A16 symmetric, group 128: a 16-bit scale per 128: 4 + 16 / 128 = 4.125
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True}}}}, 4.125),
    # the same asymmetric: + a 4-bit zero point per group: 4 + 20 / 128
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": False}}}}, 4.15625),
    # compressed-tensors NVFP4: an E4M3 scale per 16: 4 + 8 / 16 = 4.5
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}}}}, 4.5),
    # per-channel int8: b
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 8, "type": "int", "strategy": "channel"}}}}, 8.0),
])
def test_bits_per_weight(q, bits):
    assert bits_per_weight(q) == pytest.approx(bits, rel=1e-12)


def test_the_catalogue_checkpoints_carry_their_real_bits():
    deepseek = json.loads((CONFIGS / "deepseek-ai__DeepSeek-V3.json").read_text())
    assert native_bits_per_weight(deepseek) == pytest.approx(8 + 32 / 128**2)  # weight_block_size [128, 128]
    gpt_oss = json.loads((CONFIGS / "openai__gpt-oss-120b.json").read_text())
    assert native_bits_per_weight(gpt_oss) == 4.25
    mixtral = json.loads((CONFIGS / "mistralai__Mixtral-8x7B-v0.1.json").read_text())
    assert native_bits_per_weight(mixtral) is None  # bf16: no quantization_config


def test_predict_stores_the_native_checkpoint_at_its_real_bits():
    from capsim.hardware.db import load
    from capsim.predict import Query, predict

    db = load()
    native = predict(Query(model="deepseek-v3", hardware="h200-sxm-141gb", devices=8), db)
    asked = predict(Query(model="deepseek-v3", hardware="h200-sxm-141gb", devices=8, precision="fp8"), db)
    # DeepSeek-V3's checkpoint is fp8 with 128 x 128 block scales, whether asked for by name or not
    assert native["scenario"]["bits_per_weight"] == asked["scenario"]["bits_per_weight"] == pytest.approx(8 + 32 / 16384)
    # a bf16 checkpoint quantised to fp8 is the named format: 8 bits
    other = predict(Query(model="qwen3-30b", hardware="h100-sxm5-80gb", precision="fp8"), db)
    assert other["scenario"]["bits_per_weight"] == 8
