"""Prepared examples written out for people and tools to read: each token decoded with whether it is
trained, and input_ids and labels as JSON Lines (`sftlib masks`), with the decoded text and trained runs
when asked."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset

from sftlib.data import IGNORE_INDEX
from sftlib.data.masking import trained_runs


def special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)


def token_view(input_ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, bool, bool]]:
    """(text, trained, is_special) per token, for a coloured view of what the loss covers."""
    special = special_ids(tokenizer)
    return [
        (
            tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False),
            label != IGNORE_INDEX,
            i in special,
        )
        for i, label in zip(input_ids, labels, strict=True)
    ]


def write_masks_jsonl(ds: Dataset, tokenizer, path: Path, with_text: bool = False) -> int:
    """One JSON line per example: index, turn, input_ids, labels (+ text and trained runs decoded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in ds:
            record = {
                "index": row["index"],
                "turn": row["turn"],
                "input_ids": row["input_ids"],
                "labels": row["labels"],
            }
            if with_text:
                ids = row["input_ids"]
                record["text"] = tokenizer.decode(ids, skip_special_tokens=False)
                record["trained"] = [
                    tokenizer.decode(ids[a:b], skip_special_tokens=False)
                    for a, b in trained_runs(row["labels"])
                ]
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
