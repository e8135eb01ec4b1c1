"""Views of prepared examples and results: which tokens the loss covers, tables, the example browser.

Display only: every function here reads what other modules computed (a prepared split, a report,
generated answers) and returns text, HTML or a widget; nothing decides what is trained. Every piece
of user text in HTML is escaped. Text views serve `sftlib check` / `sftlib masks`; HTML views serve
the notebooks and the standalone pages they save.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from datasets import Dataset

from sftlib import chat_view
from sftlib.masking import IGNORE, trained_runs


def special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)


def token_view(input_ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, bool, bool]]:
    """(text, trained, is_special) per token, for a coloured view of what the loss covers."""
    special = special_ids(tokenizer)
    return [
        (
            tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False),
            label != IGNORE,
            i in special,
        )
        for i, label in zip(input_ids, labels, strict=True)
    ]


def render_view(view: list[tuple[str, bool, bool]]) -> str:
    """A token_view as plain text, each trained run wrapped in [[ ]]."""
    out, inside = [], False
    for text, trained, _special in view:
        if trained != inside:
            out.append("[[" if trained else "]]")
            inside = trained
        out.append(text)
    return "".join(out) + ("]]" if inside else "")


def format_report(prepared, cfg, tokenizer) -> str:
    """The text `sftlib check` prints: format, per-split counts and warnings, and the first example's mask."""
    from sftlib import reports

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


def split_rows(report: dict) -> list[dict]:
    """Per split: rows, kept, examples and tokens, and how many rows carry each agentic part."""
    keys = ("rows", "kept", "examples", "tokens", "max_tokens")
    return [
        {"split": split, **{k: rep[k] for k in keys}}
        | {f"with {key.replace('_', ' ')}": n for key, n in rep["rows_with"].items()}
        for split, rep in report.items()
    ]


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


# --------------------------------------------------------------------------- HTML: tokens

MASKED, TRAINED, MASKED_SPECIAL, TRAINED_SPECIAL = 0, 1, 2, 3
# state -> (legend label, background colour); blue/grey stay readable for red-green colour blindness.
TOKEN_STATES = {
    MASKED: ("masked: no loss (label -100)", "#e0e0e0"),
    TRAINED: ("trained: loss on this token", "#9ecae1"),
    MASKED_SPECIAL: ("masked special token", "#9e9e9e"),
    TRAINED_SPECIAL: ("trained special token", "#3182bd"),
}
BOX = "border-radius:3px;padding:0 1px;margin:0 1px 1px 0;border:1px solid #fff"


def token_states(input_ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, int]]:
    """(token text, state) per token: trained or masked, special tokens apart (TOKEN_STATES)."""
    return [
        (text, int(trained) + 2 * int(special))
        for text, trained, special in token_view(input_ids, labels, tokenizer)
    ]


def legend_html(states: dict[int, tuple[str, str]] = TOKEN_STATES) -> str:
    items = " ".join(
        f'<span style="background:{c};{BOX}">{html.escape(label)}</span>' for label, c in states.values()
    )
    return f'<div class="legend" style="margin-bottom:6px">Legend: {items}</div>'


def _visible(text: str) -> str:
    """Escape a token's text and make its whitespace visible: · a space, → a tab, ↵ then a line break."""
    out = html.escape(text).replace(" ", "·").replace("\t", "→")
    return out.replace("\r", "␍").replace("\n", "↵<br>")


def tokens_html(tokens: list[tuple[str, int]], states: dict[int, tuple[str, str]] = TOKEN_STATES) -> str:
    """Colour each (token text, state) by its state; the decoded text of each id, special tokens included."""
    from sftlib.errors import SftlibError

    unknown = sorted({s for _, s in tokens} - set(states))
    if unknown:
        raise SftlibError(f"token states {unknown} have no colour.", f"use states from {sorted(states)}.")
    spans = "".join(
        f'<span title="{html.escape(repr(text))}" style="background:{states[state][1]};{BOX}">{_visible(text)}</span>'
        for text, state in tokens
    )
    return f'<div class="tokens" style="font-family:monospace;line-height:1.9">{spans}</div>'


def example_title(row: dict) -> str:
    turn = f", assistant turn {row['turn']} (expanded)" if row.get("turn", -1) >= 0 else ""
    truncated = ", truncated" if row.get("truncated") else ""
    return f"row {row['index']}{turn}: {row['num_trained_tokens']} of {row['num_tokens']} tokens trained{truncated}"


