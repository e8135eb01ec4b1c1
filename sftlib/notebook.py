"""What the notebooks call: one function per step, so a notebook holds parameters, calls and display.

Each function computes or draws one thing and returns it; the notebook displays it. Figures are
`matplotlib.figure.Figure` objects built without pyplot (no global state), saved by `save_figure`.
Nothing here runs at import time.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from pathlib import Path
from typing import Any

from sftlib.errors import SftlibError

HEADLESS_ENV = "SFTLIB_HEADLESS"  # set by sftlib.pipeline: no one at the notebook (static renderings), kernel in the user's cwd
# Max |logit difference| merged vs base + adapter, relative to the largest |logit| (at least 1):
# merging W + BA reorders fp32 sums, and over 30 layers that alone reaches ~1e-4 on logits of ~30.
MERGE_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}
# ... or this share of what the adapter changes (merged vs base). On a GPU, fp32 reordering gave 9.9e-5
# on logits of ~6 (a SmolLM2-shaped model with random weights, H200); a wrong merge (adapter missing,
# scaled wrongly) differs by the order of the adapter's whole effect.
MERGE_SHARE_OF_ADAPTER = 1e-2


def merge_tolerance(dtype: str, max_abs_logit: float, adapter_effect: float) -> float:
    """The largest |logit difference| a correct merge may show (see MERGE_TOLERANCE)."""
    return max(MERGE_TOLERANCE[dtype] * max(1.0, max_abs_logit), MERGE_SHARE_OF_ADAPTER * adapter_effect)


TOKEN_STATES = {  # masking view: one colour per state (sftlib.plots.token_view_html states)
    0: ("masked (label -100)", "#e0e0e0"),
    1: ("trained", "#9ecae1"),
    2: ("masked special token", "#9e9e9e"),
    3: ("trained special token", "#3182bd"),
}


# --------------------------------------------------------------------------- every notebook


def go_to_project_root() -> Path:
    """Move to the folder the notebook's relative paths (CONFIG, the config's own paths) mean; return it.

    Under the pipeline (`sftlib pipeline` / `sftlib demo`) the kernel already runs in the user's working
    directory, where their paths are relative to: it stays there. Opened in JupyterLab from a checkout's
    `notebooks/`, it moves up to the checkout (the folder holding configs/ and notebooks/), so the
    default CONFIG, `configs/...`, resolves. Elsewhere it stays in the folder the notebook runs in.
    """
    here = Path.cwd().resolve()
    if is_headless():
        return here
    for folder in (here, *here.parents):
        if (folder / "configs").is_dir() and (folder / "notebooks").is_dir():
            os.chdir(folder)
            return folder
    return here


def run_dir(path: str | Path) -> Path:
    """The folder results and pictures go to, created if needed."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def is_headless() -> bool:
    """True under the pipeline (papermill): show static renderings instead of interactive widgets."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


def record(run_dir_path: str | Path, name: str, results: dict[str, Any]) -> Path:
    """Write a notebook's results to RUN_DIR/<name>.json (read by tests, the pipeline and later notebooks)."""
    path = run_dir(run_dir_path) / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=_jsonable))
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def save_figure(fig, path: str | Path):
    """Save `fig` as a PNG at `path`; return that PNG as an IPython image, so a cell ending with this
    call shows the picture (and an executed or exported notebook embeds it) without pyplot."""
    from IPython.display import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return Image(filename=str(path), alt=path.stem.replace("_", " "))


def save_html(body: str, path: str | Path, title: str) -> Path:
    """Write an HTML fragment as a standalone page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head><body>{body}</body></html>'
    path.write_text(page, encoding="utf-8")
    return path


def table_html(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain HTML table of dicts (notebooks display it; no pandas needed)."""
    columns = columns or (list(rows[0]) if rows else [])
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td style='padding:2px 8px'>{html.escape(str(r.get(c, '')))}</td>" for c in columns)
        + "</tr>"
        for r in rows
    )
    return f"<table style='border-collapse:collapse;font-family:monospace'><tr>{head}</tr>{body}</table>"


