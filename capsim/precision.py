"""Weight and KV-cache formats: their real storage cost and the dtype an engine computes in.

A format's ``bits_per_weight`` includes its block scales (and zero points), so
"int4" is not 4 bits and never 0 bytes. Formats apply to the linear layers in
their ``scope``; embedding, LM head, router and norm weights stay in the
16-bit activation dtype (vLLM and NVIDIA ModelOpt leave them unquantised),
except where a format says otherwise (GGUF Q4_K_M stores the output matrix in Q6_K).

``compute`` lists the dtypes whose dense peak the engine runs the matmuls at, in
order of preference: the first one the device publishes a peak for is used
(fp8 weights on an A100 run weight-only at bf16, as vLLM's Marlin kernels do).
A format whose list the device cannot meet is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from capsim.errors import CapsimError

ACTIVATION_BYTES = 2.0  # activations between ops are bf16/fp16 in GPU engines (2 bytes); fp32 runs use 4
SIXTEEN_BIT = 16.0

# GGUF block layouts, ggml/src/ggml-common.h (github.com/ggml-org/llama.cpp):
GGUF_Q8_0_BPW = 34 * 8 / 32  # block_q8_0: fp16 scale + 32 x int8 = 34 bytes per 32 weights = 8.5
GGUF_Q4_0_BPW = 18 * 8 / 32  # block_q4_0: fp16 scale + 32 x 4 bit = 18 bytes per 32 weights = 4.5
GGUF_Q6_K_BPW = 210 * 8 / 256  # block_q6_K: 210 bytes per 256 weights = 6.5625
GGUF_IQ4_XS_BPW = 136 * 8 / 256  # block_iq4_xs: fp16 d + u16 scales_h + 4 scales_l + 128 qs = 136 B / 256 = 4.25
# Mixes (per-tensor types differ), tools/quantize/README.md, table "Llama 2 7B", bits per weight:
GGUF_Q4_K_M_BPW = 4.84
GGUF_Q3_K_S_BPW = 3.50
# int4 with group scales (AWQ / GPTQ, group size 128): fp16 scale + packed 4-bit zero point per group.
INT4_GROUP_SIZE = 128
INT4_G128_BPW = 4 + (16 + 4) / INT4_GROUP_SIZE  # 4.15625
# A GGUF type quantises blocks of QK weights along a row (K, the input features): QK 32 for Q8_0/Q4_0/Q5_0/IQ4_NL,
# QK_K 256 for the k-quants and IQ4_XS (ggml-common.h). llama-quantize stores a tensor whose row length is not a
# multiple of the block in a fallback type (src/llama-quant.cpp, tensor_type_fallback): Q4_K -> Q5_0, IQ4_XS ->
# IQ4_NL, and F16 when even that block does not divide the row (a 32-block type goes to F16 directly). The same
# file's llama_tensor_get_type keeps output.weight in Q8_0 for a Q8_0 file (Q6_K for the others) and quantises
# token_embd.weight to the file's base type.
GGUF_QK = 32
GGUF_QK_K = 256
GGUF_Q5_0_BPW = 22 * 8 / 32  # block_q5_0: fp16 scale + 4 bytes of high bits + 16 bytes of nibbles = 22 B / 32 = 5.5
GGUF_Q4_K_BPW = 144 * 8 / 256  # block_q4_K: 2 fp16 + 12 bytes of scales + 128 of nibbles = 144 B / 256 = 4.5
GGUF_Q3_K_BPW = 110 * 8 / 256  # block_q3_K: 32 + 64 + 12 bytes + fp16 d = 110 B / 256 = 3.4375
GGUF_IQ4_NL_BPW = 18 * 8 / 32  # block_iq4_nl: fp16 scale + 16 bytes of nibbles = 18 B / 32 = 4.5
F16_FALLBACK = ((1, SIXTEEN_BIT),)
# NVFP4: E2M1 values, one FP8 E4M3 scale per 16 values (NVIDIA, "Introducing NVFP4", 2025) = 4.5
NVFP4_BPW = 4 + 8 / 16
# MXFP4: E2M1 values, one E8M0 scale per 32 values (OCP Microscaling Formats spec v1.0, 2023) = 4.25
MXFP4_BPW = 4 + 8 / 32


@dataclass(frozen=True)
class Precision:
    name: str
    bits_per_weight: float  # storage of the quantised linear weights, scales included
    compute: tuple[str, ...]  # dtypes the engine can run the matmuls in, preferred first
    scope: str = "all-linear"  # "all-linear" or "experts" (gpt-oss ships MXFP4 experts, bf16 attention)
    lm_head_bits: float = SIXTEEN_BIT
    source: str = ""
    activation_bytes: float = ACTIVATION_BYTES  # activations, and unquantised weights (norms, router, embedding)
    embedding_bits: float = 0.0  # the token-embedding table's storage (0: the activation dtype's)
    block: int = 1  # weights quantised per block of this many along a row (GGUF); 1: any row length
    fallback: tuple[tuple[int, float], ...] = ()  # (block, bits per weight) tried in turn when block does not divide

    def bits_for_row(self, k: int) -> float:
        """Stored bits per weight of a matrix with rows of ``k`` weights: the format's, else its first fallback
        whose block divides ``k`` (16-bit at the end of every GGUF chain)."""
        for block, bits in ((self.block, self.bits_per_weight), *self.fallback):
            if k % block == 0:
                return bits
        return SIXTEEN_BIT

    @property
    def bytes_per_weight(self) -> float:
        return self.bits_per_weight / 8.0


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", 32, ("fp32",), lm_head_bits=32, activation_bytes=4.0, source="IEEE 754 binary32"),
        Precision("bf16", 16, ("bf16", "fp32"), source="IEEE-style 16-bit brain float"),
        Precision("fp16", 16, ("fp16", "fp32"), source="IEEE 754 binary16"),
        Precision("fp8", 8, ("fp8", "bf16", "fp16"), source="E4M3 (OCP 8-bit FP spec); per-tensor/block scales negligible"),
        Precision("int8", 8, ("int8", "bf16", "fp16"), source="per-channel int8 (SmoothQuant W8A8 or W8A16)"),
        Precision("int4", INT4_G128_BPW, ("fp16", "bf16", "fp32"), source="AWQ/GPTQ packing, group 128"),
        Precision("gguf-q8_0", GGUF_Q8_0_BPW, ("int8", "fp16", "fp32"), source="ggml-common.h block_q8_0",
                  lm_head_bits=GGUF_Q8_0_BPW, embedding_bits=GGUF_Q8_0_BPW, block=GGUF_QK, fallback=F16_FALLBACK),
        Precision("gguf-q4_0", GGUF_Q4_0_BPW, ("int8", "fp16", "fp32"), source="ggml-common.h block_q4_0",
                  lm_head_bits=GGUF_Q6_K_BPW, embedding_bits=GGUF_Q4_0_BPW, block=GGUF_QK, fallback=F16_FALLBACK),
        Precision(
            "gguf-q4_k_m", GGUF_Q4_K_M_BPW, ("int8", "fp16", "fp32"), lm_head_bits=GGUF_Q6_K_BPW,
            source="llama.cpp tools/quantize/README.md (Llama 2 7B: 4.84 bpw); output.weight in Q6_K",
            embedding_bits=GGUF_Q4_K_BPW, block=GGUF_QK_K, fallback=((GGUF_QK, GGUF_Q5_0_BPW), *F16_FALLBACK),
        ),
        Precision(
            "gguf-q3_k_s", GGUF_Q3_K_S_BPW, ("int8", "fp16", "fp32"), lm_head_bits=GGUF_Q6_K_BPW,
            source="llama.cpp tools/quantize/README.md (Llama 2 7B: 3.50 bpw); output.weight in Q6_K",
            embedding_bits=GGUF_Q3_K_BPW, block=GGUF_QK_K,
            fallback=((GGUF_QK, GGUF_Q4_0_BPW), *F16_FALLBACK),  # Q3_K -> Q4_0
        ),
        Precision(
            "gguf-iq4_xs", GGUF_IQ4_XS_BPW, ("int8", "fp16", "fp32"), lm_head_bits=GGUF_Q6_K_BPW,
            source="ggml-common.h block_iq4_xs (136 bytes per 256 weights); output.weight in Q6_K",
            embedding_bits=GGUF_IQ4_XS_BPW, block=GGUF_QK_K, fallback=((GGUF_QK, GGUF_IQ4_NL_BPW), *F16_FALLBACK),
        ),
        Precision("nvfp4", NVFP4_BPW, ("fp4",), source="NVIDIA NVFP4: E2M1 + E4M3 scale per 16"),
        Precision("mxfp4", MXFP4_BPW, ("fp4", "bf16"), scope="experts", source="OCP MX v1.0: E2M1 + E8M0 per 32"),
    )
}
ALIASES = {"q8_0": "gguf-q8_0", "q4_0": "gguf-q4_0", "q4_k_m": "gguf-q4_k_m", "q3_k_s": "gguf-q3_k_s",
           "iq4_xs": "gguf-iq4_xs",
           "awq": "int4", "gptq": "int4", "w4a16": "int4", "fp4": "nvfp4"}
KV_PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "int8")  # KV-cache element formats engines offer (bytes: dtypes.py)


def get(name: str, flag: str = "--precision") -> Precision:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    for cand in (key, key.replace("_", "-", 1) if key.startswith("gguf_") else key):
        if cand in PRECISIONS:
            return PRECISIONS[cand]
    raise CapsimError(f"{flag} {name!r}: unknown precision (expected one of {', '.join(PRECISIONS)})")


def kv_bytes(name: str) -> float:
    key = name.strip().lower()
    if key not in KV_PRECISIONS:
        raise CapsimError(f"--kv-precision {name!r}: expected one of {', '.join(KV_PRECISIONS)}")
    return {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0}[key]


def choose_compute(prec: Precision, peaks: dict[str, float], device: str, explicit: str | None = None) -> str:
    """The dtype whose dense peak the matmuls run at on ``device`` (CapsimError if none)."""
    have = ", ".join(sorted(peaks)) or "none"
    if explicit:
        if explicit not in peaks:
            raise CapsimError(
                f"--compute-dtype {explicit}: {device} publishes no {explicit} peak (it has: {have})"
            )
        return explicit
    for dt in prec.compute:
        if dt in peaks:
            return dt
    raise CapsimError(
        f"--precision {prec.name}: {device} cannot compute in it (needs one of {', '.join(prec.compute)}; "
        f"{device} has: {have})"
    )
