"""Labels for prompt/completion strings and plain text, exactly as trl.SFTTrainer builds them.

A completion is trained from where the tokenized prompt and prompt + completion + EOS diverge
(`common_prefix_length`); plain text is trained whole, with EOS. Conversations are
sftlib.data.masking's.
"""

from __future__ import annotations

from sftlib.data import IGNORE_INDEX
from sftlib.errors import DropExample, SftlibError


def _eos(tokenizer) -> str:
    if not tokenizer.eos_token:
        raise SftlibError(
            "the tokenizer has no eos_token, so a completion can't be ended.", "use a tokenizer with one."
        )
    return tokenizer.eos_token


def common_prefix_length(ids: list[int], other_ids: list[int]) -> int:
    """How many leading tokens the two sequences share: where trl.SFTTrainer starts a completion (TRL 1.16
    keeps its own helper out of its exports; tests/test_masking.py holds these labels equal to TRL's)."""
    length = 0
    for token, other in zip(ids, other_ids, strict=False):
        if token != other:
            break
        length += 1
    return length


def prompt_completion_tokens(prompt, completion, tokenizer) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, whether a token spans the boundary), as trl.SFTTrainer does: the completion
    starts where the tokenized prompt and prompt+completion+eos diverge; a token that spans the
    boundary is part of the completion."""
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DropExample("non_string_content")
    if not completion.strip():
        raise DropExample("empty_completion")
    eos = _eos(tokenizer)
    completion = completion if completion.endswith(eos) else completion + eos
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    ids = tokenizer(text=prompt + completion)["input_ids"]
    n = common_prefix_length(prompt_ids, ids)
    return ids, [IGNORE_INDEX] * n + ids[n:], n < len(prompt_ids)


def text_tokens(text, tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for language modeling, as trl.SFTTrainer does: text + eos, every token trained."""
    if not isinstance(text, str):
        raise DropExample("non_string_content")
    if not text.strip():
        raise DropExample("empty_text")
    eos = _eos(tokenizer)
    ids = tokenizer(text=text if text.endswith(eos) else text + eos)["input_ids"]
    return ids, list(ids)
