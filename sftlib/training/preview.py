"""What a run trains with, shown before it trains: the `trl.SFTConfig` and `peft.LoraConfig` sftlib builds
from the config (the fields that differ from their defaults), and the trainer's first batch decoded.

`preview(config, overrides)` computes it in a child process (`python -m sftlib.training.preview`): the
notebook's kernel must not import the ML libraries before it launches training on several processes
(accelerate's notebook_launcher forks only a kernel that has not imported bitsandbytes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sftlib.errors import SftlibError


def changed_fields(obj, fresh) -> dict[str, str]:
    """The dataclass fields of `obj` whose values differ from those of `fresh` (the same class at its
    defaults), as text."""
    out = {}
    for field in dataclasses.fields(obj):
        if field.init and getattr(obj, field.name) != getattr(fresh, field.name, None):
            out[field.name] = repr(getattr(obj, field.name))
    return out


def build(config: str, overrides: list[str]) -> dict[str, Any]:
    """In this process: the trainer `sftlib train` builds (its plan measured, nothing trained), described."""
    import torch
    import trl
    from peft import LoraConfig

    from sftlib.config import load_config
    from sftlib.data import IGNORE_INDEX, dataset
    from sftlib.data.export import special_ids
    from sftlib.models import modeling
    from sftlib.training.trainer import build_trainer

    cfg = load_config(config, overrides)
    tokenizer = modeling.load_tokenizer(cfg.model)
    data = dataset.prepare(cfg, tokenizer)  # both splits: the trainer refuses eval steps without eval data
    model = modeling.load_model(cfg.model)
    model.config.use_cache = False
    peft_config = modeling.lora_config(cfg.model, model) if cfg.model.use_lora else None
    with tempfile.TemporaryDirectory(prefix="sftlib-preview-") as scratch:  # nothing lands in output_dir
        run = {"output_dir": scratch, "report_to": "none", "save_strategy": "no"}
        trainer = build_trainer(cfg, model, tokenizer, data.train, data.eval, peft_config, run_args=run)
        batch = next(iter(trainer.get_train_dataloader()))
        # TRL's defaults: bf16 on, which transformers refuses on a machine without CUDA unless use_cpu is set.
        cpu = {} if torch.cuda.is_available() else {"use_cpu": True}
        sft = changed_fields(trainer.args, trl.SFTConfig(output_dir=scratch, **cpu)) | {
            "output_dir": repr(str(cfg.output_dir))
        }
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    positions = batch["position_ids"][0].tolist() if "position_ids" in batch else [0] + [1] * (len(ids) - 1)
    special = special_ids(tokenizer)
    decoded = [
        [tokenizer.decode([i], skip_special_tokens=False), label != IGNORE_INDEX, i in special, position == 0]
        for i, label, position in zip(ids, labels, positions, strict=True)
    ]
    return {
        "sft_config": sft,
        "lora_config": changed_fields(peft_config, LoraConfig()) if peft_config is not None else None,
        "batch_shape": list(batch["input_ids"].shape),
        "batch_tokens": decoded,  # the first row: [text, trained, special, starts an example] per token
        "plan": trainer.plan.describe(),
    }


def preview(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """`build` in a child process on this interpreter; SftlibError with its last lines when it fails."""
    cmd = [sys.executable, "-m", "sftlib.training.preview", "--config", str(config)]
    cmd += [x for item in overrides for x in ("--set", item)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        errors = [line.removeprefix("error: ") for line in lines if line.startswith("error:")]
        raised = [line for line in lines if re.match(r"\w+(Error|Exception): ", line)]
        raise SftlibError(errors[-1] if errors else f"the preview failed: {(raised or lines)[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sftlib.training.preview", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args(argv)
    try:
        print(json.dumps(build(a.config, a.overrides)))
    except SftlibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
