"""The training set: every configured split loaded, masked, audited, truncated, counted and checked.

`prepare` is the one pass over the data that training, `sftlib check`, `sftlib masks` and the
notebooks share. It tokenizes each row once (sftlib.data.masking), keeps the token counts as columns
(`untruncated_tokens`, `untruncated_trained_tokens`: what plots and reports need, without a second
tokenization), and applies the drop policy: every dropped row is counted under a reason with its
first row and message, and a split that loses more than `dataset.max_dropped_fraction` of its rows
stops the run. Results are cached by datasets: a second run on the same data, tokenizer and
settings tokenizes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, List, Value, concatenate_datasets

from sftlib.config import RunConfig
from sftlib.data import IGNORE_INDEX, audit, conversations, label_cache, loader, masking, reports
from sftlib.data.rendering import Rendering
from sftlib.errors import DropExample, SftlibError

logger = logging.getLogger("sftlib")


TOKENIZED = Features(
    {
        "index": Value("int64"),  # the row in the source split
        "turn": Value("int64"),  # expanded conversations: the trained assistant message; else -1
        "input_ids": List(Value("int64")),
        "labels": List(Value("int64")),
        "num_tokens": Value("int64"),
        "num_trained_tokens": Value("int64"),
        "untruncated_tokens": Value("int64"),
        "untruncated_trained_tokens": Value("int64"),
        "truncated": Value("bool"),
        "expanded": Value("bool"),
        "expansion": Value("string"),  # why a conversation was expanded (masking.EXPANSIONS), else None
        "appended_eos": Value("bool"),
        "boundary_merged": Value("bool"),
        "leading_trimmed": Value("int64"),
        "trailing_trimmed": Value("int64"),
        "drop_reason": Value("string"),
        "drop_detail": Value("string"),
        "carries": List(Value("string")),  # which of conversations.CARRIED the source row holds
        "held_back": Value("int64"),  # the row's assistant turns its data marks not to train
        "audited": Value("bool"),  # the row had the independent audit (audit.check_independently)
    }
)
BOOKKEEPING = (
    "expansion",
    "appended_eos",
    "boundary_merged",
    "leading_trimmed",
    "trailing_trimmed",
    "drop_reason",
    "drop_detail",
    "carries",
    "held_back",
    "audited",
)


@dataclasses.dataclass
class Prepared:
    """Tokenized splits: the columns of TOKENIZED less BOOKKEEPING, one row per training example."""

    train: Dataset | None
    eval: Dataset | None
    format: str
    format_reason: str
    report: dict  # per split: see split_report (a mixture's: its sources' reports merged)
    sources: list[dict] = dataclasses.field(
        default_factory=list
    )  # a mixture: name, format, per-split reports


def prepare(
    cfg: RunConfig, tokenizer, splits=("train", "eval"), limit: int | None = None, stop_ids=None
) -> Prepared:
    """Load, normalize, mask, audit, truncate and check the configured splits of every source.

    `limit` keeps the first rows of each split (previews). `stop_ids` defaults to the model's stop
    tokens (`modeling.stop_token_ids`). Each source is masked by its own settings (format, columns,
    train_on, chat_template_kwargs) and gated by its own max_dropped_fraction (SftlibError past it).
    A mixture's splits are concatenated, the train split shuffled with the seed, and each kept
    example carries its `source` (the position in `dataset:`).
    """
    from sftlib.models import modeling

    stop_ids = sorted(stop_ids if stop_ids is not None else modeling.stop_token_ids(cfg.model, tokenizer))
    mixture = len(cfg.sources) > 1
    parts: dict[str, list[Dataset]] = {split: [] for split in splits}
    per_source = []
    for source in loader.load(cfg):
        src = source.config
        entry = {"name": src.name, "format": source.format, "format_reason": source.format_reason}
        for split in splits:
            norm = source.rows(split, limit)
            if norm is None:
                continue
            if len(norm) == 0:
                raise SftlibError(f"the {split} split of {src.name!r} has no rows.")
            where = f"{split} of {src.name}" if mixture else split
            kept, entry[split] = _mask_split(norm, src, cfg, tokenizer, stop_ids, where)
            parts[split].append(kept.add_column("source", [source.position] * len(kept)) if mixture else kept)
        per_source.append(entry)
    out, report = {}, {}
    for split, kept in parts.items():
        if not kept:
            continue
        if mixture:
            ds = concatenate_datasets(kept)
            ds = ds.shuffle(seed=cfg.seed).flatten_indices() if split == "train" else ds
            report[split] = reports.merge_reports([e[split] for e in per_source if split in e])
            for e in per_source:
                if split in e:
                    e[split]["share_of_examples"] = round(e[split]["examples"] / max(len(ds), 1), 4)
                    e[split]["share_of_trained_tokens"] = round(
                        e[split]["trained_tokens"] / max(report[split]["trained_tokens"], 1), 4
                    )
        else:
            ds, report[split] = kept[0], per_source[0][split]
        logger.info("%s: %s", split, reports.summary_line(report[split]))
        out[split] = ds
    if mixture:
        fmt, reason = "mixture", "; ".join(f"{e['name']}: {e['format']}" for e in per_source)
    else:
        fmt, reason = per_source[0]["format"], per_source[0]["format_reason"]
    return Prepared(out.get("train"), out.get("eval"), fmt, reason, report, per_source if mixture else [])


def _mask_split(norm, src, cfg, tokenizer, stop_ids, where: str) -> tuple[Dataset, dict]:
    """One source's normalized split: masked, audited, reported, gated; returns (kept examples, report)."""
    num_proc = loader.num_proc_for(cfg, len(norm))
    if conversations.is_chat(norm[0]):
        require_chat_template(tokenizer)
    cached = {p for f in norm.cache_files for p in Path(f["filename"]).parent.glob("*.arrow")}
    tokenized = norm.map(
        _prepare_rows,
        batched=True,
        batch_size=256,
        fn_kwargs={
            "tokenizer": tokenizer,
            "stop_ids": stop_ids,
            "train_on": src.train_on,
            "template_kwargs": src.chat_template_kwargs,
            "max_length": cfg.model.max_seq_length,
            "code_version": label_cache.code_version(),
            "audit_rows": len(norm),
            "seed": cfg.seed,
        },
        remove_columns=norm.column_names,
        features=TOKENIZED,
        num_proc=num_proc,
        desc=f"Masking {where}",
    )
    if tokenized.cache_files and all(Path(f["filename"]) in cached for f in tokenized.cache_files):
        logger.info(
            "%s: labels reused from the cache: same rows, code (%s), tokenizer and chat template, stop tokens, "
            "train_on and template arguments",
            where,
            label_cache.code_version(),
        )
    rep = reports.split_report(tokenized)
    for line in reports.warnings(where, rep):
        logger.warning("%s", line)
    reports.check_dropped(where, rep, src.max_dropped_fraction)
    kept = tokenized.filter(
        _is_kept, input_columns="drop_reason", num_proc=num_proc, desc=f"Dropping bad {where} rows"
    )
    kept = kept.remove_columns(list(BOOKKEEPING))
    rep["trained_tokens"] = check_invariants(kept, tokenizer)["trained_tokens"]
    return kept, rep