# --------------------------------------------------------------------------- 01: explore the dataset


def untruncated_examples(cfg, tokenizer, split: str = "train", limit: int | None = None) -> list[dict]:
    """Every example of `split` tokenized without truncation: index, the normalized example, its
    tokens (or the reason it is dropped), and token counts not trained (prompt + template) and trained
    (completion), the lengths max_seq_length is compared against."""
    from sftlib import data, masking

    raw = data.load_raw(cfg.dataset, seed=cfg.training.get("seed", 42))
    if split not in raw:
        return []
    fmt, _ = masking.resolve_format(raw["train"], cfg.dataset.format)
    ds = raw[split] if limit is None else raw[split].select(range(min(limit, len(raw[split]))))
    out = []
    for example in data.normalize(ds, fmt):
        try:
            tokens = masking.tokenize_example(example, tokenizer, cfg.dataset.train_on)
        except masking.DropExample as drop:
            out.append({"index": example["index"], "example": example, "drop_reason": drop.reason})
            continue
        trained = sum(label != masking.IGNORE for label in tokens["labels"])
        out.append(
            {
                "index": example["index"],
                "example": example,
                "tokens": tokens,
                "drop_reason": None,
                "prompt_tokens": len(tokens["labels"]) - trained,
                "completion_tokens": trained,
                "total_tokens": len(tokens["labels"]),
            }
        )
    return out


def drop_rows(report: dict) -> list[dict]:
    """One row per split and outcome (kept, truncated, each drop reason) with its count and meaning."""
    from sftlib.masking import DROP_REASONS

    rows = []
    for split, rep in report.items():
        rows.append(
            {"split": split, "outcome": "rows", "count": rep["rows"], "meaning": "examples in the split"}
        )
        rows.append({"split": split, "outcome": "kept", "count": rep["kept"], "meaning": "trained on"})
        rows.append(
            {
                "split": split,
                "outcome": "truncated",
                "count": rep["truncated"],
                "meaning": "kept, cut at max_seq_length",
            }
        )
        for reason, n in rep["dropped"].items():
            rows.append(
                {"split": split, "outcome": f"dropped: {reason}", "count": n, "meaning": DROP_REASONS[reason]}
            )
    return rows