def example_html(row: dict, tokenizer, source=None) -> str:
    """One prepared example: its source row, counts, and its tokens coloured by what the loss covers.

    `source` (dataset.source_rows) finds the normalized row it came from: its messages are shown
    above the tokens, with tool schemas, tool calls, tool results and reasoning labelled apart.
    """
    states = token_states(row["input_ids"], row["labels"], tokenizer)
    messages = chat_view.conversation_html(source(row) or {}) if source is not None else ""
    return f"<div><b>{html.escape(example_title(row))}</b>{messages}{tokens_html(states)}</div>"


def _legends(source) -> str:
    return legend_html() + (chat_view.parts_legend() if source is not None else "")


def masking_view_html(ds, tokenizer, n: int, source=None) -> str:
    """The first `n` examples of a prepared split, under one legend (with `source`, their messages too)."""
    rows = ds.select(range(min(n, len(ds))))
    return _legends(source) + "".join(example_html(row, tokenizer, source) for row in rows)


# --------------------------------------------------------------------------- HTML: tables


def table_html(rows: list[dict], columns: list[str] | None = None) -> str:
    """A left-aligned HTML table of dicts (no pandas needed)."""
    columns = columns or (list(rows[0]) if rows else [])
    cell = "text-align:left;padding:2px 8px;vertical-align:top"
    head = "".join(f"<th style='{cell}'>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td style='{cell}'>{html.escape(str(r.get(c, '')))}</td>" for c in columns)
        + "</tr>"
        for r in rows
    )
    return f"<table class='sftlib' style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"


def drop_rows(report: dict) -> list[dict]:
    """One row per split and outcome (kept, expanded, truncated, each drop reason) with its count and meaning."""
    from sftlib.conversations import DROP_REASONS

    rows = []
    for split, rep in report.items():
        outcomes = [
            ("rows", rep["rows"], "rows in the split"),
            ("kept", rep["kept"], f"trained on, as {rep['examples']} examples"),
            ("truncated", rep["truncated"], "examples kept, cut at max_seq_length"),
            (
                "trimmed",
                rep["leading_assistant_turns_trimmed"],
                "rows whose leading assistant turns were trimmed",
            ),
        ]
        if rep["expanded_conversations"]:
            outcomes.append(
                ("expanded", rep["expanded_conversations"], "conversations made one example per turn")
            )
        outcomes += [(f"dropped: {r}", n, DROP_REASONS[r]) for r, n in rep["dropped"].items()]
        rows += [{"split": split, "outcome": o, "count": n, "meaning": m} for o, n, m in outcomes]
    return rows


def run_summary(info: dict) -> list[dict]:
    """run_info.json as key/value rows, without the long history and version lists; the fast path's
    decisions (what was chosen, and why) as rows of their own."""
    skip = {"log_history", "versions", "data", "fast_path", "rank_param_fingerprints"}
    rows = [{"key": k, "value": v} for k, v in info.items() if k not in skip]
    return rows + fast_path_rows(info.get("fast_path"))


def fast_path_rows(plan: dict | None) -> list[dict]:
    """The decisions in run_info.json["fast_path"] (sftlib.trainer.SftlibTrainer.plan_record) as key/value rows."""
    if not plan:
        return []
    if not plan["used"]:
        return [{"key": "fast path", "value": f"off: {plan['why']}"}]
    timing = plan.get("pass_timing") or {}
    timed = timing.get("tokens_per_second")
    pass_from = plan["pass_tokens_from"] + (f" (tokens/s by pass_tokens: {timed})" if timed else "")
    precision = plan["precision"] + (
        f", frozen base stored in {plan['frozen_weights_dtype']}" if plan.get("frozen_weights_dtype") else ""
    )
    seconds = plan.get("precision_seconds")
    if seconds:  # the timed candidates: seconds of the model's linear layers per pass, over the shapes timed
        precision += " (" + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()) + " timed per pass)"
    return [
        {"key": "fast path", "value": plan["why"]},
        {"key": "precision", "value": f"{precision}: {plan['precision_from']}"},
        {"key": "pass_tokens", "value": f"{plan['pass_tokens']}: {pass_from}"},
        {"key": "attention", "value": f"{plan['attention'] or 'as loaded'}: {plan['attention_from']}"},
        {
            "key": "activation checkpointing",
            "value": f"{'on' if plan['activation_checkpointing'] else 'off'}: {plan['checkpointing_from']}",
        },
    ]