def require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise SftlibError(
            "the dataset is a conversation, but the tokenizer has no chat template to render it.",
            "set model.chat_template (a .jinja file, or a template TRL bundles such as qwen2_5 (ChatML) or llama3), "
            "or give the data as prompt/completion strings or text (dataset.format, dataset.columns).",
        )


def _is_kept(drop_reason) -> bool:
    return drop_reason is None


def _prepare_rows(
    batch: dict,
    tokenizer,
    stop_ids,
    train_on: str,
    max_length: int,
    code_version: str,
    template_kwargs: dict | None = None,
    audit_rows: int = 0,
    seed: int = 0,
) -> dict:
    """Mask, audit and truncate a batch of rows. A conversation may become several examples; a dropped row
    becomes one record holding its reason (so drops survive caching). `audit_rows` and `seed` choose
    the rows the independent audit re-renders (audit.selected)."""
    out = {name: [] for name in TOKENIZED}
    rows = [{k: v[r] for k, v in batch.items()} for r in range(len(batch["index"]))]
    # Render every row, then tokenize all their texts in one call (the fast tokenizer uses every core).
    rendered = [_rendered(row, tokenizer, stop_ids, train_on, template_kwargs) for row in rows]
    encodings = masking.Encodings(
        tokenizer, [t for r in rendered if isinstance(r, Rendering) for t in r.texts()]
    )
    for example, staged in zip(rows, rendered, strict=True):
        independent = audit.selected(example["index"], audit_rows, seed)
        for record in _prepare_row(
            example,
            tokenizer,
            stop_ids,
            train_on,
            max_length,
            template_kwargs,
            staged,
            encodings,
            independent,
        ):
            for name in TOKENIZED:
                out[name].append(record[name])
    return out


