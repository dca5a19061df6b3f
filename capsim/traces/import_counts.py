"""Importers of published routing counts into fitted routing model files (:mod:`capsim.traces.fitted`).

Offline tools, never on the prediction path. Two public sources are read, from a plain folder or a bare git
mirror (``git show HEAD:path``):

* allenai/OLMoE ``scripts/routing_output/{olmoe,mistral}/expert_counts/<domain>.pkl``, written by
  ``scripts/run_routing_analysis.py``: a list of three ``collections.Counter`` (expert id -> number of top-k
  selections) for MoE layers 0, 7 and 15, summed over one teacher-forced forward pass per 2048-token chunk
  of the domain's text (top-8 for OLMoE, top-2 for Mixtral, ranked by router logit). Corpus totals only, no
  per-sequence data.
* ajtejankar/mixtral-vis-moe ``frac_vecs/<MMLU subject>.npy``: float32 (questions, 32 layers, 8 experts),
  each row the shares of the question's top-2 selections (rows sum to 1). The generating script is not
  published; the shares are exact multiples of 1 / (2 n) (n: the question's tokens), so n is recovered from
  them (:func:`question_tokens`) and the shares turn back into exact selection counts.

``python -m capsim.traces.import_counts --olmoe DIR --mixtral-vis DIR --out traces/routing/fitted``.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from capsim.errors import CapsimError
from capsim.traces import fitted

OLMOE_ID = "allenai/OLMoE-1B-7B-0924"
MIXTRAL_ID = "mistralai/Mixtral-8x7B-v0.1"
SPECS = {"olmoe": (OLMOE_ID, 64, 8, 16), "mistral": (MIXTRAL_ID, 8, 2, 32)}  # id, E, top-k, MoE layers
OLMOE_LAYERS = (0, 7, 15)  # run_routing_analysis.py: pkl.dump([layer_counters[0], [7], [15]])
COUNTS_DIR = "scripts/routing_output/{model}/expert_counts"
SCRIPT = "scripts/run_routing_analysis.py"
FRAC_DIR = "frac_vecs"
MAX_QUESTION_TOKENS = 32768  # tokens; search bound for the denominator (the data's largest is 2048)
INTEGER_TOL = 1e-3  # selections; float32 shares times 2n land within ~1e-4 of an integer
BATCHES = (1, 8, 32, 128)  # decode batch sizes of the FITTED.md table
CONFIGS = Path(__file__).resolve().parents[1] / "catalogue" / "configs"


# ------------------------------------------------------------------------------------------------ readers
def _git(root: Path, *args: str) -> bytes | None:
    try:
        run = subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout if run.returncode == 0 else None


def read_bytes(root: str | Path, path: str) -> bytes | None:
    """A file of a folder or of a bare git mirror's HEAD; None when absent, unreadable or a git-LFS pointer."""
    root = Path(root)
    data = (root / path).read_bytes() if (root / path).is_file() else _git(root, "show", f"HEAD:{path}")
    if data is None or data.startswith(b"version https://git-lfs"):
        return None
    return data


def list_files(root: str | Path, folder: str, suffix: str) -> list[str]:
    """Paths (relative to root) of the files directly in ``folder`` ending in ``suffix``, sorted."""
    root = Path(root)
    if (root / folder).is_dir():
        return sorted(f"{folder}/{p.name}" for p in (root / folder).iterdir() if p.name.endswith(suffix))
    out = _git(root, "ls-tree", "--name-only", "HEAD", f"{folder}/")
    return sorted(p for p in (out or b"").decode().split("\n") if p.endswith(suffix))


def provenance(root: str | Path) -> dict[str, str | None]:
    """repository (owner/name from a mirror folder named owner+name), commit sha and licence of a source."""
    root = Path(root)
    name = root.parent.name if root.name == "repo" else root.name
    commit = _git(root, "rev-parse", "HEAD")
    lic = (read_bytes(root, "LICENSE") or b"").decode(errors="replace")
    licence = "Apache-2.0" if "Apache License" in lic and "Version 2.0" in lic else ("see LICENSE" if lic else None)
    return {"repository": name.replace("+", "/", 1) if "+" in name else name,
            "commit": commit.decode().strip() if commit else None, "licence": licence}


