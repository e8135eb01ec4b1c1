"""Tokenize normalized examples with labels (-100 = not trained), for any chat template.

Conversations are masked by rendering incrementally, not with `{% generation %}` markers, so any
chat template works. For each trained assistant turn i:

    P = render(messages[:i], add_generation_prompt=True)     # everything the model is given
    Q = render(messages[:i + 1])                             # ... plus its answer

P must be a prefix of Q and Q of the full rendering (else the template is not prefix-stable and we
refuse to mask rather than mask wrongly). The turn's content is found in Q[len(P):]; the trained span
is that content plus the end-of-turn token right after it (e.g. `<|im_end|>`, not the "\\n" after it),
so the model learns to stop. The full text is tokenized once with offsets, and a token is trained iff
its characters lie inside a trained span. Labels never come from comparing ids with pad_token_id, so
pad == eos (SmolLM2) can't mask the trained end token.

String prompt/completion and plain text follow TRL exactly (see `_tokenize_prompt_completion`).

A bad row raises `DropExample(reason)`; `prepare` counts the reasons per split (DROP_REASONS).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, List, Value

from sftlib import data
from sftlib.config import RunConfig
from sftlib.errors import SftlibError

logger = logging.getLogger("sftlib")

IGNORE = -100
ROLES = ("system", "user", "assistant")

# Every way an example can be dropped. Nothing is dropped without one of these in the report.
DROP_REASONS = {
    "empty_text": "text is empty or whitespace",
    "empty_completion": "the completion is empty, or has no assistant turn",
    "empty_conversation": "no messages",
    "empty_assistant_turn": "an assistant turn is empty or whitespace",
    "non_string_content": "a prompt, completion, text or message content is not a string (null, number, list)",
    "unknown_role": "a role other than system/user/assistant (ShareGPT: system/human/gpt)",
    "misplaced_system": "a system message that is not the first message",
    "starts_with_assistant": "the first non-system message is not from the user",
    "repeated_role": "two consecutive messages with the same role",
    "no_assistant_turn": "no assistant turn (after trimming trailing user turns)",
    "token_straddles_turn_boundary": "a token spans both scaffolding and an assistant turn (e.g. content starting with a newline)",
    "all_trained_tokens_truncated": "max_seq_length cuts off every trained token",
}


class DropExample(Exception):
    """An example that can't be trained on; `reason` is a key of DROP_REASONS."""

    def __init__(self, reason: str):
        assert reason in DROP_REASONS, reason
        self.reason = reason
        super().__init__(reason)


# --------------------------------------------------------------------------- one example


def tokenize_example(example: dict, tokenizer, train_on: str = "all_assistant") -> dict:
    """A normalized example (see sftlib.data) -> {"input_ids", "labels", "trimmed_turns"}.

    `labels` are unshifted, IGNORE (-100) where not trained. `trimmed_turns` counts trailing user
    turns removed from a conversation (they have no answer to train on). Raises DropExample.
    """
    if data.is_chat(example):
        messages, first_trainable = chat_messages(example)
        messages, trimmed = validate_conversation(messages, first_trainable)
        return {**_tokenize_chat(messages, first_trainable, tokenizer, train_on), "trimmed_turns": trimmed}
    if "prompt" in example:
        return {
            **_tokenize_prompt_completion(example["prompt"], example["completion"], tokenizer),
            "trimmed_turns": 0,
        }
    if "text" in example:
        return {**_tokenize_text(example["text"], tokenizer), "trimmed_turns": 0}
    raise SftlibError(
        f"example has none of the canonical columns (messages, prompt/completion, text): {list(example)}."
    )


def chat_messages(example: dict) -> tuple[list[dict], int]:
    """(messages, index of the first message that may be trained)."""
    if "messages" in example:
        return list(example["messages"] or []), 0
    prompt, completion = example["prompt"] or [], example["completion"] or []
    if not completion:
        raise DropExample("empty_completion")
    return list(prompt) + list(completion), len(prompt)


