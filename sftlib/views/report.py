"""The data report as text, for the terminal (`sftlib check`): format, per-split counts and warnings,
token lengths, and the first example's mask with its trained tokens in [[ ]].
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from sftlib.data.export import token_view
from sftlib.views.tokens import render_view


def format_report(prepared, cfg, tokenizer) -> str:
    """The text `sftlib check` prints: format, per-split counts and warnings, and the first example's mask."""
    from sftlib.data import reports

    lines = [f"dataset: {cfg.dataset_label}", f"format: {prepared.format} ({prepared.format_reason})"]
    for source in prepared.sources:  # a mixture: each source's own figures
        for split in ("train", "eval"):
            if split in source:
                rep = source[split]
                lines.append(
                    f"  {source['name']} {split}: {reports.summary_line(rep)}; {rep['tokens']} tokens, "
                    f"{rep['trained_tokens']} trained; {rep['share_of_examples']:.1%} of the mixture's examples"
                )
    for split, rep in prepared.report.items():
        lines.append(f"{split}: {reports.summary_line(rep)}")
        lines.append(f"{split} rows with {carried_line(rep)}")
        lines += [f"  warning: {w}" for w in reports.warnings(split, rep)]
    for split, part in (("train", prepared.train), ("eval", prepared.eval)):
        if part is not None and len(part):
            lines += length_lines(split, part)
    ds = prepared.train if prepared.train is not None else prepared.eval
    if ds is not None and len(ds):
        row = ds[0]
        lines.append(f"example (row {row['index']}), trained tokens in [[ ]]:")
        lines.append(render_view(token_view(row["input_ids"], row["labels"], tokenizer)))
    return "\n".join(lines)


def carried_line(rep: dict) -> str:
    """How many rows carry tool schemas, tool calls, tool results and reasoning (reports.split_report)."""
    return ", ".join(f"{key.replace('_', ' ')}: {n}" for key, n in rep["rows_with"].items())


def length_lines(split: str, ds: Dataset) -> list[str]:
    """Untruncated token-length percentiles of prompt (untrained) and completion (trained) parts."""
    total = np.asarray(ds["untruncated_tokens"])
    trained = np.asarray(ds["untruncated_trained_tokens"])
    qs = (50, 90, 99, 100)

    def pct(values) -> str:
        return ", ".join(f"p{q}={int(np.percentile(values, q))}" for q in qs)

    return [
        f"{split} prompt tokens: {pct(total - trained)}",
        f"{split} completion tokens: {pct(trained)}",
        f"{split} trained-token fraction: {trained.sum() / max(total.sum(), 1):.3f}",
    ]
