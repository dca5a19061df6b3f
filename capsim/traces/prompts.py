"""The prompts of a trace collection: reading the prompts file and turning prompts into token ids.

Prompts file
    A text file, one prompt per line (blank lines skipped), or a ``.jsonl`` file with one object
    per line holding a ``"prompt"`` (or ``"text"``) string.

Tokenizer
    The model folder's own tokenizer when it has one (``tokenizer.json``, ``tokenizer_config.json``,
    ``tokenizer.model`` ...; :func:`capsim.traces.hf_model.load_tokenizer`); otherwise, and for a
    bare config file, a deterministic byte-level fallback: the prompt's UTF-8 bytes, token id = byte
    value mod vocab_size, no BOS. Prompts longer than ``max_prompt_tokens`` keep their first
    ``max_prompt_tokens`` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from capsim.errors import CapsimError


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line, blank lines skipped) or a .jsonl ("prompt" or "text")."""
    path = Path(path)
    if not path.is_file():
        raise CapsimError(f"--prompts {path}: no such file (expected a text file, one prompt per line, or .jsonl)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CapsimError(f"{path}: unreadable prompts file ({err}); expected UTF-8 text") from None
    prompts: list[str] = []
    jsonl = path.suffix.lower() == ".jsonl"
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            prompts.append(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CapsimError(f"{path}:{n}: not JSON ({err.msg}); expected one object per line "
                              'with a "prompt" or "text" string') from None
        value = obj.get("prompt", obj.get("text")) if isinstance(obj, dict) else None
        if not isinstance(value, str) or not value:
            raise CapsimError(f'{path}:{n}: expected an object with a non-empty "prompt" or "text" string')
        prompts.append(value)
    if not prompts:
        raise CapsimError(f"{path}: no prompts (expected one prompt per line, or .jsonl objects with \"prompt\")")
    return prompts


def tokenize(prompts: list[str], tokenizer, vocab_size: int, max_tokens: int) -> list[list[int]]:
    """Token ids per prompt: ``tokenizer`` (a transformers tokenizer), or the byte fallback when it is None."""
    out = []
    for i, p in enumerate(prompts):
        ids = (list(tokenizer(p)["input_ids"]) if tokenizer is not None
               else [b % vocab_size for b in p.encode("utf-8")])
        if not ids:
            raise CapsimError(f"prompt {i} tokenizes to no tokens")
        out.append(ids[:max_tokens])
    return out
