"""The CPU and hybrid CPU-GPU engines per backend fitted to the published corpus, with leave-one-source-out
cross-validation (``capsim validate --cpu-corpus``).

Corpus: validation/published/cpu/*.csv with their scenarios, and the CPU and hybrid rows of
validation/published/published_measurements.csv (EXTRA_ROWS). One profile per backend: the kernel path is the
profile's ``cpu_kernels`` on the CPU's ISA (capsim.hardware.isa), the device through the hardware database; per
backend only the efficiencies (two parameters, FIT_NAMES) are fitted, shared across CPUs and GPUs, so a profile
fitted on one CPU carries to another through the database's peaks and bandwidths. MoE-Infinity's is its time
per expert fetched (expert_fetch_s). An engine whose rows come from one source is held out by model (then by
hardware setup, then by row: capsim.validation.corpus.HOLDOUT_KEYS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capsim.validation import corpus, corpus_report
from capsim.validation.published import PublishedRow

FOLDER = "published/cpu"
DEVICE = ("compute_efficiency", "memory_efficiency")  # the engine's kernels on the device it runs on
HOST = ("host_compute_efficiency", "host_memory_efficiency")  # on the CPU sockets beside a GPU
FIT_NAMES = {
    "llama.cpp": (*DEVICE, "sync_s_per_thread"), "ik-llama.cpp": (*DEVICE, "sync_s_per_thread"), "sglang-cpu": DEVICE,
    "llama.cpp-cuda": DEVICE, "llama.cpp-metal": DEVICE, "llama.cpp-rocm": DEVICE,
    "ktransformers": HOST, "ktransformers-amx": HOST,
    "moe-infinity": ("expert_fetch_s",),
    # MoE-Gen: its GPU's prefill GEMMs, the PCIe stream of experts and K/V, the CPU's share of the attention
    "moe-gen": ("compute_efficiency", "link_efficiency", "host_compute_efficiency"),
}
ENGINES = tuple(FIT_NAMES)
# the CPU side of a CPU-experts-beside-a-GPU run (-ot exps=CPU) is the same ggml CPU kernels
TIES = {e: {"host_compute_efficiency": "compute_efficiency", "host_memory_efficiency": "memory_efficiency"}
        for e in ("llama.cpp", "ik-llama.cpp", "llama.cpp-cuda")}
EXTRA_ROWS = (("published/published_measurements.csv", "published/scenarios.yaml",
               ("PM001", "PM002", "PM003", "PM004", "PM067", "PM068", "PM076", "PM077", "PM078", "PM081", "PM082",
                "PM091", "PM092")),)


def regime(row: PublishedRow) -> str:
    """prefill (prompt processing, TTFT) or decode (generation, TPOT)."""
    return "prefill" if ("prefill" in row.metric or "ttft" in row.metric) else "decode"


SPEC = corpus.Spec(
    title="CPU and hybrid engines per backend: fitted to the published corpus, cross-validated", folder=FOLDER,
    engines=ENGINES, fit_names=FIT_NAMES, command="capsim validate --cpu-corpus --fit", regime=regime,
    extra=EXTRA_ROWS, ties=TIES)


def run(root: Path, db, *, refit: bool, progress=None) -> dict[str, Any]:
    return corpus.run(root, db, SPEC, refit=refit, progress=progress)


def markdown(result: dict[str, Any], command: str) -> str:
    return corpus_report.markdown(result, SPEC, command, (
        "Rows: validation/published/cpu/*.csv and the CPU / hybrid rows of validation/published/"
        "published_measurements.csv (each verbatim from its source, URL in its `source` column; scenarios and "
        "assumptions in the *.scenarios.yaml beside them). One profile per backend; fitted per backend: the "
        "efficiencies of its kernels (host_* for the CPU side of KTransformers; MoE-Infinity: its time per expert "
        "fetched), shared across CPUs and GPUs: the ISA path and the device enter through the hardware database. "
        "Held-out error: each source's rows predicted by the profile fitted to the backend's other sources (by "
        "model, hardware setup or row where a backend has one source: the 'held out by' column)."))


def plot(result: dict[str, Any], path: Path) -> None:
    corpus_report.plot(result, SPEC, path, "CPU / hybrid engines, held out by source")
