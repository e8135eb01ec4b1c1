"""What each notebook of the suite records in RUN_DIR/<notebook>.json, built from what the notebook computed,
so that a notebook records its summary in one line. The pipeline lifts some of these keys into
summary.json (each notebook's metadata names them); the tests read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def explore(prepared, cfg, out: Path, lengths: dict[str, list[int]]) -> dict[str, Any]:
    """Notebook 01: the format and how it was found, the data report (each source's in a mixture), the
    longest prompt and completion (`lengths`: `sftlib.data.reports.token_lengths`), and the length
    histograms' file."""
    return {
        "format": prepared.format,
        "format_reason": prepared.format_reason,
        "report": prepared.report,
        "sources": prepared.sources,  # a mixture: each source's own figures
        "max_seq_length": cfg.model.max_seq_length,
        "length_histograms": str(out / "length_histograms.png"),
        "max_prompt_tokens": max(lengths["prompt"]),
        "max_completion_tokens": max(lengths["completion"]),
    }


def masks(prepared, tokenizer, stop_ids: list[int], out: Path) -> dict[str, Any]:
    """Notebook 02: the data report, the stop tokens masking trains, and the files of its views."""
    return {
        "report": prepared.report,
        "stop_tokens": tokenizer.convert_ids_to_tokens(stop_ids),
        "masking_view": str(out / "masking_view.html"),
        "trained_fraction": str(out / "trained_fraction.png"),
    }


def train(info: dict, out: Path) -> dict[str, Any]:
    """Notebook 03: the run's world size, steps, loss and runtime from its run_info, and the loss curve."""
    history = info["log_history"]
    return {
        "world_size": info["world_size"],
        "distributed_type": info["distributed_type"],
        "global_step": info["global_step"],
        "final_loss": info["final_loss"],
        "train_runtime_s": info["train_runtime_s"],
        "output_dir": info["output_dir"],
        "use_lora": info["use_lora"],
        "loss_history": {
            "train": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
            "eval": [{"step": h["step"], "loss": h["eval_loss"]} for h in history if "eval_loss" in h],
        },
        "loss_curve": str(out / "loss_curve.png"),
    }


def generate(evaluation, scores: dict, rows: list[dict], tuned, out: Path) -> dict[str, Any]:
    """Notebook 05: which prompts, the base and tuned scores (None when nothing was scored), the tuned
    model (`tuned`: its config and adapter folder, as `inference.loading.tuned_model` gives them), and
    the rows the table shows."""
    tuned_cfg, adapter_dir = tuned
    return {
        "prompts": evaluation.origin,
        "tool_format": evaluation.tool_format,
        "base": scores.get("base"),
        "tuned": scores.get("tuned"),
        "eval_examples": len(evaluation.prompts) if scores else 0,
        "model_dir": tuned_cfg.path,
        "adapter_dir": adapter_dir,
        "examples": rows,
        "before_after": str(out / "before_after.png"),
    }
