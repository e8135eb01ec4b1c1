"""The one way every stage reads a source's rows, so that what is scored is read exactly as what was trained.

`load(cfg)` loads each source of the config (hub id, file, folder), detects its format and says so in
the log; `Source.rows(split)` normalizes one of its splits, on as many cores as `sftlib.data.dataset`
masks it with. Training masks those rows (`sftlib.data.dataset`); generation's prompts, the tool
loop and the views read them through `read_rows`, which builds each conversation and its template
context exactly as masking does and skips the rows masking drops, counting each reason.
`take_turns` interleaves several sources' rows, so that a mixture's every source is asked.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
from collections.abc import Iterator

from datasets import Dataset

from sftlib.config import DatasetConfig, RunConfig
from sftlib.data import conversations, formats, rendering, sources
from sftlib.data.conversations import Conversation
from sftlib.errors import DropExample

logger = logging.getLogger("sftlib")

# Splits this large are normalized and masked on every core (unless training.dataset_num_proc says
# otherwise): below it, starting the worker processes costs about what they save.
PARALLEL_ROWS = 20_000


def num_proc_for(cfg: RunConfig, rows: int) -> int | None:
    """training.dataset_num_proc when set; otherwise every core (up to 8) for a split of PARALLEL_ROWS
    rows or more: rendering and labelling are Python, one core each, and a large split waits on them."""
    if cfg.dataset_num_proc is not None:
        return cfg.dataset_num_proc
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, 8) if rows >= PARALLEL_ROWS and cores > 1 else None


@dataclasses.dataclass
class Source:
    """One source of the config, loaded: its splits as read (`train`, and `eval` when configured) and
    its format. `position` is its place in `dataset:` (the `source` column of a mixture's examples)."""

    position: int
    config: DatasetConfig
    format: str
    format_reason: str
    splits: dict[str, Dataset]
    cfg: RunConfig

    def rows(self, split: str, limit: int | None = None) -> Dataset | None:
        """The split normalized (its first `limit` rows), or None where the source has no such split."""
        if split not in self.splits:
            return None
        ds = self.splits[split]
        ds = ds if limit is None else ds.select(range(min(limit, len(ds))))
        return sources.normalize(ds, self.format, num_proc=num_proc_for(self.cfg, len(ds)))


def load(cfg: RunConfig) -> list[Source]:
    """Every source of the config, loaded and its format detected (or checked against dataset.format)."""
    loaded = []
    mixture = len(cfg.sources) > 1
    for position, src in enumerate(cfg.sources):
        splits = sources.load_raw(src, seed=cfg.seed)
        fmt, reason = formats.resolve_format(splits["train"], src.format)
        logger.info("dataset format%s: %s (%s)", f" of {src.name}" if mixture else "", fmt, reason)
        loaded.append(Source(position, src, fmt, reason, splits, cfg))
    return loaded


@dataclasses.dataclass
class Row:
    """A normalized row as masking reads it: a conversation's checked messages and its template context
    (the row's tools and chat-template arguments over its source's); None for both in a row of
    prompt/completion strings or text."""

    data: dict
    conversation: Conversation | None = None
    context: dict | None = None


def read_rows(source: Source, split: str, dropped: collections.Counter | None = None) -> Iterator[Row]:
    """The rows of `split` in order, each read as masking reads it; a conversation masking drops at this
    stage is skipped, its reason counted in `dropped`."""
    rows = source.rows(split)
    for data in rows if rows is not None else ():
        if not conversations.is_chat(data):
            yield Row(data)
            continue
        try:
            conversation = conversations.conversation(data)
            context = rendering.template_context(data, source.config.chat_template_kwargs)
        except DropExample as drop:
            if dropped is not None:
                dropped[drop.reason] += 1
            continue
        yield Row(data, conversation, context)


def take_turns(per_source: list[list], limit: int | None = None) -> list:
    """One item of each source in turn (then of those that still have some), up to `limit`."""
    mixed = [item for turn in itertools.zip_longest(*per_source) for item in turn if item is not None]
    return mixed if limit is None else mixed[:limit]