def validate_conversation(messages: list[dict], first_trainable: int = 0) -> tuple[list[dict], int]:
    """Check roles and order; trim trailing user turns. Returns (messages, number trimmed)."""
    if not messages:
        raise DropExample("empty_conversation")
    for m in messages:
        if not isinstance(m.get("content"), str):
            raise DropExample("non_string_content")
        if m.get("role") not in ROLES:
            raise DropExample("unknown_role")
    trimmed = 0
    while messages and messages[-1]["role"] == "user":  # nothing answers them: nothing to train
        messages, trimmed = messages[:-1], trimmed + 1
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise DropExample("misplaced_system")
    body = roles[1:] if roles[:1] == ["system"] else roles
    if not body or "assistant" not in body:
        raise DropExample("empty_completion" if first_trainable else "no_assistant_turn")
    if body[0] != "user":
        raise DropExample("starts_with_assistant")
    if any(a == b for a, b in zip(body, body[1:], strict=False)):
        raise DropExample("repeated_role")
    if first_trainable and "assistant" not in roles[first_trainable:]:
        raise DropExample("empty_completion")
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages[first_trainable:]):
        raise DropExample("empty_completion" if first_trainable else "empty_assistant_turn")
    return messages, trimmed


def trained_turns(messages: list[dict], first_trainable: int, train_on: str) -> list[int]:
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= first_trainable]
    if train_on == "last_assistant":
        return turns[-1:]
    if train_on != "all_assistant":
        raise SftlibError(f"dataset.train_on={train_on!r} is not one of all_assistant, last_assistant.")
    return turns


def _tokenize_chat(messages: list[dict], first_trainable: int, tokenizer, train_on: str) -> dict:
    full, spans = assistant_spans(messages, trained_turns(messages, first_trainable, train_on), tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise SftlibError("masking conversations needs a fast tokenizer (for character offsets).")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], [IGNORE] * len(enc["input_ids"])
    for k, (a, b) in enumerate(enc["offset_mapping"]):
        for s, e in spans:
            if s <= a and b <= e and b > a:
                labels[k] = ids[k]
            elif a < s < b or a < e < b:
                raise DropExample("token_straddles_turn_boundary")
    return {"input_ids": ids, "labels": labels}


