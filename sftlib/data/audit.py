"""The mask audit: a check of where each example's trained tokens sit, in two parts.

`check` re-derives, for every trained run, what the masking rule promises (sftlib.data.masking): the
tokens before it are the turn's prompt tokenized alone, it ends with its first stop token, it
decodes to what the template renders there, and it holds the turn's answer. It reads the turns as
masking rendered them. `check_independently` shares none of that: it renders each trained turn's
prompt again through the tokenizer's own `apply_chat_template`, tokenizes it with the tokenizer's own
call, and finds where generation starts by itself, so a bug in masking's rendering, offsets or
tokenizing (a start off by one character) fails it. It runs on every row of a split up to
INDEPENDENT_ROWS rows, and on a seeded sample of that many rows of a larger one (`selected`).

A row either part can't accept is a counted drop (`audit_failed`), never the end of a run: only a
share of such rows above dataset.max_dropped_fraction stops it, as a masking bug to report.
"""

from __future__ import annotations

import os
import zlib

from sftlib.data import conversations, rendering
from sftlib.data.masking import Tokens, generation_turn, trained_runs
from sftlib.data.rendering import template_context
from sftlib.errors import DropExample


def check(tokens: Tokens, example: dict, tokenizer, stop_ids=None, template_kwargs=None) -> None:
    """Check where the trained tokens sit, not only what they decode to; DropExample("audit_failed") on
    a mismatch, so one row the audit can't accept is a counted drop, never the end of a run.

    Conversation: each trained run is one trained turn; the tokens before it are the turn's prompt
    tokenized alone (as at inference, so the run sits exactly where generation starts), the run ends
    with its first stop token, decodes to the text the template renders there, and holds the turn's
    answer. Prompt/completion: one run that ends the text and holds the completion + eos. Text:
    everything + eos. Texts are compared as they are, then in the tokenizer's own terms (decoded
    after encoding: Qwen's tokenizers normalize to NFC). Run on untruncated tokens. The turns'
    renderings come with `tokens` when masking made them, and are rendered again otherwise.
    """
    ids, labels = tokens.input_ids, tokens.labels
    stop_ids = frozenset(stop_ids or [tokenizer.eos_token_id])

    def decode(a, b):
        return tokenizer.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def holds(check, *texts) -> bool:  # check(texts) as written, or as the tokenizer reads them
        return check(*texts) or check(*(_as_tokenized(tokenizer, t) for t in texts))

    runs = trained_runs(labels)
    if conversations.is_chat(example):
        messages = conversations.conversation(example).messages
        problem = (
            None
            if len(runs) == len(tokens.turns)
            else f"{len(runs)} trained runs for {len(tokens.turns)} turns"
        )
        rendered = {t.message: t for t in tokens.rendered}
        context = template_context(example, template_kwargs)
        for (a, b), i in zip(runs, tokens.turns, strict=False):
            if problem:
                break
            turn = rendered.get(i) or generation_turn(messages, i, tokenizer, context)
            body, run = decode(a, b - 1), decode(a, b)
            if tuple(ids[:a]) != turn.prompt_ids:
                problem = (
                    f"turn {i}: the trained run does not start where the model's generation starts (the "
                    "tokens before it are not the prompt tokenized alone, as at inference)"
                )
            elif ids[b - 1] not in stop_ids or any(t in stop_ids for t in ids[a : b - 1]):
                problem = f"turn {i}: the trained run does not end with its first stop token"
            elif not holds(
                lambda g, run=run, body=body: g.startswith(run) or body == g, turn.text[turn.start :]
            ):
                problem = f"turn {i}: the trained run {run!r} is not the text the template renders there"
            elif not holds(lambda answer, run=run: answer in run, turn.answer):
                problem = f"turn {i}: the trained run {run!r} does not hold the answer {turn.answer!r}"
    else:
        eos = tokenizer.eos_token
        body = example.get("completion", example.get("text"))
        body = body if body.endswith(eos) else body + eos
        full = (example.get("prompt") or "") + body
        decoded = [decode(a, b) for a, b in runs]

        def ok(full, body):
            fits = len(decoded) == 1 and full.endswith(decoded[0]) and len(decoded[0]) >= len(body)
            return fits and (decoded[0] == body if "text" in example else True)

        problem = (
            None
            if holds(ok, full, body)
            else f"trained tokens decode to {decoded!r}, expected {body!r} at the end"
        )
    if problem:
        raise DropExample("audit_failed", f"example {example.get('index', '?')}: {problem}")


def _as_tokenized(tokenizer, text: str) -> str:
    """`text` as the tokenizer reads it: encoded and decoded (its normalizer applied)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# Rows of a split re-rendered by `check_independently`: all of them up to this many, else a seeded
# sample of about this many (two renders and one tokenization per trained turn: cheap, not free).
INDEPENDENT_ROWS = 2000


def selected(index: int, rows: int, seed: int) -> bool:
    """Whether row `index` of a split of `rows` rows gets the independent audit: every row of a small
    split; of a large one, a sample fixed by `seed` (the same rows on every run, so cached labels hold)."""
    if rows <= INDEPENDENT_ROWS:
        return True
    return zlib.crc32(f"{seed}:{index}".encode()) < INDEPENDENT_ROWS / rows * 2**32


def check_independently(tokens: Tokens, example: dict, tokenizer, template_kwargs=None) -> None:
    """Each trained run of a conversation against the template and the tokenizer alone: the tokens
    before it are the turn's prompt as `tokenizer.apply_chat_template` renders it, up to where the
    answered turn's rendering first differs from it, tokenized by `tokenizer(...)`; and the run's text
    is what the answered rendering holds from there. DropExample("audit_failed") otherwise."""
    if not conversations.is_chat(example):
        return
    ids = tokens.input_ids
    messages = rendering.as_template_reads(tokenizer, conversations.conversation(example).messages)
    context = {
        "tools": example.get("tools") or None,
        **(template_kwargs or {}),
        **(example.get("chat_template_kwargs") or {}),
    }
    for (a, b), i in zip(trained_runs(tokens.labels), tokens.turns, strict=False):
        prompt = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True, **context
        )
        answered = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, **context)
        start = len(os.path.commonprefix([prompt, answered]))
        if list(ids[:a]) != tokenizer(answered[:start], add_special_tokens=False)["input_ids"]:
            raise DropExample(
                "audit_failed",
                f"example {example.get('index', '?')}: turn {i}: the tokens before the trained run are not "
                "the prompt as apply_chat_template renders it, tokenized alone (independent audit)",
            )
        body = tokenizer.decode(ids[a : b - 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not any(
            t.startswith(body) for t in (answered[start:], _as_tokenized(tokenizer, answered[start:]))
        ):
            raise DropExample(
                "audit_failed",
                f"example {example.get('index', '?')}: turn {i}: the trained run {body!r} is not what "
                "apply_chat_template renders where generation starts (independent audit)",
            )
