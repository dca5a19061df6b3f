"""Published serving-benchmark runs of MoE models under load (validation/published/serving/), predicted by
``capsim serve`` (``capsim validate --serving``).

Each row of ``vllm.csv`` is one ``vllm bench serve`` / ``benchmark_serving.py`` result block copied verbatim
(URL and place in its ``source`` column; every statistic as printed, in ms): vLLM on GPUs, the random dataset at
stated lengths or ShareGPT, every request released at once (``--request-rate`` inf), with or without
``--max-concurrency``.
Held out by source (a source is one published page: a gpustack performance-lab page is one model on one GPU
type; its blocks at other commits are the same page): each page's runs are predicted by the ``vllm`` profile
fitted (``capsim validate --gpu --fit``'s five parameters and method) to the static rows of
validation/published/gpu/ that come from other pages, its front end's intake (capsim.engines.frontend) fitted to
the other pages' bursts with that engine (capsim.validation.serving_frontend). Several static rows are single
statistics of these same runs (GV010 is G032's output throughput), so the shipped profile, fitted to every static
row, is not held out for them; the report gives its error beside the held-out one.

How a row becomes a ``capsim serve`` run (every choice the sources leave open, written down):

- model: the checkpoint's catalogue entry (DeepSeek-R1 has DeepSeek-V3's architecture); precision: the
  checkpoint's native format (DeepSeek-R1 block FP8, gpt-oss MXFP4 experts, Qwen3-235B bf16 or its -FP8 release);
- hardware: ``gpus`` of the named device (a100-sxm4-80gb, h100-sxm5-80gb, h200-sxm-141gb, mi300x) joined by its own
  NVLink / Infinity Fabric, tensor-parallel over all of them (the serve commands' -tp; 1 without it), or with
  ``-dp N`` / ``--data-parallel-size N`` N attention data-parallel groups of gpus / N (``capsim serve --dp``);
- scheduler: vLLM's server defaults for the device (the profile's ``scheduler`` tiers), or the serve command's
  ``--max-num-seqs`` / ``--max-num-batched-tokens``; other flags (``--max-model-len``, ``--block-size``, compilation
  settings) are not modelled;
- lengths: the random dataset: every request at the run's MEAN lengths (total input tokens / requests; total
  generated tokens / requests): its prompts are fixed-length, but runs without ``--ignore-eos`` stop some outputs
  early, and the block prints only totals; ShareGPT: drawn from capsim's ShareGPT table (``--dataset sharegpt``,
  Llama-3 token counts; the served models' tokenizers count the same prompts within about 1%: 215,312 input tokens
  for gpt-oss's 1,000 prompts against 215,196 for Llama 3.1), outputs at the dataset's lengths (the served
  model may stop earlier);
- expert parallelism: ``--enable-expert-parallel`` puts the experts over all the GPUs (ep = gpus);
- routing: the catalogue's real routing (as ``capsim predict``).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError
from capsim.validation import corpus, gpu
from capsim.validation import serving_frontend as frontend_fit
from capsim.validation.serving_stats import error, get, summary, summary_lines

FOLDER = "published/serving"
ENGINE = "vllm"
MODELS = {  # the checkpoint the serve command loads -> (catalogue id, precision)
    "deepseek-ai/DeepSeek-R1-0528": ("deepseek-v3", "fp8"), "deepseek-ai/DeepSeek-R1": ("deepseek-v3", "fp8"),
    "openai/gpt-oss-120b": ("gpt-oss-120b", "mxfp4"), "openai/gpt-oss-20b": ("gpt-oss-20b", "mxfp4"),
    "Qwen/Qwen3-235B-A22B-Instruct-2507": ("qwen3-235b-a22b", "bf16"),
    "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8": ("qwen3-235b-a22b", "fp8"),
    "zai-org/GLM-4.5-Air": ("glm-4.5-air", "bf16"), "zai-org/GLM-4.6": ("glm-4.6", "bf16"),
    "zai-org/GLM-4.6-FP8": ("glm-4.6", "fp8"),
    # DeepSeek-V3.2 keeps V3.2-Exp's architecture (DeepseekV32Config: 61 layers, MLA 512 / 64, 256 experts top-8,
    # the indexer's 64 heads x 128 keeping the top 2048 keys; NVIDIA NeMo AutoModel's deepseek_v32 config, whose
    # defaults are the checkpoint's)
    "deepseek-ai/DeepSeek-V3.2": ("deepseek-v3.2-exp", "fp8"),
}
DEVICES = {"/a100.md": "a100-sxm4-80gb", "/h100.md": "h100-sxm5-80gb", "/h200.md": "h200-sxm-141gb",
           "AMD_GPU": "mi300x"}
# statistic -> (CSV column and its unit to SI, capsim serve's key path)
STATS = {
    "ttft_mean": ("mean_ttft_ms", 1e-3, ("ttft_s", "mean")), "ttft_p99": ("p99_ttft_ms", 1e-3, ("ttft_s", "p99")),
    "tpot_mean": ("mean_tpot_ms", 1e-3, ("tpot_s", "mean")), "tpot_p99": ("p99_tpot_ms", 1e-3, ("tpot_s", "p99")),
    "itl_mean": ("mean_itl_ms", 1e-3, ("itl_s", "mean")), "itl_p99": ("p99_itl_ms", 1e-3, ("itl_s", "p99")),
    "e2e_mean": ("mean_e2el_ms", 1e-3, ("e2e_s", "mean")),
    "output_tokens_per_s": ("output_tokens_per_s", 1.0, ("output_tokens_per_s",)),
}
TARGETS = {"mean": 0.25, "p99": 0.35}  # issue 23's targets for the published corpus


def load_rows(root: Path) -> list[dict[str, str]]:
    path = root / FOLDER / "vllm.csv"
    try:
        with open(path, encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError as err:
        raise CapsimError(f"{path}: cannot read the serving corpus ({err.strerror or err})") from None


def scenario_of(row: dict[str, str]) -> dict[str, Any]:
    """The ``capsim serve`` arguments a row stands for (the rules in the module docstring)."""
    m = re.search(r"vllm serve (\S+)", row["serve_command"])
    if m is None or m.group(1) not in MODELS:
        raise CapsimError(f"{FOLDER}/vllm.csv: row {row['id']}: serve_command: no checkpoint capsim maps "
                          f"(expected one of {', '.join(MODELS)})")
    model, prec = MODELS[m.group(1)]
    device = next((d for k, d in DEVICES.items() if k in row["source"]), None)
    if device is None:
        raise CapsimError(f"{FOLDER}/vllm.csv: row {row['id']}: no device found in its source")
    cmd = row["serve_command"]

    def flag(name: str) -> int | None:
        m = re.search(rf"--{name}[ =](\d+)", cmd)
        return int(m.group(1)) if m else None

    n, gpus = int(row["successful"]), int(row["gpus"])
    dp = re.search(r"(?:\s-dp|--data-parallel-size)[ =](\d+)", cmd)
    return {"model": model, "precision": prec, "hardware": device, "devices": gpus,
            "dp": int(dp.group(1)) if dp else 1, "ep": gpus if "--enable-expert-parallel" in cmd else 1,
            "max_num_seqs": flag("max-num-seqs"), "max_batched_tokens": flag("max-num-batched-tokens"),
            "requests": n, "dataset": row["dataset"], "input_len": max(1, round(int(row["total_input_tokens"]) / n)),
            "output_len": max(1, round(int(row["total_generated_tokens"]) / n)),
            "concurrency": int(row["max_concurrency"]) if row["max_concurrency"] else None}


def page_key(url: str) -> str:
    """A published page whatever commit it was read at: ``owner/repo/path`` for a GitHub blob URL (its ref
    dropped), else the URL without query or fragment."""
    u = corpus.first_url(url)
    g = re.match(r"https?://github\.com/([^/]+/[^/]+)/blob/[^/]+/(.+)", u)
    return f"{g.group(1)}/{g.group(2)}" if g else u


def predict_row(row: dict[str, str], db, profile=None) -> dict[str, Any]:
    from capsim.predict import Query
    from capsim.scenario import resolve
    from capsim.serve import workload
    from capsim.serve.run import serve

    s = scenario_of(row)
    sharegpt = s["dataset"] == "sharegpt"
    w = workload.build(s["requests"], request_rate=math.inf, concurrency=s["concurrency"],
                       input_len=None if sharegpt else s["input_len"], output_len=None if sharegpt else s["output_len"],
                       dataset="sharegpt" if sharegpt else None)
    q = Query(model=s["model"], hardware=s["hardware"], devices=s["devices"], tp=s["devices"] // s["dp"], ep=s["ep"],
              dp=None if s["dp"] == 1 else s["dp"], engine=ENGINE,
              precision=s["precision"], batch=1, input_len=s["input_len"], output_len=s["output_len"],
              check_memory=False)
    return serve(resolve(q, db, profile), w, max_num_seqs=s["max_num_seqs"], max_batched_tokens=s["max_batched_tokens"])


def static_rows(root: Path) -> list:
    """The static published rows the ``vllm`` profile is fitted to (validation/published/gpu/)."""
    return [r for r in gpu.load_corpus(root) if r.scenario is not None and r.scenario.get("engine") == ENGINE]


def fold_profiles(root: Path, db, pages: list[str], progress=None) -> dict[str, Any]:
    """Page -> the ``vllm`` profile fitted to the static GPU rows of every other page (``capsim validate --gpu``'s
    parameters, loss and facts); pages that share no static row share one fit."""
    static = static_rows(root)
    fits: dict[frozenset, Any] = {}
    out = {}
    for k, page in enumerate(pages):
        train = frozenset(r.id for r in static if page_key(r.source) != page)
        if train not in fits:
            fits[train] = corpus.fit([r for r in static if r.id in train], db, gpu.SPEC, ENGINE)[0]
        out[page] = fits[train]
        if progress:
            progress(k + 1, len(pages))
    return out


def measured(row: dict[str, str]) -> dict[str, float | None]:
    return {name: float(row[col]) * unit if row.get(col) else None for name, (col, unit, _) in STATS.items()}


def fit_intake(rows: list[dict[str, str]], db, profile, skip_page: str | None = None) -> float:
    """The front end's ``intake_s_per_request`` fitted (capsim.validation.serving_frontend) to the bursts of
    every page but ``skip_page``, with ``profile``'s engine (its own front end left out)."""
    from dataclasses import replace

    engine_alone = replace(profile, frontend=None)
    return frontend_fit.fit([(int(row["successful"]), predict_row(row, db, engine_alone), measured(row))
                             for row in rows
                             if frontend_fit.is_burst(row) and page_key(row["source"]) != skip_page])


