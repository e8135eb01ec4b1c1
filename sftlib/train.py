"""RunConfig -> SFTConfig + SFTTrainer -> the seed's output layout.

One code path for every launch: in-process, `accelerate launch -m sftlib train`, and the
notebook's `accelerate.notebook_launcher` (see `launch`). Only the main process writes
artifacts; saving and merging happen once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sftlib.config import RunConfig, load_config, write_resolved
from sftlib.errors import SftlibError

log = logging.getLogger("sftlib")

ADAPTER_DIRNAME = "lora_weights"
RUN_INFO = "run_info.json"


def sft_config(cfg: RunConfig, **overrides: Any):
    """trl.SFTConfig from `training`, with the fields sftlib owns filled in."""
    import torch
    from trl import SFTConfig

    kwargs = dict(cfg.training)
    kwargs["max_length"] = cfg.model.max_seq_length
    kwargs.setdefault("report_to", "none")
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
    kwargs.update(overrides)
    try:
        return SFTConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        raise SftlibError(f"invalid `training` settings: {exc}") from None


def check_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a finished run unless --overwrite or --resume says so."""
    finished = (output_dir / RUN_INFO).exists() or (output_dir / "model.safetensors").exists()
    if finished and not (resume or overwrite):
        raise SftlibError(
            f"{output_dir} already holds a finished run.",
            "pass --overwrite to replace it, --resume to continue it, or choose another training.output_dir.",
        )


def distributed_state(use_cpu: bool):
    """The process group, created for CPU when there is no GPU.

    Without `cpu=True`, a process started by notebook_launcher on a CPU machine sees world size 1
    and N processes would silently train N independent copies.
    """
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise SftlibError(
            f"{launched} processes were launched but the trainer sees world size {state.num_processes}.",
            "launch with `accelerate launch` or sftlib.train.launch, and create no Accelerator before it.",
        )
    return state


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune as configured; returns the run info (also written to output_dir/run_info.json)."""
    from trl import SFTTrainer

    from sftlib import masking, modeling

    args = sft_config(cfg)
    state = distributed_state(args.use_cpu)
    out = cfg.output_dir
    check_output_dir(out, resume=resume, overwrite=overwrite)
    if overwrite and not resume and state.is_main_process:
        clear_output_dir(out)
    state.wait_for_everyone()
    if state.is_main_process:
        write_resolved(cfg, out)

    tokenizer = modeling.load_tokenizer(cfg.model)
    data = masking.prepare(cfg, tokenizer)
    model = modeling.load_model(cfg.model)
    model.config.use_cache = False  # a KV cache in train mode lets packed sequences attend across boundaries
    peft_config = modeling.lora_config(cfg.model, model) if cfg.model.use_lora else None

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    result = trainer.train(resume_from_checkpoint=_resume_checkpoint(out) if resume else None)
    save_outputs(trainer, cfg, tokenizer)

    info = {
        "world_size": state.num_processes,
        "distributed_type": str(state.distributed_type.value if hasattr(state.distributed_type, "value") else state.distributed_type),
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 3),
        "final_loss": _final_loss(trainer.state.log_history, result.training_loss),
        "train_loss": result.training_loss,
        "model_path": cfg.model.path,
        "use_lora": cfg.model.use_lora,
        "load_in_4bit": cfg.model.load_in_4bit,
        "output_dir": str(out),
        "adapter_dir": str(out / ADAPTER_DIRNAME) if cfg.model.use_lora else None,
        "data": {"format": data.format, "report": data.report},
        "versions": library_versions(),
        "log_history": trainer.state.log_history,
    }
    if state.is_main_process:
        _write_json(out / RUN_INFO, info)
    state.wait_for_everyone()
    return info


def save_outputs(trainer, cfg: RunConfig, tokenizer) -> None:
    """The seed's layout: adapter in lora_weights/, merged model + tokenizer in output_dir."""
    from sftlib import merge

    out = cfg.output_dir
    if cfg.model.use_lora:
        adapter_dir = out / ADAPTER_DIRNAME
        trainer.save_model(str(adapter_dir))  # every rank: FSDP/DeepSpeed gather the weights here
        if trainer.accelerator.is_main_process:
            _drop_pickles(adapter_dir)
            merge.merge_adapter(cfg.model, adapter_dir, out)
            tokenizer.save_pretrained(out)
    else:
        trainer.save_model(str(out))
        if trainer.accelerator.is_main_process:
            _drop_pickles(out)
    trainer.accelerator.wait_for_everyone()


def _drop_pickles(folder: Path) -> None:
    # Trainer.save_model also pickles the TrainingArguments; final artifacts are safetensors + JSON only.
    (folder / "training_args.bin").unlink(missing_ok=True)


def _resume_checkpoint(out: Path) -> str | bool:
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise SftlibError(f"--resume: {out} holds no checkpoint-* folder.", "run without --resume to start afresh.")
    return str(checkpoints[-1])


def _final_loss(history: list[dict], fallback: float) -> float:
    losses = [h["loss"] for h in history if "loss" in h]
    return float(losses[-1]) if losses else float(fallback)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_run_info(output_dir: str | Path) -> dict[str, Any]:
    path = Path(output_dir) / RUN_INFO
    if not path.is_file():
        raise SftlibError(f"{path} does not exist: no finished run in {output_dir}.", "train first (sftlib train).")
    return json.loads(path.read_text())


def clear_output_dir(out: Path) -> None:
    """--overwrite: remove what a previous run wrote, so no stale file survives into the new run."""
    if out.exists():
        shutil.rmtree(out)


def run_from_files(config_path: str | None, overrides: list[str], resume: bool = False, overwrite: bool = False) -> dict:
    """Entry used by the CLI and by each process that `launch` starts."""
    cfg = load_config(config_path, overrides)
    return train(cfg, resume=resume, overwrite=overwrite)


def launch(
    config_path: str | None,
    overrides: list[str] = (),
    num_processes: int = 1,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train from a notebook: in-process for 1, through accelerate.notebook_launcher for N > 1.

    Every process runs `run_from_files`, the same code as `accelerate launch -m sftlib train`.
    """
    if num_processes < 1:
        raise SftlibError(f"num_processes must be at least 1, got {num_processes}.")
    if num_processes == 1:
        return run_from_files(config_path, list(overrides), resume, overwrite)
    from accelerate import notebook_launcher

    cfg = load_config(config_path, overrides)  # fail fast, in the notebook, on a bad config
    notebook_launcher(
        run_from_files,
        args=(config_path, list(overrides), resume, overwrite),
        num_processes=num_processes,
        use_port=str(_free_port()),
    )
    return read_run_info(cfg.output_dir)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