def assistant_spans(messages: list[dict], turns: list[int], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """(full rendering, [(start, end) character span of each trained turn: content + end marker])."""
    require_chat_template(tokenizer)

    def render(msgs, generation_prompt=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    full = render(messages)
    spans = []
    for i in turns:
        prompt, upto = render(messages[:i], generation_prompt=True), render(messages[: i + 1])
        if not upto.startswith(prompt) or not full.startswith(upto):
            raise SftlibError(
                f"chat template is not prefix-stable at assistant turn {i}: the conversation up to that turn "
                "is rendered differently once more turns follow (or its prompt differently once it is "
                "answered); refusing to mask, since the trained tokens can't be located exactly.",
                "use a chat template that renders earlier turns the same way whatever follows them.",
            )
        content = messages[i]["content"]
        start = upto.find(content, len(prompt))
        if start < 0:  # templates may trim the content
            content = content.strip()
            start = upto.find(content, len(prompt))
        if start < 0:
            raise SftlibError(
                f"the chat template changes the text of assistant turn {i}, so it can't be located; refusing to mask.",
                "use a chat template that renders message content verbatim.",
            )
        end = start + len(content)
        marker = end_marker(upto, end, tokenizer)
        if not marker:
            raise SftlibError(
                f"the chat template puts no special token after assistant turn {i} ({upto[end : end + 20]!r} follows): "
                "a model trained on it would never learn to stop.",
                "use a chat template that ends assistant turns with a special token such as the eos token.",
            )
        spans.append((start, end + marker))
    return full, spans


def end_marker(text: str, pos: int, tokenizer) -> int:
    """Length of the end-of-turn marker at text[pos:]: optional whitespace, then one added token."""
    rest = text[pos:]
    gap = len(rest) - len(rest.lstrip())
    return next((gap + len(t) for t in added_tokens(tokenizer) if rest.startswith(t, gap)), 0)


def added_tokens(tokenizer) -> list[str]:
    """Special/added token strings, longest first (so `<|im_end|>` wins over a shorter prefix)."""
    tokens = {t.content for t in tokenizer.added_tokens_decoder.values()} | set(tokenizer.all_special_tokens)
    return sorted((t for t in tokens if t), key=len, reverse=True)


def require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise SftlibError(
            "the dataset is a conversation, but the tokenizer has no chat template to render it.",
            "use an instruct/chat model's tokenizer (one with a chat_template), or give the data as "
            "prompt/completion strings or text (dataset.format, dataset.columns).",
        )


def _eos(tokenizer) -> str:
    if not tokenizer.eos_token:
        raise SftlibError(
            "the tokenizer has no eos_token, so a completion can't be ended.", "use a tokenizer with one."
        )
    return tokenizer.eos_token


def _tokenize_prompt_completion(prompt, completion, tokenizer) -> dict:
    """As trl.SFTTrainer does: the completion starts where the tokenized prompt and prompt+completion+eos diverge."""
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DropExample("non_string_content")
    if not completion.strip():
        raise DropExample("empty_completion")
    eos = _eos(tokenizer)
    completion = completion if completion.endswith(eos) else completion + eos
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    ids = tokenizer(text=prompt + completion)["input_ids"]
    n = common_prefix_length(prompt_ids, ids)
    return {"input_ids": ids, "labels": [IGNORE] * n + ids[n:]}


def _tokenize_text(text, tokenizer) -> dict:
    """Language modeling, as trl.SFTTrainer does: text + eos, every token trained."""
    if not isinstance(text, str):
        raise DropExample("non_string_content")
    if not text.strip():
        raise DropExample("empty_text")
    eos = _eos(tokenizer)
    ids = tokenizer(text=text if text.endswith(eos) else text + eos)["input_ids"]
    return {"input_ids": ids, "labels": list(ids)}


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------- checks


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """[(start, end)] of each maximal run of trained positions."""
    runs, start = [], None
    for k, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = k
        elif label == IGNORE and start is not None:
            runs.append((start, k))
            start = None
    return runs


def audit(example_tokens: dict, normalized_example: dict, tokenizer, train_on: str = "all_assistant") -> None:
    """Decode the trained tokens back and compare them with the source text; SftlibError on mismatch.

    Conversation: each trained run decodes to exactly one trained assistant turn's content plus its
    end marker (e.g. "Paris.<|im_end|>"). Prompt/completion: the trained run ends the text and holds
    the whole completion + eos. Text: everything + eos. Run on untruncated tokens.
    """
    ids, labels = example_tokens["input_ids"], example_tokens["labels"]

    def decode(a, b):
        return tokenizer.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    decoded = [decode(a, b) for a, b in trained_runs(labels)]
    where = f"example {normalized_example.get('index', '?')}"
    if data.is_chat(normalized_example):
        messages, first = chat_messages(normalized_example)
        messages, _ = validate_conversation(messages, first)
        expected = [messages[i]["content"] for i in trained_turns(messages, first, train_on)]
        markers = added_tokens(tokenizer)
        ok = len(decoded) == len(expected) and all(
            _is_turn(got, want, markers) for got, want in zip(decoded, expected, strict=False)
        )
    else:
        eos = tokenizer.eos_token
        body = normalized_example.get("completion", normalized_example.get("text"))
        body = body if body.endswith(eos) else body + eos
        full = (normalized_example.get("prompt") or "") + body
        expected = [body]
        ok = len(decoded) == 1 and full.endswith(decoded[0]) and len(decoded[0]) >= len(body)
        if "text" in normalized_example:
            ok = ok and decoded[0] == body
    if not ok:
        raise SftlibError(
            f"decode-back audit failed for {where}: trained tokens decode to {decoded!r}, expected {expected!r} "
            "(each followed by its end-of-turn token).",
            "this is a masking bug for this tokenizer/chat template: please report it with the template.",
        )


def _is_turn(got: str, content: str, markers: list[str]) -> bool:
    for text in (content, content.strip()):
        if got.startswith(text) and got[len(text) :].strip() in markers:
            return True
    return False


def check_invariants(ds: Dataset, tokenizer) -> dict:
    """Label properties over a tokenized split; SftlibError on any failure.

    Every example is non-empty with len(labels) == len(input_ids); every label is IGNORE or equals its
    input token; every example trains at least one token; ids are in the vocabulary. Returns stats:
    examples, tokens, trained_tokens, and trained_fraction (one float per example, for histograms).
    """
    vocab = len(tokenizer)
    fractions, tokens, trained = [], 0, 0
    for batch in ds.with_format("arrow").iter(batch_size=10_000):
        ids_col, lab_col = batch["input_ids"].combine_chunks(), batch["labels"].combine_chunks()
        lengths = ids_col.value_lengths().to_numpy(zero_copy_only=False)
        if not np.array_equal(lengths, lab_col.value_lengths().to_numpy(zero_copy_only=False)):
            raise SftlibError("invariant broken: an example's labels and input_ids differ in length.")
        if (lengths == 0).any():
            raise SftlibError("invariant broken: an example has no tokens.")
        ids = ids_col.flatten().to_numpy(zero_copy_only=False)
        labels = lab_col.flatten().to_numpy(zero_copy_only=False)
        if not ((labels == IGNORE) | (labels == ids)).all():
            raise SftlibError("invariant broken: a label is neither -100 nor its input token.")
        if ((ids < 0) | (ids >= vocab)).any():
            raise SftlibError(f"invariant broken: a token id is outside the vocabulary (size {vocab}).")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        per_example = np.add.reduceat((labels != IGNORE).astype(np.int64), starts)
        if (per_example == 0).any():
            raise SftlibError("invariant broken: an example has no trained token.")
        fractions.extend((per_example / lengths).tolist())
        tokens, trained = tokens + int(lengths.sum()), trained + int(per_example.sum())
    return {
        "examples": len(fractions),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_fraction": fractions,
    }


# --------------------------------------------------------------------------- a dataset


@dataclasses.dataclass
class Prepared:
    """Tokenized splits (columns input_ids, labels, index, num_tokens, num_trained_tokens, truncated)."""

    train: Dataset | None
    eval: Dataset | None
    format: str
    format_reason: str
    report: dict  # per split: rows, kept, dropped {reason: n}, truncated, trailing_user_turns_trimmed, tokens, ...


TOKENIZED = Features(
    {
        "index": Value("int64"),
        "input_ids": List(Value("int64")),
        "labels": List(Value("int64")),
        "num_tokens": Value("int64"),
        "num_trained_tokens": Value("int64"),
        "truncated": Value("bool"),
        "trimmed_turns": Value("int64"),
        "drop_reason": Value("string"),
    }
)


def prepare(cfg: RunConfig, tokenizer, splits=("train", "eval"), limit: int | None = None) -> Prepared:
    """Load, normalize, tokenize, audit, truncate and check the configured splits.

    `limit` keeps the first rows of each split (previews). Cached by datasets: a second run on the
    same data, tokenizer and settings does no tokenization. Raises SftlibError when a split loses
    more than dataset.max_dropped_fraction of its rows.
    """
    ds_cfg = cfg.dataset
    raw = data.load_raw(ds_cfg, seed=cfg.training.get("seed", 42))
    fmt, reason = resolve_format(raw["train"], ds_cfg.format)
    logger.info("dataset format: %s (%s)", fmt, reason)
    num_proc = cfg.training.get("dataset_num_proc")
    out, report = {}, {}
    for split in splits:
        if split not in raw:
            continue
        ds = raw[split] if limit is None else raw[split].select(range(min(limit, len(raw[split]))))
        if len(ds) == 0:
            raise SftlibError(f"the {split} split of {ds_cfg.name!r} has no rows.")
        norm = data.normalize(ds, fmt, num_proc=num_proc)
        if data.is_chat(norm[0]):
            require_chat_template(tokenizer)
        tokenized = norm.map(
            _prepare_row,
            fn_kwargs={
                "tokenizer": tokenizer,
                "train_on": ds_cfg.train_on,
                "max_length": cfg.model.max_seq_length,
                "code_version": data.code_version(),
            },
            remove_columns=[c for c in norm.column_names if c != "index"],
            features=TOKENIZED,
            num_proc=num_proc,
            desc=f"Tokenizing {split}",
        )
        report[split] = split_report(tokenized)
        check_dropped(split, report[split], ds_cfg.max_dropped_fraction)
        kept = tokenized.filter(
            _is_kept, input_columns="drop_reason", num_proc=num_proc, desc=f"Dropping bad {split} rows"
        )
        kept = kept.remove_columns(["drop_reason", "trimmed_turns"])
        stats = check_invariants(kept, tokenizer)
        report[split]["trained_tokens"] = stats["trained_tokens"]
        logger.info("%s: %s", split, summary_line(report[split]))
        out[split] = kept
    return Prepared(out.get("train"), out.get("eval"), fmt, reason, report)


def resolve_format(ds: Dataset, fmt: str) -> tuple[str, str]:
    if fmt == "auto":
        return data.detect_format(ds)
    data.check_columns(ds, fmt)
    return fmt, "set by dataset.format"


def _is_kept(drop_reason) -> bool:
    return drop_reason is None


def _prepare_row(example: dict, tokenizer, train_on: str, max_length: int, code_version: str) -> dict:
    """Tokenize, audit and truncate one row; a dropped row keeps its reason (so it survives caching)."""
    try:
        tokens = tokenize_example(example, tokenizer, train_on)
        audit(tokens, example, tokenizer, train_on)
    except DropExample as drop:
        return _dropped(drop.reason)
    ids, labels = tokens["input_ids"], tokens["labels"]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]  # keep the start, as TRL's keep_start
    n_trained = sum(label != IGNORE for label in labels)
    if n_trained == 0:
        return _dropped("all_trained_tokens_truncated")
    return {
        "input_ids": ids,
        "labels": labels,
        "num_tokens": len(ids),
        "num_trained_tokens": n_trained,
        "truncated": truncated,
        "trimmed_turns": tokens["trimmed_turns"],
        "drop_reason": None,
    }


def _dropped(reason: str) -> dict:
    return {
        "input_ids": [],
        "labels": [],
        "num_tokens": 0,
        "num_trained_tokens": 0,
        "truncated": False,
        "trimmed_turns": 0,
        "drop_reason": reason,
    }


def split_report(tokenized: Dataset) -> dict:
    """Counts over a tokenized split that still has its dropped rows."""
    reasons = list(tokenized["drop_reason"])
    dropped = Counter(r for r in reasons if r is not None)
    kept = [r is None for r in reasons]
    num_tokens = list(tokenized["num_tokens"])
    return {
        "rows": len(reasons),
        "kept": sum(kept),
        "dropped": dict(dropped.most_common()),
        "truncated": sum(tokenized["truncated"]),
        "trailing_user_turns_trimmed": sum(1 for t in tokenized["trimmed_turns"] if t),
        "tokens": sum(n for n, k in zip(num_tokens, kept, strict=True) if k),
        "max_tokens": max((n for n, k in zip(num_tokens, kept, strict=True) if k), default=0),
    }


def check_dropped(split: str, rep: dict, max_fraction: float) -> None:
    n_dropped = rep["rows"] - rep["kept"]
    if n_dropped == 0 or (rep["kept"] and n_dropped / rep["rows"] <= max_fraction):
        return
    reasons = ", ".join(f"{r} {n}" for r, n in rep["dropped"].items())
    fix = (
        "fix the data (see `sftlib masks` for the kept rows' indices), or raise dataset.max_dropped_fraction."
    )
    if "all_trained_tokens_truncated" in rep["dropped"]:
        fix = "raise model.max_seq_length, " + fix
    limit = "leaving none" if not rep["kept"] else f"more than dataset.max_dropped_fraction={max_fraction}"
    raise SftlibError(
        f"{n_dropped} of {rep['rows']} {split} examples would be dropped ({n_dropped / rep['rows']:.0%}, {limit}): {reasons}.",
        fix,
    )


def summary_line(rep: dict) -> str:
    dropped = ", ".join(f"{r} {n}" for r, n in rep["dropped"].items()) or "none"
    return (
        f"{rep['kept']}/{rep['rows']} examples kept; dropped: {dropped}; truncated: {rep['truncated']}; "
        f"trailing user turns trimmed: {rep['trailing_user_turns_trimmed']}"
    )


# --------------------------------------------------------------------------- display


def token_view(input_ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, bool, bool]]:
    """(text, trained, is_special) per token, for a coloured view of what the loss covers."""
    special = {tokenizer.convert_tokens_to_ids(t) for t in added_tokens(tokenizer)}
    return [
        (
            tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False),
            label != IGNORE,
            i in special,
        )
        for i, label in zip(input_ids, labels, strict=True)
    ]