def rendered_text(input_ids: list[int], tokenizer) -> str:
    """The text the model sees: the chat template's rendering, special tokens included."""
    return tokenizer.decode(input_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def example_html(row: dict, tokenizer) -> str:
    """One tokenized example: its source row, token counts and its rendering through the chat template."""
    text = html.escape(rendered_text(row["input_ids"], tokenizer))
    return (
        f"<div style='margin:6px 0'><b>row {row['index']}</b>: {row['num_tokens']} tokens, "
        f"{row['num_trained_tokens']} trained{', truncated' if row['truncated'] else ''}"
        f"<pre style='white-space:pre-wrap;background:#f6f6f6;padding:6px'>{text}</pre></div>"
    )


def example_browser(ds, tokenizer):
    """An ipywidgets slider over the examples of a tokenized split, showing each rendered."""
    import ipywidgets as widgets

    slider = widgets.IntSlider(value=0, min=0, max=max(len(ds) - 1, 0), description="example")
    view = widgets.HTML(example_html(ds[0], tokenizer))

    def show(change):
        view.value = example_html(ds[change["new"]], tokenizer)

    slider.observe(show, names="value")
    return widgets.VBox([slider, view])


def browse(ds, tokenizer, n_static: int = 3):
    """The example browser when a person is at the notebook; under the pipeline (no one to move a
    slider, and widgets don't render in exported HTML) the first `n_static` examples as static HTML."""
    from IPython.display import HTML

    if not is_headless():
        return example_browser(ds, tokenizer)
    return HTML("".join(example_html(row, tokenizer) for row in ds.select(range(min(n_static, len(ds))))))


# --------------------------------------------------------------------------- 02: verify masking


def masking_view_html(ds, tokenizer, n: int) -> str:
    """Token views (sftlib.plots) of the first `n` examples of a tokenized split: trained or masked,
    special tokens in darker shades, whitespace made visible."""
    from sftlib import masking, plots

    parts = []
    for row in ds.select(range(min(n, len(ds)))):
        view = masking.token_view(row["input_ids"], row["labels"], tokenizer)
        tokens = [(text, int(trained) + 2 * int(special)) for text, trained, special in view]
        title = f"row {row['index']}: {row['num_trained_tokens']} of {row['num_tokens']} tokens trained"
        parts.append(f"<h4>{html.escape(title)}</h4>" + plots.token_view_html(tokens, TOKEN_STATES))
    return "".join(parts)


def invariant_stats(prepared, tokenizer) -> dict[str, dict]:
    """masking.check_invariants on every prepared split (raises SftlibError on the first broken one)."""
    from sftlib import masking

    splits = {"train": prepared.train, "eval": prepared.eval}
    return {name: masking.check_invariants(ds, tokenizer) for name, ds in splits.items() if ds is not None}


def audit_examples(cfg, tokenizer, split: str = "train", limit: int | None = None) -> list[dict]:
    """Decode-back audit: each kept example's trained tokens must decode to exactly its assistant
    turns (or completion) plus the end-of-turn token. Raises SftlibError on the first mismatch;
    returns, per example, the index and the decoded trained runs."""
    from sftlib import masking

    audited = []
    for e in untruncated_examples(cfg, tokenizer, split, limit):
        if e["drop_reason"] is not None:
            continue
        masking.audit(e["tokens"], e["example"], tokenizer, cfg.dataset.train_on)
        ids, labels = e["tokens"]["input_ids"], e["tokens"]["labels"]
        runs = [
            tokenizer.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for a, b in masking.trained_runs(labels)
        ]
        audited.append({"index": e["index"], "trained": runs})
    return audited


# --------------------------------------------------------------------------- 03: train


def loss_history(log_history: list[dict]) -> dict[str, list[dict]]:
    """{"train": [{step, loss}], "eval": [{step, loss}]} from the Trainer's log history."""
    return {
        "train": [{"step": h["step"], "loss": h["loss"]} for h in log_history if "loss" in h],
        "eval": [{"step": h["step"], "loss": h["eval_loss"]} for h in log_history if "eval_loss" in h],
    }


def run_summary(info: dict) -> list[dict]:
    """run_info.json as key/value rows, without the long history and version lists."""
    skip = {"log_history", "versions", "data"}
    return [{"key": k, "value": v} for k, v in info.items() if k not in skip]


# --------------------------------------------------------------------------- 04: merge


def verify_merge(cfg, dtype: str) -> dict:
    """Re-merge output_dir/lora_weights into the unquantized base in `dtype`, write it to output_dir,
    reload it from disk, and compare its logits with base + adapter (unmerged) on sample inputs.

    Returns the numbers the notebook shows; raises SftlibError if the difference exceeds
    `merge_tolerance`. A full fine-tune has nothing to merge: {"merged": False, ...}.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlib import merge, modeling
    from sftlib.train import ADAPTER_DIRNAME

    out = cfg.output_dir
    if not cfg.model.use_lora:
        return {
            "merged": False,
            "reason": "full fine-tune: the trained weights are the model; nothing to merge",
        }
    adapter_dir = out / ADAPTER_DIRNAME
    merge.merge_adapter(cfg.model, adapter_dir, out, dtype=dtype)
    reference = merge.load_base_with_adapter(cfg.model, adapter_dir, dtype=dtype).eval()
    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    unquantized = dataclasses.replace(cfg.model, load_in_4bit=False, dtype=dtype)
    base = modeling.load_model(unquantized, quantize=False).eval()
    ids = merge.sample_inputs(AutoTokenizer.from_pretrained(out))
    difference, scale = merge.compare_logits(merged, reference, ids)
    effect = merge.max_logit_difference(merged, base, ids)
    allowed = merge_tolerance(dtype, scale, effect)
    result = {
        "merged": True,
        "dtype": dtype,
        "was_4bit": cfg.model.load_in_4bit,
        "max_logit_difference": difference,
        "max_abs_logit": scale,
        "tolerance": allowed,
        "adapter_effect": effect,
        "adapter_mb": round(merge.disk_size_mb(adapter_dir), 3),
        "merged_mb": round(merge.disk_size_mb(out), 3),
        "base_mb": round(merge.disk_size_mb(modeling.resolve_path(cfg.model)), 3),
        "adapter_dir": str(adapter_dir),
        "merged_dir": str(out),
    }
    if difference > allowed:
        raise SftlibError(
            f"the merged model's logits differ from base + adapter by {difference:.3g} "
            f"(tolerance {allowed:.3g} for {dtype}: the larger of {MERGE_TOLERANCE[dtype]:g} of the largest logit "
            f"{scale:.3g} and {MERGE_SHARE_OF_ADAPTER:g} of the adapter's own effect {effect:.3g}).",
            "do not use this merged model; load base + adapter instead, and report the model and config.",
        )
    return result


def merge_summary(result: dict) -> str:
    if not result["merged"]:
        return f"nothing to merge: {result['reason']}."
    return (
        f"merged in {result['dtype']}{' (the 4-bit base re-loaded unquantized)' if result['was_4bit'] else ''}: "
        f"max |logit difference| merged vs base + adapter = {result['max_logit_difference']:.3g} "
        f"(tolerance {result['tolerance']:g}); the adapter itself moves logits by up to {result['adapter_effect']:.3g}.\n"
        f"on disk: adapter {result['adapter_mb']:.2f} MB, merged model {result['merged_mb']:.2f} MB, "
        f"base {result['base_mb']:.2f} MB"
    )


# --------------------------------------------------------------------------- 05: load and generate


def heldout(cfg, limit: int | None = None) -> tuple[list, list[str | None]]:
    """Held-out prompts (the eval split) and their references: the conversation up to its last
    assistant turn and that turn, or a prompt and its completion. Dropped rows are skipped."""
    from sftlib import data, masking

    raw = data.load_raw(cfg.dataset, seed=cfg.training.get("seed", 42))
    if "eval" not in raw:
        raise SftlibError(
            "the config defines no held-out split to generate for.",
            "set dataset.eval_split or dataset.eval_size.",
        )
    fmt, _ = masking.resolve_format(raw["train"], cfg.dataset.format)
    if fmt == "text":
        raise SftlibError(
            "a `text` dataset has no prompts to answer.", "use a chat or prompt/completion dataset."
        )
    prompts, references = [], []
    for example in data.normalize(raw["eval"], fmt):
        if limit is not None and len(prompts) >= limit:
            break
        if data.is_chat(example):
            try:
                messages, first = masking.chat_messages(example)
                messages, _ = masking.validate_conversation(messages, first)
            except masking.DropExample:
                continue
            prompts.append(messages[:-1])
            references.append(messages[-1]["content"])
        elif isinstance(example.get("prompt"), str) and isinstance(example.get("completion"), str):
            prompts.append(example["prompt"])
            references.append(example["completion"])
    return prompts, references


def tuned_model_dirs(cfg, use_adapter: bool) -> tuple[str, str | None]:
    """(model_dir, adapter_dir) of the trained run: the merged model, or the base plus the adapter."""
    from sftlib.train import ADAPTER_DIRNAME

    if use_adapter and cfg.model.use_lora:
        return cfg.model.path, str(cfg.output_dir / ADAPTER_DIRNAME)
    return str(cfg.output_dir), None


def prompt_text(prompt) -> str:
    """The last user message of a chat prompt (or the prompt string), for tables."""
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def comparison_rows(prompts, references, base: list[str], tuned: list[str]) -> list[dict]:
    from sftlib.generate import token_f1

    rows = []
    for p, r, b, t in zip(prompts, references, base, tuned, strict=True):
        rows.append(
            {
                "prompt": prompt_text(p),
                "reference": r,
                "base": b,
                "tuned": t,
                "base_exact": b.strip() == r.strip(),
                "tuned_exact": t.strip() == r.strip(),
                "base_f1": round(token_f1(b, r), 3),
                "tuned_f1": round(token_f1(t, r), 3),
            }
        )
    return rows
