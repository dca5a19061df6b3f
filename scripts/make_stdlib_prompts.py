"""Write prompts for the learned-routing trace: snippets of the HELD-OUT Python stdlib files.

The tiny model (scripts/train_tiny_moe.py) trained on every file but each 20th; the prompts come
from those held-out files only, so the trace shows routing on text the model did not train on.
Run: python scripts/make_stdlib_prompts.py [--n 256] [--bytes 96] [--out traces/prompts/stdlib_heldout.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stdlib_corpus import stdlib_files  # noqa: E402

VAL_EVERY = 20  # train_tiny_moe.py --val-every default: file i is held out when i % 20 == 19


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--bytes", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="traces/prompts/stdlib_heldout.jsonl")
    a = ap.parse_args()
    root, files = stdlib_files()
    held_out = [p for i, p in enumerate(files) if i % VAL_EVERY == VAL_EVERY - 1]
    rng = random.Random(a.seed)
    rows = []
    while len(rows) < a.n:
        p = rng.choice(held_out)
        text = p.read_text(encoding="utf-8", errors="replace")
        starts = [i + 1 for i, c in enumerate(text) if c == "\n" and len(text) - i > a.bytes + 1]
        if not starts:
            continue
        s = rng.choice(starts)
        snippet = text[s:s + a.bytes]
        if not snippet.isascii() or not snippet.strip():
            continue
        rows.append({"prompt": snippet, "file": p.relative_to(root).as_posix(), "offset": s})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out)
    print(f"wrote {out}: {len(rows)} prompts from {len(held_out)} held-out files")


if __name__ == "__main__":
    main()