def run(root: Path, db, progress=None) -> dict[str, Any]:
    """Every run held out by page: the ``vllm`` engine fitted to the static rows of the other pages, and its front
    end's intake to the bursts of the other pages (with that engine)."""
    from dataclasses import replace

    from capsim.engines import load
    from capsim.engines.frontend import FrontEnd, intake_s

    rows = load_rows(root)
    pages = sorted({page_key(r["source"]) for r in rows})
    steps = 2 * len(pages) + 1

    def tick(k):
        if progress:
            progress(k, steps)
    profiles = fold_profiles(root, db, pages, lambda k, _: tick(k))
    intake: dict[str, float] = {}
    for k, page in enumerate(pages):
        intake[page] = fit_intake(rows, db, profiles[page], skip_page=page)
        profiles[page] = replace(profiles[page], frontend=FrontEnd(intake[page], f"bursts of pages other than {page}"))
        tick(len(pages) + k + 1)
    out = []
    for row in rows:
        meas = measured(row)
        pred = predict_row(row, db, profiles[page_key(row["source"])])
        shipped = predict_row(row, db)
        prd = {name: get(pred, path) for name, (_, _, path) in STATS.items()}
        errs = {name: error(meas[name], prd[name]) for name in STATS}
        errs_shipped = {name: error(meas[name], get(shipped, path)) for name, (_, _, path) in STATS.items()}
        out.append({"id": row["id"], "page": page_key(row["source"]), "scenario": scenario_of(row), "errors": errs,
                    "errors_shipped_profile": errs_shipped, "measured": meas, "predicted": prd,
                    "source": row["source"]})
    tick(steps)
    shipped_summary = summary([{"id": r["id"], "errors": r["errors_shipped_profile"]} for r in out], STATS)
    return {"runs": out, "summary": summary(out, STATS), "summary_shipped_profile": shipped_summary,
            "held_out_by": "page", "pages": pages, "engine": ENGINE,
            "shipped_intake_s_per_request": intake_s(load(ENGINE)),
            "fold_parameters": {p: {**{n: getattr(prof, n) for n in gpu.FIT_NAMES},
                                    "intake_s_per_request": intake[p]} for p, prof in profiles.items()}}


