"""What a run's output_dir holds (its layout: the adapter in lora_weights/, the merged model, tokenizer and
run_info.json beside it, checkpoint-N folders), and whether a new run may write into it.

Read without importing any ML library, so a launcher can check the folder before it forks workers.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sftlib.errors import SftlibError

ADAPTER_DIRNAME = "lora_weights"  # the LoRA adapter; the merged model and tokenizer sit beside it
RUN_INFO = "run_info.json"
RESOLVED_CONFIG = "resolved_config.yaml"  # the config as the run read it: a run's own config file
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Every `checkpoint-N` folder in `output_dir`, newest (highest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def require_adapter(adapter_dir: str | Path) -> Path:
    """`adapter_dir` when it holds a LoRA adapter (its adapter_config.json), else SftlibError."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SftlibError(
            f"{adapter_dir} holds no LoRA adapter (adapter_config.json is missing).",
            f"give the {ADAPTER_DIRNAME}/ folder of a LoRA run (sftlib train with model.use_lora: true), "
            "or load the merged model in its output_dir.",
        )
    return adapter_dir


def finished_artifacts(output_dir: str | Path) -> list[Path]:
    """The files that mark `output_dir` as holding a finished run (final model or run info)."""
    out = Path(output_dir)
    names = (
        "run_info.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "lora_weights/adapter_model.safetensors",
    )
    return [out / name for name in names if (out / name).exists()]


@dataclasses.dataclass(frozen=True)
class Controls:
    """How the user asks to replace or to continue a run, in the words of what they ran: the flags of
    `sftlib train`, `pipeline` and `demo`, or notebook 03's parameters. Fix lines name these."""

    verb: str = "pass"
    overwrite: str = "--overwrite"
    resume: str = "--resume"
    without_resume: str = "run without --resume"


CLI = Controls()
NOTEBOOK = Controls("set", "OVERWRITE = True", "RESUME = True", "set RESUME = False")


def check_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool, how: Controls = CLI) -> None:
    """Refuse to train into a finished or an interrupted run unless overwrite or resume says so; `how`
    names those controls in the Fix.

    Reads only: a refused run leaves every file in `output_dir` as it was.
    """
    if resume or overwrite:
        return
    out = Path(output_dir)
    finished = finished_artifacts(out)
    if finished:
        raise SftlibError(
            f"{out} already holds a finished run ({finished[0].name}).",
            f"{how.verb} {how.overwrite} to replace it, {how.resume} to continue it, or choose another "
            "training.output_dir.",
        )
    if checkpoint_dirs(out):
        raise SftlibError(
            f"{out} holds checkpoints of an unfinished run.",
            f"{how.verb} {how.resume} to continue it, {how.overwrite} to start afresh, or choose another "
            "training.output_dir.",
        )
