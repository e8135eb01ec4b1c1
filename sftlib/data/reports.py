"""What happened to a split's rows, in numbers: kept, dropped (by reason, with the first row of each),
truncated, trimmed, expanded (with the token cost), and the gate that stops a run past
dataset.max_dropped_fraction. Computed from the bookkeeping columns `sftlib.data.dataset` writes, so a
report costs no second tokenization and survives the datasets cache.
"""

from __future__ import annotations

from collections import Counter

from datasets import Dataset

from sftlib.data import conversations, masking
from sftlib.errors import DROP_REASONS, SftlibError


def split_report(tokenized: Dataset) -> dict:
    """Counts over a tokenized split that still has its dropped records.

    rows / kept: source rows, and those with at least one kept example; examples: kept examples;
    dropped: records per reason, with the first row and message of each (drop_first).
    """
    cols = tokenized.select_columns(
        [
            "index",
            "drop_reason",
            "drop_detail",
            "num_tokens",
            "untruncated_tokens",
            "num_trained_tokens",
            "untruncated_trained_tokens",
            "truncated",
            "expansion",
            "appended_eos",
            "boundary_merged",
            "leading_trimmed",
            "trailing_trimmed",
            "carries",
            "held_back",
            "audited",
        ]
    ).to_dict()
    carries = dict(zip(cols["index"], cols["carries"], strict=True))  # the same on each record of a row
    kept = [r is None for r in cols["drop_reason"]]
    dropped, first = Counter(), {}
    for index, reason, detail in zip(cols["index"], cols["drop_reason"], cols["drop_detail"], strict=True):
        if reason is not None:
            dropped[reason] += 1
            first.setdefault(reason, {"index": index, "detail": detail or DROP_REASONS[reason]})
    expanded: dict[str, dict[int, list[int]]] = {}  # reason -> source row -> its examples' token counts
    for index, is_kept, why, n in zip(
        cols["index"], kept, cols["expansion"], cols["untruncated_tokens"], strict=True
    ):
        if is_kept and why:
            expanded.setdefault(why, {}).setdefault(index, []).append(n)
    tokens = [n for n, k in zip(cols["num_tokens"], kept, strict=True) if k]
    # kept examples whose trained tokens max_seq_length cut: their later turns are not trained
    cut = [
        full - left
        for left, full, k in zip(
            cols["num_trained_tokens"], cols["untruncated_trained_tokens"], kept, strict=True
        )
        if k and left < full
    ]
    seen, held_back, audited = {}, {}, {}  # per source row: repeated on each of its records
    for index, lead, trail, held, checked in zip(
        cols["index"],
        cols["leading_trimmed"],
        cols["trailing_trimmed"],
        cols["held_back"],
        cols["audited"],
        strict=True,
    ):
        seen[index], held_back[index], audited[index] = (lead, trail), held, checked
    by_reason = {why: _expansion(rows) for why, rows in expanded.items()}
    return {
        "rows": len(seen),
        "kept": len({i for i, k in zip(cols["index"], kept, strict=True) if k}),
        "examples": sum(kept),
        "dropped": dict(dropped.most_common()),
        "drop_first": first,
        "truncated": sum(t for t, k in zip(cols["truncated"], kept, strict=True) if k),
        "truncated_trained": len(cut),
        "trained_tokens_truncated": sum(cut),
        "trailing_user_turns_trimmed": sum(1 for _, t in seen.values() if t),
        "leading_assistant_turns_trimmed": sum(1 for lead, _ in seen.values() if lead),
        "turns_held_back": sum(held_back.values()),
        "independently_audited": sum(audited.values()),
        "expanded_conversations": sum(e["conversations"] for e in by_reason.values()),
        "expanded_examples": sum(e["examples"] for e in by_reason.values()),
        "expansion_extra_tokens_pct": _expansion(
            {i: n for rows in expanded.values() for i, n in rows.items()}
        )["extra_tokens_pct"],
        "expanded_by": by_reason,
        "appended_eos": sum(cols["appended_eos"]),
        "boundary_merged": sum(cols["boundary_merged"]),
        "tokens": sum(tokens),
        "max_tokens": max(tokens, default=0),
        "rows_with": {kind: sum(kind in c for c in carries.values()) for kind in conversations.CARRIED},
    }


def _expansion(rows: dict[int, list[int]]) -> dict:
    """Conversations, examples, and the extra tokens of training each turn alone (against the longest
    example of each conversation, which holds the whole conversation)."""
    tokens, longest = sum(map(sum, rows.values())), sum(max(ns) for ns in rows.values())
    return _with_pct(
        {
            "conversations": len(rows),
            "examples": sum(map(len, rows.values())),
            "tokens": tokens,
            "longest": longest,
        }
    )


def _with_pct(e: dict) -> dict:
    return {
        **e,
        "extra_tokens_pct": round(100 * (e["tokens"] / e["longest"] - 1), 1) if e["longest"] else 0.0,
    }


ADDED = (
    "rows", "kept", "examples", "truncated", "truncated_trained", "trained_tokens_truncated",
    "trailing_user_turns_trimmed", "leading_assistant_turns_trimmed", "turns_held_back", "independently_audited",
    "expanded_conversations", "expanded_examples", "appended_eos", "boundary_merged", "tokens", "trained_tokens",
)  # fmt: skip