def fit_shipped(root: Path, db) -> tuple[float, Path]:
    """``capsim validate --serving --fit``: the shipped ``vllm`` profile's front-end intake fitted to every burst
    of the corpus with its engine, written to its YAML's ``frontend`` section."""
    from capsim.engines import FOLDER as PROFILES
    from capsim.engines import load

    rows = load_rows(root)
    a = fit_intake(rows, db, load(ENGINE))
    n = sum(1 for r in rows if frontend_fit.is_burst(r))
    frontend_fit.write(a, f"least squares on the log error of mean and p99 TTFT of the {n} runs of validation/"
                       f"{FOLDER}/vllm.csv that release every request at once, with this profile's engine (capsim "
                       "validate --serving --fit; held out by page in validation/SERVING.md)", PROFILES / f"{ENGINE}.yaml")
    return a, PROFILES / f"{ENGINE}.yaml"


def markdown(result: dict[str, Any], command: str) -> str:
    shipped = result.get("summary_shipped_profile", {})
    lines = ["# Published serving benchmarks under load, predicted by `capsim serve`", "",
             f"Written by `{command}`. Runs: validation/{FOLDER}/vllm.csv (each block verbatim from the URL in its "
             "`source` column; the mapping to capsim's scenario in capsim/validation/serving.py). Held out by page: "
             "each page's runs are predicted by the `vllm` profile fitted (the five parameters of `capsim validate "
             "--gpu --fit`) to the static rows of validation/published/gpu/ from every other page, with its front end's "
             "intake (capsim/engines/frontend.py: API-server CPU seconds per request, shared by the requests in intake) "
             "fitted to the other pages' bursts (runs that send every request at once) with that engine "
             "(capsim/validation/serving_frontend.py). Targets: means "
             f"within {TARGETS['mean']:.0%}, p99 within {TARGETS['p99']:.0%}.", "",
             *summary_lines(result["summary"])]
    if shipped:
        lines += ["", "The shipped `vllm` profile is fitted to every static row, some of which are statistics of these "
                  "same runs (GV010 is G032's output throughput), and its front end is fitted to every burst here "
                  f"({result['shipped_intake_s_per_request'] * 1e3:.3g} ms per request), so its error here is not "
                  "held out: " + "; ".join(f"{k} {v['median_abs']:.1%}" for k, v in shipped.items()) + "."]
        names = [*gpu.FIT_NAMES, "intake_s_per_request"]
        lines += ["", "Parameters per held-out page:", "", "| page | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for page, params in result["fold_parameters"].items():
            lines.append(f"| {page} | " + " | ".join(f"{params[n]:.4g}" for n in names) + " |")
    lines += ["", "| run | model | device x n | requests | lengths (mean) | TTFT mean meas / pred (s) | TPOT mean "
              "(ms) | output tok/s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        s, m, p = r["scenario"], r["measured"], r["predicted"]
        tpot = "-" if m["tpot_mean"] is None else f"{m['tpot_mean'] * 1e3:.3g} / {p['tpot_mean'] * 1e3:.3g}"
        lines.append(f"| {r['id']} | {s['model']} {s['precision']} | {s['hardware']} x{s['devices']} | {s['requests']}"
                     f"{'' if s['concurrency'] is None else ' (conc ' + str(s['concurrency']) + ')'} | "
                     f"{s['input_len']} / {s['output_len']} | {m['ttft_mean']:.3g} / {p['ttft_mean']:.3g} | {tpot} | "
                     f"{m['output_tokens_per_s']:.4g} / {p['output_tokens_per_s']:.4g} |")
    return "\n".join(lines) + "\n"
