"""The dense peak FLOP/s a scenario's operators run at, per operator class."""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_DTYPES = ("bf16", "fp16", "fp32")  # attention runs in a 16-bit dtype (fp32 where that is all there is)


@dataclass(frozen=True)
class Peaks:
    """Dense peak FLOP/s per operator class: matmuls in the compute dtype, attention in a 16-bit dtype (the
    compute dtype when it is one, ATTENTION_DTYPES), vector work (norms) in fp32; ``sixteen``: matmuls on
    weights a block format left in 16 bit (GGUF fallback tensors), in fp16 (0: at the matmul peak)."""

    matmul: float
    attention: float
    vector: float
    sixteen: float = 0.0

    def __getitem__(self, compute: str) -> float:
        return getattr(self, compute)

    @classmethod
    def of(cls, peak_flop_per_s: dict[str, float], compute: str, attention: str = "") -> Peaks:
        """``attention``: the dtype an engine's attention kernel multiplies in (its CPU kernels), when given."""
        p = peak_flop_per_s
        attn = attention if attention in p else compute if compute in ATTENTION_DTYPES else next(
            (d for d in ATTENTION_DTYPES if d in p), compute)
        return cls(p[compute], p[attn], p.get("fp32", p[compute]), p.get("fp16", p.get("bf16", p[compute])))
