"""Regenerate capsim/catalogue/models.json from the committed config.json files.

Run: python scripts/build_catalogue.py [--check]
With torch and transformers installed, every parameter breakdown is also counted
on the real transformers class instantiated on the meta device and must equal
the analytic count (else the script fails). --check exits 1 if models.json is stale.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capsim.model.catalogue import CATALOGUE, MODELS_JSON, native_bits_per_weight, native_precision  # noqa: E402
from capsim.model.spec import spec_from_config  # noqa: E402
from capsim.traces.format import config_hash  # noqa: E402

COUNTED = "analytic (capsim.model.spec); equal to transformers on the meta device (checked at build and in tests)"


def build(with_meta: bool) -> dict:
    aliases = yaml.safe_load((CATALOGUE / "aliases.yaml").read_text())
    published = yaml.safe_load((CATALOGUE / "published.yaml").read_text())
    models = []
    for mid, extra in aliases.items():
        # config_of: this entry shares another entry's config.json (same architecture; source in published.yaml)
        base = extra.get("config_of", mid)
        if base != mid and base not in aliases:
            raise SystemExit(f"{mid}: config_of {base} is not a catalogue entry")
        file = CATALOGUE / "configs" / (base.replace("/", "__") + ".json")
        if not file.is_file():
            print(f"skip {mid}: no committed config ({file.name})", file=sys.stderr)
            continue
        raw = file.read_bytes()
        cfg = json.loads(raw)
        spec = spec_from_config(cfg, mid)
        breakdown = spec.params_breakdown()
        if with_meta:
            from capsim.model.meta import meta_breakdown

            meta = meta_breakdown(copy.deepcopy(cfg))  # transformers edits nested dicts (rope_scaling) in place
            if meta != breakdown:
                raise SystemExit(f"{mid}: analytic {breakdown} != transformers meta {meta}")
        pub = published.get(mid, {})
        if base != mid and not str(pub.get("config_source", "")).startswith(f"same architecture as {base}"):
            raise SystemExit(f"{mid}: published.yaml config_source must say 'same architecture as {base}: <source>'")
        models.append({
            "id": mid,
            "aliases": [*extra.get("aliases", []), *extra.get("same_shape", [])],
            "config_file": f"capsim/catalogue/configs/{file.name}",
            "config_sha256": hashlib.sha256(raw).hexdigest(),
            "config_hash": config_hash(cfg),  # what traces record (capsim.traces.format.config_hash)
            "native_precision": native_precision(cfg),
            "native_bits_per_weight": native_bits_per_weight(cfg),  # scales included (capsim.model.quant)
            "params_counted": COUNTED,
            "total_params": spec.total_params,
            "active_params": spec.active_params,
            "mtp_params": spec.mtp_params,  # multi-token-prediction modules, outside total_params
            "params_breakdown": breakdown,
            "published": {k: pub.get(k) for k in ("total_params", "active_params", "source")},
            **({"config_of": base} if base != mid else {}),
            "spec": dataclasses.asdict(spec),
        })
    return {"generated_by": "scripts/build_catalogue.py", "models": models}


def main() -> None:
    check = "--check" in sys.argv
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        with_meta = not check
    except ImportError:
        with_meta = False
    data = build(with_meta)
    text = json.dumps(data, indent=1) + "\n"
    if check:
        if MODELS_JSON.read_text() != text:
            raise SystemExit("capsim/catalogue/models.json is stale: run python scripts/build_catalogue.py")
        print("models.json is up to date")
        return
    tmp = MODELS_JSON.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(MODELS_JSON)
    print(f"wrote {MODELS_JSON.relative_to(ROOT)}: {len(data['models'])} models")
    if with_meta:
        write_config_fields()


def write_config_fields() -> None:
    """capsim/catalogue/config_fields.json: per model type of the catalogue, the fields its transformers config
    class dumps (and the catalogue's configs carry), and the generic PretrainedConfig fields
    (capsim.model.known_fields)."""
    from transformers import AutoConfig, PretrainedConfig

    from capsim.model.config_read import _flatten
    from capsim.model.known_fields import FIELDS_JSON
    from capsim.model.spec import ALIASED_MODEL_TYPES

    by_type: dict[str, set[str]] = {}
    for file in sorted((CATALOGUE / "configs").glob("*.json")):
        flat = _flatten(json.loads(file.read_text()))
        mt = str(flat.get("model_type", ""))
        keys = by_type.setdefault(ALIASED_MODEL_TYPES.get(mt, mt), set())
        keys |= set(flat)
        try:
            keys |= set(AutoConfig.for_model(mt).to_dict())
        except ValueError:  # a remote-code type (kimi_k2): its configs' own keys only
            pass
    data = {"generated_by": "scripts/build_catalogue.py", "transformers": __import__("transformers").__version__,
            "generic": sorted(PretrainedConfig().to_dict()),
            "by_model_type": {k: sorted(v) for k, v in sorted(by_type.items())}}
    FIELDS_JSON.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {FIELDS_JSON.relative_to(ROOT)}: {len(by_type)} model types")


if __name__ == "__main__":
    main()