def _rendered(example: dict, tokenizer, stop_ids, train_on: str, template_kwargs):
    """A conversation's Rendering, None for other formats, or the DropExample that rendering raised."""
    try:
        return masking.render_example(example, tokenizer, stop_ids, train_on, template_kwargs)
    except DropExample as drop:
        return drop


def _prepare_row(
    example: dict,
    tokenizer,
    stop_ids,
    train_on: str,
    max_length: int,
    template_kwargs: dict | None = None,
    rendered=None,
    encodings=None,
    independent: bool = True,
) -> list[dict]:
    base = {
        "index": example["index"],
        "leading_trimmed": 0,
        "trailing_trimmed": 0,
        "carries": conversations.carried(example),
        "held_back": 0,
        "audited": independent,
    }
    try:
        if isinstance(rendered, DropExample):
            raise rendered
        examples, conversation = masking.tokenize_example(
            example, tokenizer, stop_ids, train_on, template_kwargs, rendered, encodings
        )
        for tokens in examples:
            audit.check(tokens, example, tokenizer, stop_ids, template_kwargs)
            if independent:
                audit.check_independently(tokens, example, tokenizer, template_kwargs)
    except DropExample as drop:
        return [_dropped(base, drop.reason, drop.detail)]
    if conversation is not None:
        base.update(
            leading_trimmed=conversation.leading,
            trailing_trimmed=conversation.trailing,
            held_back=len(conversation.held_back),
        )
    records = []
    for tokens in examples:
        ids, labels = tokens.input_ids[:max_length], tokens.labels[:max_length]  # keep the start, as TRL
        trained = sum(label != IGNORE_INDEX for label in labels)
        record = {**base, "turn": tokens.turns[0] if tokens.expanded else -1}
        if trained == 0:
            records.append({**_dropped(record, "all_trained_tokens_truncated", ""), **record})
            continue
        records.append(
            {
                **record,
                "input_ids": ids,
                "labels": labels,
                "num_tokens": len(ids),
                "num_trained_tokens": trained,
                "untruncated_tokens": len(tokens.input_ids),
                "untruncated_trained_tokens": sum(label != IGNORE_INDEX for label in tokens.labels),
                "truncated": len(tokens.input_ids) > max_length,
                "expanded": tokens.expanded,
                "expansion": tokens.expansion or None,
                "appended_eos": tokens.appended_eos,
                "boundary_merged": tokens.boundary_merged,
                "drop_reason": None,
                "drop_detail": None,
            }
        )
    return records


def _dropped(base: dict, reason: str, detail: str) -> dict:
    return {
        "turn": -1,
        **base,
        "input_ids": [],
        "labels": [],
        "num_tokens": 0,
        "num_trained_tokens": 0,
        "untruncated_tokens": 0,
        "untruncated_trained_tokens": 0,
        "truncated": False,
        "expanded": False,
        "expansion": None,
        "appended_eos": False,
        "boundary_merged": False,
        "drop_reason": reason,
        "drop_detail": detail or None,
    }


def check_invariants(ds: Dataset, tokenizer) -> dict:
    """Label properties over a tokenized split; SftlibError on any failure.

    Every example is non-empty with len(labels) == len(input_ids); every label is IGNORE_INDEX or equals its
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
        if not ((labels == IGNORE_INDEX) | (labels == ids)).all():
            raise SftlibError("invariant broken: a label is neither -100 nor its input token.")
        if ((ids < 0) | (ids >= vocab)).any():
            raise SftlibError(f"invariant broken: a token id is outside the vocabulary (size {vocab}).")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        per_example = np.add.reduceat((labels != IGNORE_INDEX).astype(np.int64), starts)
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


def row_lookup(cfg: RunConfig, split: str = "train"):
    """For views: a lookup from a prepared example of `split` to the normalized row it came from (its
    messages with every key, its tools), by the example's source and index; None for a row not there.
    The rows are read through the loader, as `prepare` reads them (datasets' cache answers)."""
    norms = [source.rows(split) for source in loader.load(cfg)]
    positions = [{i: k for k, i in enumerate(n["index"])} if n is not None else {} for n in norms]

    def lookup(example: dict) -> dict | None:
        source = example.get("source", 0)
        position = positions[source].get(example["index"])
        return None if position is None else norms[source][position]

    return lookup
