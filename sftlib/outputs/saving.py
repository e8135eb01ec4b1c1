"""What a finished run writes into output_dir: the adapter or model, the tokenizer, run_info.json, the
resolved config, the merge.

output_dir holds, for LoRA / QLoRA, the adapter in `lora_weights/` and, once merged, the merged full
model and the tokenizer beside it; for a full fine-tune, the model and tokenizer. Every folder is
written through a staging folder, moved in, reloaded and compared (`sftlib.outputs.staging`); a merge is
checked against base + adapter (`sftlib.outputs.merge`) and its figures go into run_info.json["merge"].
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from sftlib.config import RunConfig
from sftlib.errors import SftlibError
from sftlib.files import write_atomically
from sftlib.outputs.layout import ADAPTER_DIRNAME, RESOLVED_CONFIG, RUN_INFO

log = logging.getLogger("sftlib")


def save_trained(trainer, cfg: RunConfig, tokenizer) -> None:
    """The adapter into lora_weights/ (LoRA) or the model into output_dir, and the tokenizer into output_dir.

    Collective: every rank calls it (FSDP and DeepSpeed gather the weights while saving).
    """
    from sftlib.outputs import staging

    out = cfg.output_dir
    if cfg.model.use_lora:
        staging.save_trained(trainer, out / ADAPTER_DIRNAME)
        if trainer.accelerator.is_main_process:
            staging.write_atomically(out, tokenizer.save_pretrained)
    else:
        staging.save_trained(trainer, out)
    trainer.accelerator.wait_for_everyone()


def merge_run(cfg: RunConfig, dtype: str | None = None) -> dict:
    """Merge output_dir's adapter into the base (written into output_dir, checked), and record the check
    in run_info.json when the run wrote one. One process, no collective: run it after the ranks have left."""
    from sftlib.outputs import merge

    log.info("merging %s into the base model", cfg.output_dir / ADAPTER_DIRNAME)
    check = merge.merge_adapter(cfg.model, cfg.output_dir / ADAPTER_DIRNAME, cfg.output_dir, dtype=dtype)
    path = cfg.output_dir / RUN_INFO
    if path.is_file():
        write_run_info(cfg.output_dir, {**json.loads(path.read_text()), "merge": check})
    return check


def write_run_info(output_dir: str | Path, info: dict[str, Any]) -> None:
    write_atomically(Path(output_dir) / RUN_INFO, json.dumps(info, indent=2, default=str))


def write_resolved(cfg: RunConfig, output_dir: str | Path) -> Path:
    """The config as resolved (defaults filled, overrides applied), beside the run's outputs."""
    return write_atomically(
        Path(output_dir) / RESOLVED_CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    )


def read_run_info(output_dir: str | Path) -> dict[str, Any]:
    path = Path(output_dir) / RUN_INFO
    if not path.is_file():
        raise SftlibError(
            f"{path} does not exist: no finished run in {output_dir}.", "train first (sftlib train)."
        )
    return json.loads(path.read_text())


def clear_output_dir(out: Path) -> None:
    """--overwrite: remove what a previous run wrote, so no stale file survives into the new run."""
    if out.exists():
        shutil.rmtree(out)