def merge_reports(reports: list[dict]) -> dict:
    """One report for a mixture's split: counts added, drops merged (first row of the first source),
    expansion costs recomputed from their token sums."""
    out = {key: sum(r[key] for r in reports) for key in ADDED}
    dropped, first, by_reason = Counter(), {}, {}
    for r in reports:
        dropped.update(r["dropped"])
        for reason, where in r["drop_first"].items():
            first.setdefault(reason, where)
        for why, e in r["expanded_by"].items():
            merged = by_reason.setdefault(
                why, dict.fromkeys(("conversations", "examples", "tokens", "longest"), 0)
            )
            for key in merged:
                merged[key] += e[key]
    by_reason = {why: _with_pct(e) for why, e in by_reason.items()}
    total = {key: sum(e[key] for e in by_reason.values()) for key in ("tokens", "longest")}
    return {
        **out,
        "dropped": dict(dropped.most_common()),
        "drop_first": first,
        "expanded_by": by_reason,
        "expansion_extra_tokens_pct": _with_pct(total)["extra_tokens_pct"],
        "max_tokens": max(r["max_tokens"] for r in reports),
        "rows_with": {key: sum(r["rows_with"][key] for r in reports) for key in conversations.CARRIED},
    }


def warnings(split: str, rep: dict) -> list[str]:
    """What a user should know about a split even when it passes the drop gate."""
    lines = [
        f"{split}: {n} row(s) dropped as {reason} (first: row {rep['drop_first'][reason]['index']}: "
        f"{rep['drop_first'][reason]['detail']})"
        for reason, n in rep["dropped"].items()
    ]
    for why, e in rep.get("expanded_by", {}).items():
        lines.append(
            f"{split}: {e['conversations']} conversations expanded into {e['examples']} examples, one per "
            f"assistant turn, because {masking.EXPANSIONS[why]}; +{e['extra_tokens_pct']}% tokens"
        )
    if rep.get("truncated_trained"):
        lines.append(
            f"{split}: max_seq_length cut trained tokens from {rep['truncated_trained']} example(s) "
            f"({rep['trained_tokens_truncated']} trained tokens, their later turns, are not trained); raise "
            "model.max_seq_length to train them"
        )
    if rep["appended_eos"]:
        lines.append(
            f"{split}: the template ends {rep['appended_eos']} example(s) with the answer and no stop token; "
            "the tokenizer's EOS was appended and is trained, so the model learns to stop"
        )
    if rep["boundary_merged"]:
        lines.append(
            f"{split}: in {rep['boundary_merged']} prompt/completion row(s) one token spans the end of the prompt "
            "and the start of the completion; it is trained as part of the completion, as TRL does (a prompt "
            "that ends with a newline or a special token avoids it)"
        )
    return lines


def check_dropped(split: str, rep: dict, max_fraction: float) -> None:
    n_dropped = rep["rows"] - rep["kept"]
    if n_dropped == 0 or (rep["kept"] and n_dropped / rep["rows"] <= max_fraction):
        return
    reasons = "; ".join(
        f"{r} {n} (first: row {rep['drop_first'][r]['index']}: {rep['drop_first'][r]['detail']})"
        for r, n in rep["dropped"].items()
    )
    fix = (
        "fix the data (see `sftlib masks` for the kept rows' indices), or raise dataset.max_dropped_fraction."
    )
    if "audit_failed" in rep["dropped"]:
        fix = (
            "this is a masking bug for this tokenizer and chat template: please report it with the template "
            "and the first row above. " + fix
        )
    if "not_rendered" in rep["dropped"]:
        fix = (
            "choose a chat template that renders the field (model.chat_template), train only turns it renders "
            "(dataset.train_on), or " + fix
        )
    if "all_trained_tokens_truncated" in rep["dropped"]:
        fix = "raise model.max_seq_length, " + fix
    limit = "leaving none" if not rep["kept"] else f"more than dataset.max_dropped_fraction={max_fraction}"
    raise SftlibError(
        f"{n_dropped} of {rep['rows']} {split} rows would be dropped ({n_dropped / rep['rows']:.0%}, {limit}): {reasons}.",
        fix,
    )


def summary_line(rep: dict) -> str:
    dropped = ", ".join(f"{r} {n}" for r, n in rep["dropped"].items()) or "none"
    line = (
        f"{rep['kept']}/{rep['rows']} rows kept as {rep['examples']} examples; dropped: {dropped}; "
        f"truncated: {rep['truncated']}; trimmed: {rep['trailing_user_turns_trimmed']} trailing user, "
        f"{rep['leading_assistant_turns_trimmed']} leading assistant"
    )
    if rep["expanded_conversations"]:
        line += f"; expanded: {rep['expanded_conversations']} conversations"
    if rep.get("turns_held_back"):
        line += f"; held back by the data: {rep['turns_held_back']} assistant turns"
    if "independently_audited" in rep:
        line += f"; re-rendered by the independent audit: {rep['independently_audited']} rows"
    return line


def token_lengths(ds) -> dict[str, list[int]]:
    """Each example's length before truncation, split into the part not trained (prompt and template
    scaffolding) and the trained part: {"prompt": [...], "completion": [...]}, read from the columns
    `prepare` keeps (nothing is tokenized again)."""
    columns = ds.select_columns(["untruncated_tokens", "untruncated_trained_tokens"]).to_dict()
    completion = columns["untruncated_trained_tokens"]
    prompt = [n - k for n, k in zip(columns["untruncated_tokens"], completion, strict=True)]
    return {"prompt": prompt, "completion": completion}
