"""The real bits per weight of a checkpoint's ``quantization_config``: the quantised values plus the scales (and
zero points) its format stores per group or block. The format's name comes from
:func:`capsim.model.catalogue.native_precision`; this says how many bits it really costs.

- fp8 with ``weight_block_size`` [bn, bk] (DeepSeek-V3's checkpoints; vLLM ``Fp8LinearMethod`` block
  quantisation): one float32 ``weight_scale_inv`` per bn x bk block: 8 + 32 / (bn x bk). Without blocks
  (per-tensor scale): 8.
- AWQ / GPTQ with ``bits`` b and ``group_size`` g (AutoAWQ / AutoGPTQ packing): per group and output column an
  fp16 scale and a b-bit packed zero point: b + (16 + b) / g; AWQ with ``zero_point`` false: b + 16 / g;
  g = -1 (one group per row) leaves b (the per-row scale is negligible). GPTQ's ``desc_act`` g_idx (one int32 per
  input row) is left out (under 0.01 bit per weight for rows of 4,096 outputs).
- compressed-tensors ``config_groups.*.weights`` {num_bits b, type, strategy, group_size g, symmetric}: group
  strategies store a 16-bit scale per g weights (b + 16 / g) and, when not symmetric, a zero point of b bits
  (+ b / g); NVFP4 (float, 4 bits, group 16) an E4M3 scale per 16: 4 + 8 / 16; channel / tensor strategies: b.
- mxfp4 (OCP Microscaling Formats v1.0): an E8M0 scale per 32 E2M1 values: 4 + 8 / 32.
"""

from __future__ import annotations

from typing import Any

FP8_BITS = 8
FP32_SCALE_BITS = 32  # DeepSeek-V3 weight_scale_inv: float32
HALF_SCALE_BITS = 16  # AWQ / GPTQ / compressed-tensors group scales: fp16 / bf16
E4M3_SCALE_BITS = 8  # NVFP4's per-16 block scale
E8M0_SCALE_BITS = 8  # MX formats' shared scale
MX_BLOCK = 32


def _group(bits: float, group: Any, per_group_bits: float) -> float:
    if not isinstance(group, int) or isinstance(group, bool) or group <= 0:
        return float(bits)  # one group per row (-1) or none: negligible
    return bits + per_group_bits / group


def bits_per_weight(q: dict[str, Any]) -> float | None:
    """Bits per quantised weight of ``q``, scales included (None: a format this does not size)."""
    method = str(q.get("quant_method", ""))
    if method in ("fp8", "fbgemm_fp8"):
        block = q.get("weight_block_size")
        if isinstance(block, list) and len(block) == 2 and all(isinstance(x, int) and x > 0 for x in block):
            return FP8_BITS + FP32_SCALE_BITS / (block[0] * block[1])
        return float(FP8_BITS)
    if method == "mxfp4":
        return 4 + E8M0_SCALE_BITS / MX_BLOCK
    if method in ("awq", "gptq"):
        b = int(q["bits"])
        zero = b if (method == "gptq" or q.get("zero_point", True)) else 0
        return _group(b, q.get("group_size", 128), HALF_SCALE_BITS + zero)
    if method == "compressed-tensors":
        out = []
        for g in (q.get("config_groups") or {}).values():
            w = (g or {}).get("weights") or {}
            b = w.get("num_bits")
            if not isinstance(b, int):
                continue
            if w.get("type") == "float" and b == 4:  # NVFP4
                out.append(_group(b, w.get("group_size", 16), E4M3_SCALE_BITS))
            elif w.get("strategy") in ("group", "tensor_group"):
                out.append(_group(b, w.get("group_size"), HALF_SCALE_BITS + (0 if w.get("symmetric", True) else b)))
            else:
                out.append(float(b))
        return max(out) if out else None
    return None
