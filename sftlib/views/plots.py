"""Figures for notebooks and run folders (HTML views are `sftlib.views.tokens` and `sftlib.views.tables`).

Every function builds a `matplotlib.figure.Figure` directly (no pyplot state, so it works headless
and in threads), returns it, and writes a PNG when `path` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from sftlib.inference.scoring import exact_match, prompt_text

CORRECT_COLOUR, WRONG_COLOUR = "#c7e9c0", "#fcbba1"


def _save(fig: Figure, path) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def loss_curve(log_history: list[dict], path=None) -> Figure:
    """Train loss (and eval loss, when logged) against the optimizer step.

    `log_history` is `trainer.state.log_history`: dicts with `step` and `loss` or `eval_loss`.
    """
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), marker=".", label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    if not train and not evals:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def length_histograms(
    prompt_lengths: Sequence[int], completion_lengths: Sequence[int], max_seq_length: int, path=None
) -> Figure:
    """Token counts of prompts and completions, side by side, each axis zoomed to its data.

    `max_seq_length` is a dashed line where it falls in view, else named in the title: a prompt past
    it leaves no room for its completion; a completion past it is truncated.
    """
    fig = Figure(figsize=(9, 3.5))
    for i, (lengths, name) in enumerate(((prompt_lengths, "prompt"), (completion_lengths, "completion"))):
        ax = fig.add_subplot(1, 2, i + 1)
        lengths = list(lengths)
        if lengths:
            ax.hist(lengths, bins=min(40, max(1, len(set(lengths)))), color="#6baed6")
        top = max(lengths, default=1)
        over = sum(n > max_seq_length for n in lengths)
        if max_seq_length <= top * 1.15:
            ax.axvline(
                max_seq_length, color="#d62728", linestyle="--", label=f"max_seq_length = {max_seq_length}"
            )
            ax.legend(loc="upper right")
            ax.set_xlim(0, max(top, max_seq_length) * 1.05)
            limit = f"{over} over the limit"
        else:
            ax.set_xlim(0, top * 1.1)
            limit = f"limit {max_seq_length} off to the right"
        ax.set_title(f"{name} tokens (n={len(lengths)}, {limit})")
        ax.set_xlabel("tokens")
        ax.set_ylabel("examples")
    fig.tight_layout()
    return _save(fig, path)


def trained_fraction_histogram(fractions: Sequence[float], path=None) -> Figure:
    """Per example, the fraction of its tokens that carry loss (0 = fully masked, 1 = all trained)."""
    fractions = list(fractions)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.hist(fractions, bins=20, range=(0.0, 1.0), color="#9ecae1", edgecolor="white")
    zero = sum(f == 0 for f in fractions)
    ax.set_title(f"Trained fraction per example (n={len(fractions)}, {zero} with nothing trained)")
    ax.set_xlabel("fraction of tokens with loss")
    ax.set_ylabel("examples")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    return _save(fig, path)


def _short(text: str, width: int) -> str:
    text = str(text).replace("\n", "↵ ")
    return text if len(text) <= width else text[: width - 1] + "…"


def before_after_table(rows: list[dict], path=None, max_chars: int = 48) -> Figure:
    """A table of prompt / reference / base / tuned; answers are green when they match the reference
    exactly (sftlib.inference.scoring), red when not, plain where there is no reference. Each row is a dict with
    `prompt` (a string or chat messages), `reference` (or None), `base`, `tuned`."""
    scored = any(row.get("reference") is not None for row in rows)
    columns = ("prompt", "reference", "base", "tuned") if scored else ("prompt", "base", "tuned")
    cells, colours = [], []
    for row in rows:
        ref = row.get("reference")
        line, colour = [], []
        for col in columns:
            value = prompt_text(row.get("prompt", "")) if col == "prompt" else row.get(col, "")
            text = _short(value, max_chars)
            if col in ("base", "tuned") and ref is not None:
                ok = exact_match(row.get(col), ref)
                text = ("✓ " if ok else "✗ ") + text
                colour.append(CORRECT_COLOUR if ok else WRONG_COLOUR)
            else:
                colour.append("white")
            line.append(text)
        cells.append(line)
        colours.append(colour)
    fig = Figure(figsize=(11, 0.6 + 0.32 * max(1, len(rows))))
    ax = fig.add_subplot()
    ax.axis("off")
    if cells:
        table = ax.table(cellText=cells, cellColours=colours, colLabels=columns, loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.auto_set_column_width(list(range(len(columns))))
    else:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, path)
