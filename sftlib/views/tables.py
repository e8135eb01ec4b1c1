"""Tables: the data report, drops, the drop gate, the run summary and before/after answers, as rows
(dicts) and as HTML.

Display only: reads what other modules computed and returns rows or HTML; user text is escaped.
"""

from __future__ import annotations

import html

SPLITS = ("train", "eval")


def split_rows(report: dict) -> list[dict]:
    """Per split: rows, kept, examples and tokens, and how many rows carry each agentic part."""
    keys = ("rows", "kept", "examples", "tokens", "max_tokens")
    return [
        {"split": split, **{k: rep[k] for k in keys}}
        | {f"with {key.replace('_', ' ')}": n for key, n in rep["rows_with"].items()}
        for split, rep in report.items()
    ]


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
    from sftlib.errors import DROP_REASONS

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
    skip = {"log_history", "versions", "data", "plan", "fast_path", "rank_param_fingerprints"}
    rows = [{"key": k, "value": v} for k, v in info.items() if k not in skip]
    return rows + plan_rows(info.get("plan", info.get("fast_path")))  # "fast_path": older runs' name


def plan_rows(plan: dict | None) -> list[dict]:
    """The plan's decisions in run_info.json (`sftlib.training.trainer.SftlibTrainer.plan_record`) as
    key/value rows; older runs' records (the plan under "fast_path", "used" for "fast_path_on") read too."""
    if not plan:
        return []
    if not plan.get("fast_path_on", plan.get("used")):
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
    from sftlib.inference.scoring import exact_match, prompt_text

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
