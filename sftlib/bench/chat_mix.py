"""The chat-mix data of `sftlib bench --data chat-mix`: a deterministic ShareGPT-like chat set.

1-4 turns, log-normal message lengths (close to ShareGPT's token statistics with SmolLM2's
tokenizer), some system prompts; words are English function words and made-up ones built from
syllables, so the tokenizer sees a realistic mix of short and long tokens.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

ROWS = 2000
FUNCTION_WORDS = "the a of to and is in that it for you with on as this be are can what how"
SYLLABLES = "ka lo mi tra ven sol dar ith pen qu ro sa te ul bri mon el fa gor hin"


def write_chat_mix(path: Path, n: int = ROWS, seed: int = 0) -> Path:
    """`n` chats as messages JSONL at `path`; the same `seed` gives the same file."""
    rng, vocab_rng = random.Random(seed), random.Random(1234)
    syllables = SYLLABLES.split()
    made_up = [
        "".join(vocab_rng.choice(syllables) for _ in range(vocab_rng.randint(1, 3))) for _ in range(2000)
    ]
    words = FUNCTION_WORDS.split() + made_up

    def text(n_words: int) -> str:
        picked = (
            rng.choice(words) + (rng.choice(".,?") if rng.random() < 0.08 else "") for _ in range(n_words)
        )
        return " ".join(picked).capitalize()

    def log_normal(mu: float, sigma: float) -> int:
        return max(3, int(math.exp(rng.gauss(mu, sigma))))

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            messages = []
            if rng.random() < 0.3:
                messages.append({"role": "system", "content": text(rng.randint(5, 30))})
            for _turn in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
                messages.append({"role": "user", "content": text(log_normal(2.3, 0.9))})
                messages.append({"role": "assistant", "content": text(log_normal(3.3, 1.0))})
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def chat_mix_overrides(folder: Path) -> list[str]:
    """Config overrides that train on a chat mix written into `folder`, all of it, no eval split."""
    path = write_chat_mix(folder / "chat_mix.jsonl")
    return [
        f"dataset.name={path}",
        "dataset.eval_split=null",
        "dataset.eval_size=null",
        "dataset.max_samples=null",
    ]
