"""How answers are scored against references: exact match and SQuAD-style token F1, defined once.

`generate` produces answers, `plots` colours them, notebook 05 and the demo report them: all of them
call these functions, so "correct" means the same thing everywhere.
"""

from __future__ import annotations

import collections
import re
import string

from sftlib.data.chat import answer
from sftlib.errors import SftlibError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def exact_match(prediction: str | None, reference: str | None) -> bool:
    """The answers are equal (a missing answer is never correct)."""
    return prediction is not None and reference is not None and answer(prediction) == answer(reference)


def normalize_answer(text: str) -> list[str]:
    """SQuAD's normalization (lower case, no articles, collapsed spaces), except that punctuation
    separates tokens instead of vanishing, so "2021-03-05" is three tokens and a near miss on a
    date gets partial credit."""
    text = _PUNCTUATION.sub(" ", text.lower())
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of the answers, in [0, 1]; two empty answers agree (1.0)."""
    pred, ref = normalize_answer(answer(prediction)), normalize_answer(answer(reference))
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(predictions: list[str], references: list[str]) -> dict:
    """{"exact_match": 0..100, "token_f1": 0..100, "n": n}."""
    if len(predictions) != len(references):
        raise SftlibError(
            f"got {len(predictions)} predictions for {len(references)} references.",
            "score one prediction per reference, in the same order.",
        )
    n = len(references)
    if n == 0:
        return {"exact_match": 0.0, "token_f1": 0.0, "n": 0}
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": 100.0 * sum(exact_match(p, r) for p, r in pairs) / n,
        "token_f1": 100.0 * sum(token_f1(p, r) for p, r in pairs) / n,
        "n": n,
    }


def prompt_text(prompt) -> str:
    """The last user message of a chat prompt (or the prompt string), for tables."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content", ""))
    return str(prompt)


def comparison_rows(prompts, references, base: list[str], tuned: list[str]) -> list[dict]:
    """One row per prompt: the answers of both models, and their scores when there is a reference."""
    rows = []
    for p, r, b, t in zip(prompts, references, base, tuned, strict=True):
        row = {"prompt": prompt_text(p), "reference": r, "base": b, "tuned": t}
        if r is not None:
            row |= {
                "base_exact": exact_match(b, r),
                "tuned_exact": exact_match(t, r),
                "base_f1": round(token_f1(b, r), 3),
                "tuned_f1": round(token_f1(t, r), 3),
            }
        rows.append(row)
    return rows
