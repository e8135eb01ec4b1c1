"""Figures for notebooks and run folders, and HTML views of tokens and answers.

Every figure function builds a `matplotlib.figure.Figure` directly (no pyplot state, so it works
headless and in threads), returns it, and writes a PNG when `path` is given. The HTML helpers
return a string for `IPython.display.HTML`; every piece of user text in them is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

TRAINED, MASKED = 1, 0
# state -> (legend label, background colour); the colours stay readable for red-green colour blindness.
TOKEN_STATES = {
    MASKED: ("masked: no loss (label -100)", "#e0e0e0"),
    TRAINED: ("trained: loss on this token", "#9ecae1"),
}
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
    """Token counts of prompts and completions, side by side; `max_seq_length` is a dashed line.

    A prompt past the line leaves no room for its completion; a completion past it is truncated.
    """
    fig = Figure(figsize=(9, 3.5))
    for i, (lengths, name) in enumerate(((prompt_lengths, "prompt"), (completion_lengths, "completion"))):
        ax = fig.add_subplot(1, 2, i + 1)
        lengths = list(lengths)
        if lengths:
            ax.hist(lengths, bins=min(40, max(1, len(set(lengths)))), color="#6baed6")
        ax.axvline(
            max_seq_length, color="#d62728", linestyle="--", label=f"max_seq_length = {max_seq_length}"
        )
        over = sum(n > max_seq_length for n in lengths)
        ax.set_title(f"{name} tokens (n={len(lengths)}, {over} over the limit)")
        ax.set_xlabel("tokens")
        ax.set_ylabel("examples")
        ax.legend(loc="upper right")
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


def _prompt_text(prompt) -> str:
    """A chat prompt shows its last user message; a string shows itself."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content", ""))
    return str(prompt)


def _short(text: str, width: int) -> str:
    text = str(text).replace("\n", "↵ ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_correct(answer, reference) -> bool:
    return answer is not None and str(answer).strip() == str(reference).strip()


def before_after_table(rows: list[dict], path=None, max_chars: int = 48) -> Figure:
    """A table of prompt / reference / base / tuned; answers are green when they match exactly, red
    when not. Each row is a dict with `prompt` (a string or chat messages), `reference`, `base`,
    `tuned`."""
    columns = ("prompt", "reference", "base", "tuned")
    cells, colours = [], []
    for row in rows:
        ref = row.get("reference", "")
        line, colour = [], []
        for col in columns:
            value = _prompt_text(row.get("prompt", "")) if col == "prompt" else row.get(col, "")
            text = _short(value, max_chars)
            if col in ("base", "tuned"):
                ok = _is_correct(row.get(col), ref)
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


def before_after_html(rows: list[dict]) -> str:
    """The same table as `before_after_table`, as escaped HTML for notebooks."""
    cell = 'style="border:1px solid #ccc;padding:2px 6px;text-align:left;font-family:monospace"'
    head = "".join(f"<th {cell}>{c}</th>" for c in ("prompt", "reference", "base", "tuned"))
    body = []
    for row in rows:
        ref = row.get("reference", "")
        tds = [
            f"<td {cell}>{html.escape(_prompt_text(row.get('prompt', '')))}</td>",
            f"<td {cell}>{html.escape(str(ref))}</td>",
        ]
        for col in ("base", "tuned"):
            ok = _is_correct(row.get(col), ref)
            colour = CORRECT_COLOUR if ok else WRONG_COLOUR
            mark = "✓" if ok else "✗"
            text = html.escape(str(row.get(col, "")))
            tds.append(f'<td {cell[:-1]};background:{colour}">{mark} {text}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table style="border-collapse:collapse"><tr>{head}</tr>{"".join(body)}</table>'


def _visible(text: str) -> str:
    """Escape a token's text and make its whitespace visible: · for a space, → for a tab, ↵ then a
    real line break for a newline."""
    out = html.escape(text).replace(" ", "·").replace("\t", "→")
    return out.replace("\r", "␍").replace("\n", "↵<br>")


def token_view_html(tokens: list[tuple[str, int]], states: dict[int, tuple[str, str]] | None = None) -> str:
    """Colour each token by its state, with a legend; the input is (token_text, state) pairs.

    Token text is shown literally (special tokens such as `<|im_end|>` included), so give the
    decoded text of each id (`tokenizer.decode([id])`), not the BPE piece. `states` maps a state
    to (legend label, colour); the default is 0 = masked, 1 = trained.
    """
    states = TOKEN_STATES if states is None else states
    unknown = sorted({s for _, s in tokens} - set(states))
    if unknown:
        from sftlib.errors import SftlibError

        raise SftlibError(f"token states {unknown} have no colour.", f"use states from {sorted(states)}.")
    box = "border-radius:3px;padding:0 1px;margin:0 1px 1px 0;border:1px solid #fff"
    legend = " ".join(
        f'<span style="background:{colour};{box}">{html.escape(label)}</span>'
        for label, colour in states.values()
    )
    spans = "".join(
        f'<span title="{html.escape(repr(text))}" style="background:{states[state][1]};{box}">'
        f"{_visible(text)}</span>"
        for text, state in tokens
    )
    return (
        '<div style="font-family:monospace;line-height:1.8;white-space:normal">'
        f'<div class="legend" style="margin-bottom:6px">Legend: {legend}</div>'
        f"<div>{spans}</div></div>"
    )