def before_after_html(rows: list[dict]) -> str:
    """Prompt / reference / base / tuned; answers marked ✓ (green) or ✗ (red) when there is a reference."""
    from sftlib.scoring import exact_match, prompt_text

    cell = "border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;font-family:monospace"
    scored = any(row.get("reference") is not None for row in rows)
    columns = ("prompt", "reference", "base", "tuned") if scored else ("prompt", "base", "tuned")
    head = "".join(f'<th style="{cell}">{c}</th>' for c in columns)
    body = []
    for row in rows:
        ref = row.get("reference")
        tds = [f'<td style="{cell}">{html.escape(prompt_text(row.get("prompt", "")))}</td>']
        if scored:
            tds.append(f'<td style="{cell}">{html.escape(str(ref))}</td>')
        for col in ("base", "tuned"):
            text = html.escape(str(row.get(col, "")))
            if ref is None:
                tds.append(f'<td style="{cell}">{text}</td>')
                continue
            ok = exact_match(row.get(col), ref)
            colour = "#c7e9c0" if ok else "#fcbba1"
            tds.append(f'<td style="{cell};background:{colour}">{"✓" if ok else "✗"} {text}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table class="sftlib" style="border-collapse:collapse"><tr>{head}</tr>{"".join(body)}</table>'


# --------------------------------------------------------------------------- the example browser


def example_browser(ds, tokenizer, source=None):
    """A widget over the examples of a prepared split: a full-width slider, previous/next buttons, and the
    example's tokens coloured as in notebook 02."""
    import ipywidgets as widgets

    last = max(len(ds) - 1, 0)
    slider = widgets.IntSlider(
        value=0,
        min=0,
        max=last,
        description="example",
        continuous_update=False,
        layout=widgets.Layout(width="100%"),
        style={"description_width": "initial"},
    )
    previous, following = widgets.Button(description="◀ previous"), widgets.Button(description="next ▶")
    view = widgets.HTML(_legends(source) + example_html(ds[0], tokenizer, source))

    def show(change):
        view.value = _legends(source) + example_html(ds[change["new"]], tokenizer, source)

    slider.observe(show, names="value")
    previous.on_click(lambda _: setattr(slider, "value", max(slider.value - 1, 0)))
    following.on_click(lambda _: setattr(slider, "value", min(slider.value + 1, last)))
    return widgets.VBox(
        [widgets.HBox([previous, following]), slider, view], layout=widgets.Layout(width="100%")
    )


def browse(ds, tokenizer, n_static: int = 3, source=None):
    """The example browser when a person is at the notebook; under the pipeline (no one to move a slider,
    and widgets don't render in exported HTML) the first `n_static` examples as static HTML."""
    from IPython.display import HTML

    from sftlib.notebook import is_headless

    if not is_headless():
        return example_browser(ds, tokenizer, source)
    return HTML(masking_view_html(ds, tokenizer, n_static, source))


def turn_by_turn_html(ds, tokenizer, source=None) -> str:
    """The first multi-turn conversation of a prepared split, example by example: an expanded conversation
    (one example per assistant turn, each with its history as the model sees it at inference), or one
    example training several turns. Empty when every example trains one turn of its own conversation."""
    from collections import Counter

    # A row is its source's (a mixture) and its index there.
    sources = ds["source"] if "source" in ds.column_names else [0] * len(ds)
    indices = list(zip(sources, ds["index"], strict=True))
    runs = [len(trained_runs(labels)) for labels in ds["labels"]]
    per_row = Counter(indices)
    pick = next(
        (i for i, (index, n) in enumerate(zip(indices, runs, strict=True)) if per_row[index] > 1 or n > 1),
        None,
    )
    if pick is None:
        return ""
    rows = [k for k, index in enumerate(indices) if index == indices[pick]]
    return _legends(source) + "".join(example_html(ds[k], tokenizer, source) for k in rows)


SPLITS = ("train", "eval")


def gate_rows(prepared, cfg) -> list[dict]:
    """Per split (per source and split in a mixture): rows dropped against that source's gate
    (dataset.max_dropped_fraction), and the trained share."""
    entries = [(split, rep, cfg.sources[0].max_dropped_fraction) for split, rep in prepared.report.items()]
    if prepared.sources:
        pairs = zip(prepared.sources, cfg.sources, strict=True)
        entries = [
            (f"{e['name']} {sp}", e[sp], s.max_dropped_fraction) for e, s in pairs for sp in e if sp in SPLITS
        ]
    return [
        {
            "split": split,
            "rows": rep["rows"],
            "kept": rep["kept"],
            "dropped": f"{1 - rep['kept'] / rep['rows']:.1%} (gate: {gate:.0%})",
            "examples": rep["examples"],
            "trained tokens": f"{rep['trained_tokens']} of {rep['tokens']} ({rep['trained_tokens'] / max(rep['tokens'], 1):.1%})",
            "expanded": rep["expanded_conversations"],
        }
        for split, rep, gate in entries
    ]
