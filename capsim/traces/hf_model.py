"""Load a Hugging Face MoE checkpoint (or a bare config.json) as a torch model, with its tokenizer.

Used by ``capsim trace collect`` (:mod:`capsim.traces.collect`) and the measurement commands
(:mod:`capsim.measure`). Needs torch and transformers (``pip install capsim[trace]``); they are
imported inside the functions that use them, and the prediction path never imports this module.

``--model`` is a model folder (``config.json`` next to the weights, ``*.safetensors`` / ``*.bin``,
and optionally a tokenizer) or a bare ``config.json``; :func:`family_of` maps its ``model_type``
to a router family of :data:`capsim.traces.routers.FAMILIES`. With ``random_init`` the model is
built from the config with seeded random weights (required for a bare config or a folder without
weights); otherwise the folder's checkpoint is loaded, and any missing weight is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError
from capsim.model.spec import ALIASED_MODEL_TYPES
from capsim.traces.routers import FAMILIES, MODEL_TYPE_FAMILY

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "tiktoken.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def read_config(model: str | Path) -> tuple[dict[str, Any], Path | None]:
    """The config dict and the model folder (None when ``model`` is a bare config file)."""
    model = Path(model)
    if model.is_dir():
        folder, cfg_file = model, model / "config.json"
    elif model.is_file():
        folder, cfg_file = None, model
    else:
        raise CapsimError(f"{model}: --model must be a model folder (config.json, weights) or a config.json file")
    if not cfg_file.is_file():
        raise CapsimError(f"{model}: no config.json in the model folder")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CapsimError(f"{cfg_file}: unreadable config ({err}); expected a Hugging Face config.json") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise CapsimError(f"{cfg_file}: expected a Hugging Face config.json object with a model_type")
    return cfg, folder


def family_of(cfg: dict[str, Any]) -> tuple[str, str]:
    """(transformers model_type, family key) of a config dict; CapsimError if not a known MoE family."""
    model_type = ALIASED_MODEL_TYPES.get(cfg["model_type"], cfg["model_type"])
    family = MODEL_TYPE_FAMILY.get(model_type, model_type)
    if family not in FAMILIES:
        raise CapsimError(f"model_type {cfg['model_type']!r} is not a supported MoE family (supported: "
                          f"{', '.join(sorted(set(FAMILIES) | set(MODEL_TYPE_FAMILY) | set(ALIASED_MODEL_TYPES)))})")
    return model_type, family


def model_id_of(model: str | Path, cfg: dict[str, Any]) -> str:
    """The model's id: the config's ``_name_or_path``, else the folder (or config file) name."""
    if cfg.get("_name_or_path"):
        return str(cfg["_name_or_path"])
    p = Path(model).resolve()
    name = p.parent.name if p.is_file() and p.name == "config.json" else (p.stem if p.is_file() else p.name)
    return name.replace("__", "/")  # the catalogue's file naming: owner__name.json


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files in ``folder`` (:data:`WEIGHT_SUFFIXES`), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def check_weights(model: str | Path, folder: Path | None) -> None:
    """Each safetensors file of the checkpoint is whole: its header parses and the tensors it lists end within
    the file (a truncated download fails here, in one line, before minutes of loading)."""
    import json
    import struct

    for f in weight_files(folder) if folder is not None else ():
        if not f.name.endswith(".safetensors"):
            continue
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0] if size >= 8 else -1
                header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
            end = max((int(t["data_offsets"][1]) for k, t in (header or {}).items() if k != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as err:
            raise CapsimError(f"--model {model}: {f.name} is not a safetensors file ({type(err).__name__})") from None
        if not isinstance(header, dict):
            raise CapsimError(f"--model {model}: {f.name} is not a safetensors file (bad header)")
        if 8 + n + end > size:
            raise CapsimError(f"--model {model}: {f.name} is truncated ({size:,} bytes, its header lists "
                              f"{8 + n + end:,})")


def _require_ml() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise CapsimError(f"trace collect needs torch and transformers ({err}); install capsim[trace]") from None


def load_hf_model(model: str | Path, random_init: bool, seed: int = 0, device: str = "cpu"):
    """(model in eval mode, config dict as read, family key). Llama-4 loads as its text model."""
    _require_ml()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw, folder = read_config(model)
    model_type, family = family_of(raw)
    cfg = {k: v for k, v in raw.items() if k not in ("model_type", "auto_map", "architectures")}
    # A checkpoint saved from training may ask for router logits (load-balancing loss); at inference
    # that loss is neither wanted nor computable with a KV cache and padding, and it changes nothing routed.
    cfg["output_router_logits"] = False
    if random_init:
        cfg.pop("quantization_config", None)
    elif folder is None or not weight_files(folder):
        raise CapsimError(f"{model}: no weights (*.safetensors, *.bin) next to config.json; pass a checkpoint "
                          "folder, or --random-init to collect from randomly initialised weights")
    else:
        check_weights(model, folder)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:
        config = AutoConfig.for_model(model_type, **cfg)
        if random_init:
            torch.manual_seed(seed)
            m = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            # Llama-4: AutoModelForCausalLM builds the text model from text_config; the vision tower's
            # weights are then unexpected keys, which are expected here: silence the load report and
            # check the keys that matter (missing ones) ourselves.
            hf_logging.set_verbosity_error()
            m, info = AutoModelForCausalLM.from_pretrained(folder, config=config, local_files_only=True,
                                                           dtype="auto", output_loading_info=True)
            if info["missing_keys"]:
                missing = sorted(info["missing_keys"])
                raise CapsimError(f"{folder}: checkpoint lacks {len(missing)} weight(s) of the {type(m).__name__} "
                                  f"model (e.g. {', '.join(missing[:3])}); they would be random")
    except CapsimError:
        raise
    except Exception as err:  # noqa: BLE001  a truncated or foreign weights file raises the reader's own types
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CapsimError(f"--model {model}: cannot build the {model_type} model from it ({type(err).__name__}: "
                          f"{first})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    m.to(device)
    m.eval()
    return m, raw, family


def load_tokenizer(folder: Path | None):
    """The folder's tokenizer, or None (byte-level fallback) when it has none."""
    if folder is None or not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any tokenizer failure is a bad-input error here
        raise CapsimError(f"{folder}: cannot load the tokenizer ({type(err).__name__}: {err})") from None