MARKS = {"brackets": ("[[", "]]"), "ansi": ("\033[42m", "\033[0m")}  # (open, close) of a trained run


def render_view(view: list[tuple[str, bool, bool]], style: str = "brackets") -> str:
    """Show a token_view: "brackets" wraps trained runs in [[ ]], "ansi" colours them green,
    "html" gives every token a green (trained) or grey background."""
    if style == "html":
        escape = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\n": "↵<br>"}
        return "".join(
            f'<span style="background:{"#c8f7c5" if trained else "#eeeeee"}">'
            + "".join(escape.get(c, c) for c in text)
            + "</span>"
            for text, trained, _special in view
        )
    opening, closing = MARKS[style]
    out, inside = [], False
    for text, trained, _special in view:
        if trained != inside:
            out.append(opening if trained else closing)
            inside = trained
        out.append(text)
    return "".join(out) + (closing if inside else "")


def format_report(prepared: Prepared, cfg: RunConfig, tokenizer) -> str:
    """The text `sftlib check` prints: format, per-split counts, and the first example's mask."""
    lines = [f"dataset: {cfg.dataset.name}", f"format: {prepared.format} ({prepared.format_reason})"]
    lines += [f"{split}: {summary_line(rep)}" for split, rep in prepared.report.items()]
    for split, part in (("train", prepared.train), ("eval", prepared.eval)):
        if part is not None and len(part):
            lines += length_lines(split, part)
    ds = prepared.train if prepared.train is not None else prepared.eval
    if ds is not None and len(ds):
        row = ds[0]
        lines.append(f"example (row {row['index']}), trained tokens in [[ ]]:")
        lines.append(render_view(token_view(row["input_ids"], row["labels"], tokenizer)))
    return "\n".join(lines)


def length_lines(split: str, ds: Dataset) -> list[str]:
    """Token-length percentiles of prompt (untrained) and completion (trained) parts, and the trained fraction."""
    import numpy as np

    total = np.asarray(ds["num_tokens"])
    trained = np.asarray(ds["num_trained_tokens"])
    qs = (50, 90, 99, 100)

    def pct(values) -> str:
        return ", ".join(f"p{q}={int(np.percentile(values, q))}" for q in qs)

    return [
        f"{split} prompt tokens: {pct(total - trained)}",
        f"{split} completion tokens: {pct(trained)}",
        f"{split} trained-token fraction: {trained.sum() / max(total.sum(), 1):.3f}",
    ]


def write_masks_jsonl(ds: Dataset, tokenizer, path: Path, with_text: bool = False) -> int:
    """One JSON line per example: index, input_ids, labels (+ text and trained runs decoded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in ds:
            record = {"index": row["index"], "input_ids": row["input_ids"], "labels": row["labels"]}
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