def _source(root: str | Path, title: str, path: str) -> dict[str, str | None]:
    prov = provenance(root)
    url = f"https://github.com/{prov['repository']}/tree/{prov['commit'] or 'HEAD'}/{path}"
    return {"title": title, "url": url, "repository": prov["repository"], "commit": prov["commit"], "path": path,
            "licence": prov["licence"]}


class _CountsUnpickler(pickle.Unpickler):
    """Only what the count pickles hold: Counters keyed by numpy integer scalars."""

    ALLOWED = {("collections", "Counter"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an expert-count pickle")
        return super().find_class(module, name)


def counter_matrix(data: bytes, experts: int, where: str) -> np.ndarray:
    """(layers, E) selection counts from a pickled list of Counters (expert id -> selections)."""
    try:
        counters = _CountsUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CapsimError(f"{where}: not a list of expert Counters ({err})") from None
    if not isinstance(counters, list) or not all(isinstance(c, Counter) for c in counters):
        raise CapsimError(f"{where}: expected a list of collections.Counter")
    out = np.zeros((len(counters), experts), dtype=np.int64)
    for i, c in enumerate(counters):
        for e, n in c.items():
            if not 0 <= int(e) < experts:
                raise CapsimError(f"{where}: layer entry {i}: expert id {e} outside 0..{experts - 1}")
            out[i, int(e)] = int(n)
    return out


def question_tokens(frac: np.ndarray, k: int, where: str = "frac_vecs") -> np.ndarray:
    """Tokens of each question (Q,) from its shares (Q, L, E): the least n with every share times k n an
    integer (shares are selections / (k n); a smaller n fits only if all L*E counts share a factor with n)."""
    frac = np.asarray(frac, dtype=np.float64)
    flat = frac.reshape(len(frac), -1)
    n = np.zeros(len(frac), dtype=np.int64)
    todo = np.arange(len(frac))
    for tokens in range(1, MAX_QUESTION_TOKENS + 1):
        if not len(todo):
            break
        first = flat[todo, : frac.shape[-1]] * (k * tokens)  # one layer first: cheap filter
        maybe = todo[np.all(np.abs(first - np.round(first)) < INTEGER_TOL, axis=1)]
        if len(maybe):
            full = flat[maybe] * (k * tokens)
            hit = maybe[np.all(np.abs(full - np.round(full)) < INTEGER_TOL, axis=1)]
            n[hit] = tokens
            todo = np.setdiff1d(todo, hit, assume_unique=True)
    if len(todo):
        raise CapsimError(f"{where}: question {int(todo[0])}: shares are not selections / ({k} n) for any "
                          f"n <= {MAX_QUESTION_TOKENS} tokens")
    return n


def _shares(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum(axis=-1, keepdims=True)


def _rounded(p: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in p]


# ---------------------------------------------------------------------------------------------- importers
def olmoe_counts(mirror_dir: str | Path, model: str = "olmoe") -> fitted.RoutingModel:
    """Popularity of layers 0, 7, 15 from the summed per-domain counts of allenai/OLMoE's routing analysis
    (``model``: "olmoe" or "mistral"); per-domain shares in meta["domains_used"]; c is null."""
    if model not in SPECS:
        raise CapsimError(f"model {model!r}: expected one of {sorted(SPECS)}")
    model_id, e, k, layers = SPECS[model]
    folder = COUNTS_DIR.format(model=model)
    domains, skipped = {}, []
    for path in list_files(mirror_dir, folder, ".pkl"):
        data = read_bytes(mirror_dir, path)
        if data is None:
            skipped.append(path)
            continue
        m = counter_matrix(data, e, path)
        if m.shape[0] != len(OLMOE_LAYERS):
            raise CapsimError(f"{path}: {m.shape[0]} layers, expected {len(OLMOE_LAYERS)} (layers 0, 7, 15)")
        sel = m.sum(axis=1)
        if np.any(sel != sel[0]) or sel[0] % k:
            raise CapsimError(f"{path}: layers count {sel.tolist()} selections, expected one multiple of {k}")
        domains[Path(path).stem] = m
    if not domains:
        raise CapsimError(f"{mirror_dir}: no readable {folder}/*.pkl")
    total = sum(domains.values())
    tokens = {d: int(m[0].sum()) // k for d, m in domains.items()}
    used = {d: {"tokens": tokens[d], "popularity": {str(layer): _rounded(p) for layer, p in
                                                    zip(OLMOE_LAYERS, _shares(m.astype(float)), strict=True)}}
            for d, m in domains.items()}
    domain_c = ({str(layer): round(fitted.fit_concentration(np.stack([m[i] for m in domains.values()])), 1)
                 for i, layer in enumerate(OLMOE_LAYERS)} if len(domains) > 1 else {})
    fit = {"data": None, "sequences": 0, "per_layer": {}, "median": None,
           "reason": "the source sums counts over each domain; no per-sequence counts",
           "domain_level_per_layer": domain_c,
           "domain_level_note": "fit_concentration over the domains' counts (each domain one 'sequence'): the "
                                "spread of domain means; per-sequence c is expected to be lower (sequences "
                                "also vary within a domain)"}
    meta = {"popularity_tokens": sum(tokens.values()), "domains_used": used, "sequence_concentration_fit": fit,
            "sources": [_source(mirror_dir, f"allenai/OLMoE routing analysis, {model} expert counts", folder),
                        _source(mirror_dir, "allenai/OLMoE routing analysis script", SCRIPT)],
            "caveats": _olmoe_caveats(model, k, sorted(domains), skipped)}
    pop = {layer: p for layer, p in zip(OLMOE_LAYERS, _shares(total.astype(float)), strict=True)}
    return fitted.RoutingModel(model_id, e, k, layers, "fitted", pop, None, meta)


def _olmoe_caveats(model: str, k: int, domains: list[str], skipped: list[str]) -> list[str]:
    checkpoint = ("OLMoE/OLMoE-1B-7B-0824 (the pre-release name of the final 5.1T-token checkpoint, "
                  "step1223842; assumed identical to allenai/OLMoE-1B-7B-0924)" if model == "olmoe"
                  else "mistralai/Mixtral-8x7B-v0.1")
    out = [f"Teacher-forced prefill only: one forward pass per 2048-token chunk of each domain's concatenated "
           f"text, no generated tokens; model {checkpoint}.",
           f"Top-{k} selections ranked by router logit (argsort of the logits), every selection counted once; "
           f"shares are of the {k} selections per token.",
           "Only MoE layers 0, 7 and 15 were saved (0-based); other layers take the nearest counted layer's "
           "sorted shares (fitted.layer_popularity).",
           f"Domains summed with equal weight per token: {', '.join(domains)} (text samples in "
           "scripts/routing_output/text/" + ("; 'tulu' is instruction data, not in the repository)." if "tulu" in
                                              domains else ")."),
           "Pretraining domains: 102 chunks x 2048 tokens = 208896 tokens each (loop 'if i > 100: break' of "
           "commit 2aecf25)" + ("; tulu: documents chunked to <= 2048 tokens, stopped past 204800 tokens."
                                 if "tulu" in domains else "."),
           "No per-sequence counts: sequence_concentration is null (the prior's value applies)."]
    if skipped:
        out.append(f"Skipped (absent, unreadable or git-LFS pointer): {', '.join(skipped)}.")
    return out


def mixtral_frac_vecs(mirror_dir: str | Path) -> fitted.RoutingModel:
    """Popularity of all 32 layers (token-weighted mean of the per-question shares, i.e. the pooled counts)
    and c (median over layers of fit_concentration on per-question selection counts) from mixtral-vis-moe."""
    model_id, e, k, layers = SPECS["mistral"]
    counts, subjects = [], {}
    for path in list_files(mirror_dir, FRAC_DIR, ".npy"):
        data = read_bytes(mirror_dir, path)
        if data is None:
            continue
        frac = np.load(io.BytesIO(data), allow_pickle=False)
        if frac.ndim != 3 or frac.shape[1:] != (layers, e) or not np.all(np.isfinite(frac)):
            raise CapsimError(f"{path}: shape {frac.shape}, expected (questions, {layers}, {e}) finite shares")
        n = question_tokens(frac, k, path)
        c = np.round(frac.astype(np.float64) * (k * n)[:, None, None]).astype(np.int64)
        counts.append(c)
        subjects[Path(path).stem] = {"questions": int(len(n)), "tokens": int(n.sum())}
    if not counts:
        raise CapsimError(f"{mirror_dir}: no readable {FRAC_DIR}/*.npy")
    allc = np.concatenate(counts)
    n = allc[:, 0].sum(axis=1) // k
    pop = {layer: allc[:, layer].sum(axis=0) / allc[:, layer].sum() for layer in range(layers)}
    per_layer = [fitted.fit_concentration(allc[:, layer]) for layer in range(layers)]
    bounds = np.cumsum([0] + [len(x) for x in counts])
    subj = np.stack([[x[:, layer].sum(axis=0) for layer in range(layers)] for x in counts])  # (S, L, E)
    within = [fitted.fit_concentration(allc[a:b, layer]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
              if b - a > 1 for layer in range(layers)]
    c = float(np.median(per_layer))
    fit = {"data": "per-question top-2 selection counts, MMLU (57 subjects), shares times 2 n",
           "sequences": int(len(n)), "tokens_per_sequence": {"min": int(n.min()), "median": float(np.median(n)),
                                                             "max": int(n.max())},
           "method": "fitted.fit_concentration per MoE layer; median over the 32 layers",
           "per_layer": {str(i): round(x, 1) for i, x in enumerate(per_layer)}, "median": round(c, 1),
           "subject_level_median": (round(float(np.median([fitted.fit_concentration(subj[:, i])
                                                           for i in range(layers)])), 1) if len(subj) > 1 else None),
           "within_subject_median": round(float(np.median(within)), 1) if within else None,
           "note": "within a subject the questions share the few-shot prefix, so their spread is below the "
                   "sampling noise (c at its cap); the fitted c measures the spread between subjects"}
    meta = {"popularity_tokens": int(n.sum()), "domains_used": {"mmlu_subjects": subjects},
            "sequence_concentration_fit": fit,
            "sources": [_source(mirror_dir, "ajtejankar/mixtral-vis-moe expert fraction vectors", FRAC_DIR)],
            "caveats": _vis_caveats(n)}
    return fitted.RoutingModel(model_id, e, k, layers, "fitted", pop, c, meta)


def _vis_caveats(n: np.ndarray) -> list[str]:
    return [
        "mixtral-vis-moe publishes no generating script: each row's shares are exact multiples of 1/(2 n) "
        f"(n integer, {n.min()}..{n.max()} tokens, median {int(np.median(n))}), read as the shares of the "
        "question's top-2 selections over its n prompt tokens; n is recovered as the least such n.",
        f"{len(n)} questions = the MMLU test set; n >= {n.min()} and capped at 2048 point to Hendrycks-style "
        "5-shot prompts (dev examples shared by all questions of a subject), teacher-forced, no generation.",
        "The shared few-shot prefix makes questions of one subject route alike: c measures variation between "
        "subjects' prompts, and independent sequences of the same length may be more concentrated (lower c).",
        "fit_concentration's noise term assumes independent selections; neighbouring tokens route alike, "
        "which inflates the spread and lowers c somewhat."]


def combine(first: fitted.RoutingModel, second: fitted.RoutingModel) -> fitted.RoutingModel:
    """One model of the same id from two sources: each layer's popularity from the source with more
    popularity tokens among those counting it; c from the source that has one (the first if both)."""
    if (first.model_id, first.num_experts, first.top_k) != (second.model_id, second.num_experts, second.top_k):
        raise CapsimError(f"cannot combine {first.model_id} with {second.model_id}")
    ranked = sorted((first, second), key=lambda m: -int(m.meta.get("popularity_tokens", 0)))
    pop, used_from = {}, {}
    for layer in sorted(set(first.popularity) | set(second.popularity)):
        src = next(m for m in ranked if layer in m.popularity)
        pop[layer] = src.popularity[layer]
        used_from.setdefault(src.meta["sources"][0]["repository"], []).append(layer)
    c_src = first if first.sequence_concentration is not None else second
    comparison = {}
    for layer in sorted(set(first.popularity) & set(second.popularity)):
        comparison[str(layer)] = round(float(np.abs(first.popularity[layer] - second.popularity[layer]).sum()), 4)
    note = (f"Popularity per layer from the source with more tokens: {json.dumps(used_from)} "
            f"({', '.join(str(m.meta.get('popularity_tokens')) for m in ranked)} tokens); L1 distance between "
            f"the two sources' shares on the layers both count: {json.dumps(comparison)}.")
    meta = {"popularity_tokens": int(ranked[0].meta.get("popularity_tokens", 0)),
            "domains_used": {"popularity_from": used_from, "l1_between_sources": comparison,
                             **{m.meta["sources"][0]["repository"]: m.meta.get("domains_used") for m in ranked}},
            "sequence_concentration_fit": c_src.meta.get("sequence_concentration_fit"),
            "sources": first.meta["sources"] + second.meta["sources"],
            "caveats": [note] + [f"[{_label(m, used_from, c_src)}] {text}" for m in (first, second)
                                 for text in m.meta["caveats"] if m is c_src or not text.startswith("No per-seq")]}
    return fitted.RoutingModel(first.model_id, first.num_experts, first.top_k, first.moe_layers, "fitted", pop,
                               c_src.sequence_concentration, meta)


def _label(m: fitted.RoutingModel, used_from: dict[str, list[int]], c_src: fitted.RoutingModel) -> str:
    repo = m.meta["sources"][0]["repository"]
    layers = used_from.get(repo, [])
    which = f"all {m.moe_layers}" if len(layers) == m.moe_layers else ", ".join(map(str, layers))
    uses = ([f"popularity of layers {which}"] if layers else []) + (["c"] if m is c_src else [])
    return f"{repo}: {' and '.join(uses) if uses else 'comparison only'}"


# ----------------------------------------------------------------------------------------------- numbers
def decode_activated(m: fitted.RoutingModel, batches: tuple[int, ...] = BATCHES) -> dict[int, float]:
    """Expected distinct experts per layer at decode batch B (one token from each of B sequences): mean over
    all MoE layers (fitted.layer_popularity) of sum_e 1 - (1 - pi_e)^B, pi = fitted.inclusion(p, k)."""
    pi = fitted.inclusion(fitted.layer_popularity(m), m.top_k)
    return {b: float(np.mean(np.sum(1.0 - (1.0 - pi) ** b, axis=1))) for b in batches}


def uniform_activated(experts: int, k: int, batches: tuple[int, ...] = BATCHES) -> dict[int, float]:
    return {b: experts * (1.0 - (1.0 - k / experts) ** b) for b in batches}


def check_catalogue(m: fitted.RoutingModel, configs: Path = CONFIGS) -> None:
    """The model's E, k and MoE layers agree with the catalogue config of its id."""
    cfg = json.loads((configs / f"{m.model_id.replace('/', '__')}.json").read_text())
    want = (cfg.get("num_experts", cfg.get("num_local_experts")), cfg["num_experts_per_tok"],
            cfg["num_hidden_layers"])
    if want != (m.num_experts, m.top_k, m.moe_layers):
        raise CapsimError(f"{m.model_id}: E, k, layers {(m.num_experts, m.top_k, m.moe_layers)} but the "
                          f"catalogue says {want}")


def table(models: dict[str, fitted.RoutingModel]) -> str:
    """Markdown table of decode activated experts (fitted vs uniform routing)."""
    rows = ["| model | E | k | " + " | ".join(f"B={b} fitted / uniform" for b in BATCHES) + " |",
            "|---|---|---|" + "---|" * len(BATCHES)]
    for name, m in models.items():
        fit, uni = decode_activated(m), uniform_activated(m.num_experts, m.top_k)
        rows.append(f"| {name} | {m.num_experts} | {m.top_k} | "
                    + " | ".join(f"{fit[b]:.2f} / {uni[b]:.2f}" for b in BATCHES) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m capsim.traces.import_counts", description=__doc__.split("\n")[0])
    ap.add_argument("--olmoe", help="allenai/OLMoE checkout or bare mirror")
    ap.add_argument("--mixtral-vis", help="ajtejankar/mixtral-vis-moe checkout or bare mirror")
    ap.add_argument("--out", required=True, help="folder for olmoe-1b-7b.json and mixtral-8x7b.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    models: dict[str, fitted.RoutingModel] = {}
    if args.olmoe:
        models["olmoe-1b-7b"] = olmoe_counts(args.olmoe, "olmoe")
    mixtral = [m for m in ((mixtral_frac_vecs(args.mixtral_vis) if args.mixtral_vis else None),
                           (olmoe_counts(args.olmoe, "mistral") if args.olmoe else None)) if m is not None]
    if mixtral:
        models["mixtral-8x7b"] = combine(*mixtral) if len(mixtral) == 2 else mixtral[0]
    if not models:
        ap.error("give --olmoe and/or --mixtral-vis")
    for name, m in models.items():
        check_catalogue(m)
        path = fitted.save(out / f"{name}.json", m)
        fitted.load(path)  # what we write must load
        print(f"{path}: c={m.sequence_concentration}, layers {sorted(m.popularity)}, "
              f"max/mean share {[round(float(p.max() * m.num_experts), 2) for p in m.popularity.values()]}")
    print(table(models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
