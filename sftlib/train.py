"""RunConfig -> SFTConfig + SFTTrainer -> the seed's output layout.

One code path for every launch: in-process, `accelerate launch -m sftlib train`, and the
notebook's `launch(num_processes=N)` through accelerate.notebook_launcher. Only the main process writes artifacts;
saving and merging happen once; after training every rank's parameters are checked to be equal.
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
from sftlib.layout import ADAPTER_DIRNAME, RUN_INFO
from sftlib.noise import library_deprecations

log = logging.getLogger("sftlib")


def sft_config(cfg: RunConfig, **overrides: Any):
    """trl.SFTConfig from `training`, with the fields sftlib owns filled in.

    `overrides` are fields decided elsewhere (`sftlib.fastpath.build_trainer`: batch layout, precision,
    activation checkpointing where the config leaves them null).
    """
    import torch
    from trl import SFTConfig

    from sftlib.config import DECIDED_WHEN_NULL, SFTLIB_TRAINING, sft_config_default

    kwargs = {
        k: v
        for k, v in cfg.training.items()
        if k not in SFTLIB_TRAINING and not (v is None and k in DECIDED_WHEN_NULL)
    }
    kwargs["max_length"] = cfg.model.max_seq_length
    if cfg.activation_checkpointing is None:
        # TRL still defaults transformers' deprecated alias (gradient_checkpointing); naming the new field
        # keeps TRL's default without transformers' FutureWarning on every run.
        kwargs["activation_checkpointing"] = sft_config_default("gradient_checkpointing")
    kwargs.setdefault("report_to", "none")
    # Every trainable weight (LoRA or full) takes part in each forward pass, so DDP's extra graph walk to
    # find unused ones only costs time. A model with unused weights gets DDP's error naming this setting.
    kwargs.setdefault("ddp_find_unused_parameters", False)
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
    # sftlib rotates checkpoints itself, only once the new one is complete (checkpoints.CompleteCheckpoints).
    kwargs["save_total_limit"] = None
    kwargs.update(overrides)
    try:
        return SFTConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        raise SftlibError(f"invalid `training` settings: {exc}") from None


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune as configured; returns the run info (also written to output_dir/run_info.json)."""
    from sftlib import checkpoints, dataset, distributed, fastpath, guards, layout, modeling

    args = sft_config(cfg)
    state = distributed.distributed_state(args.use_cpu)
    distributed.check_supported(cfg.model)
    out = cfg.output_dir
    layout.check_output_dir(out, resume=resume, overwrite=overwrite)
    resume_from = checkpoints.resume_checkpoint(out) if resume else None
    if overwrite and not resume and state.is_main_process:
        clear_output_dir(out)
    state.wait_for_everyone()
    if state.is_main_process:
        write_resolved(cfg, out)

    with state.local_main_process_first():  # local rank 0 fills this machine's datasets/model caches first
        tokenizer = modeling.load_tokenizer(cfg.model)
        data = dataset.prepare(cfg, tokenizer)
    model = modeling.load_model(cfg.model)
    model.config.use_cache = False  # a KV cache in train mode lets packed sequences attend across boundaries
    peft_config = modeling.lora_config(cfg.model, model) if cfg.model.use_lora else None

    # The fast path (one micro-batch per step, run in passes) where it applies, and the precision,
    # pass size and checkpointing decided by measurement; see sftlib.fastpath and sftlib.autotune
    with library_deprecations():
        trainer = fastpath.build_trainer(
            cfg, model, tokenizer, data.train, data.eval, peft_config, loss_check=guards.FiniteLoss(cfg)
        )
    with guards.guarded(trainer, cfg):  # complete checkpoints, SIGINT/SIGTERM
        result = trainer.train(resume_from_checkpoint=resume_from)
    fingerprints = distributed.check_ranks_agree(trainer.model)  # SftlibError if ranks trained apart
    merge_check = save_outputs(trainer, cfg, tokenizer)

    runtime_s = result.metrics.get("train_runtime", 0.0)
    info = {
        "world_size": state.num_processes,
        "distributed_type": distributed.type_name(trainer.accelerator.distributed_type),
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(runtime_s, 3),
        "tokens_per_second": distributed.throughput(trainer.state.log_history, runtime_s),
        **distributed.peak_memory(),  # rank 0's
        "rank_param_fingerprints": fingerprints,
        "final_loss": _final_loss(trainer.state.log_history, result.training_loss),
        "train_loss": result.training_loss,
        "model_path": cfg.model.path,
        "use_lora": cfg.model.use_lora,
        "load_in_4bit": cfg.model.load_in_4bit,
        "output_dir": str(out),
        "adapter_dir": str(out / ADAPTER_DIRNAME) if cfg.model.use_lora else None,
        "data": {"format": data.format, "report": data.report},
        "merge": merge_check,
        "fast_path": trainer.plan.record(),
        "versions": library_versions(),
        "log_history": trainer.state.log_history,
    }
    if state.is_main_process:
        _write_json(out / RUN_INFO, info)
    state.wait_for_everyone()
    return info


def save_outputs(trainer, cfg: RunConfig, tokenizer) -> dict | None:
    """The seed's layout: adapter in lora_weights/, merged model + tokenizer in output_dir.

    Every folder is written through a staging folder, moved in, reloaded and compared (artifacts); the
    merged model is checked against base + adapter (sftlib.merge). Returns that check's figures.
    """
    from sftlib import artifacts, merge

    out, check = cfg.output_dir, None
    if cfg.model.use_lora:
        adapter_dir = out / ADAPTER_DIRNAME
        artifacts.save_trained(trainer, adapter_dir)  # every rank: FSDP/DeepSpeed gather the weights here
        if trainer.accelerator.is_main_process:
            check = merge.merge_adapter(cfg.model, adapter_dir, out)
            artifacts.write_atomically(out, tokenizer.save_pretrained)
    else:
        artifacts.save_trained(trainer, out)
    trainer.accelerator.wait_for_everyone()
    return check


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
        raise SftlibError(
            f"{path} does not exist: no finished run in {output_dir}.", "train first (sftlib train)."
        )
    return json.loads(path.read_text())


def clear_output_dir(out: Path) -> None:
    """--overwrite: remove what a previous run wrote, so no stale file survives into the new run."""
    if out.exists():
        shutil.rmtree(out)


def run_from_files(
    config_path: str | None, overrides: list[str], resume: bool = False, overwrite: bool = False
) -> dict:
    """Entry used by the CLI and by each process that `launch` starts."""
    cfg = load_config(config_path, overrides)
    return train(cfg, resume=resume, overwrite=overwrite)


def launch(
    config_path: str | None,
    overrides: list[str] = (),
    num_processes: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    accelerate_config: str | None = None,
) -> dict[str, Any]:
    """Train from a notebook. Returns output_dir/run_info.json.

    - 1 process: in this kernel.
    - N > 1: `accelerate.notebook_launcher` forks N workers, each running `run_from_files`, the
      same code as `accelerate launch -m sftlib train`. The kernel must not have imported
      bitsandbytes yet (accelerate refuses to fork then), so nothing here loads the config
      before the fork: the workers validate it.
    - `accelerate_config` (FSDP, DeepSpeed, multi-node): notebook_launcher can't take a launch
      config file, so this runs `accelerate launch --config_file ...` as a child process.
    """
    from sftlib import layout
    from sftlib.config import output_dir_of

    if num_processes < 1:
        raise SftlibError(f"num_processes must be at least 1, got {num_processes}.")
    # Before any worker starts: a refused output_dir is one error here, not one per worker.
    layout.check_output_dir(output_dir_of(config_path, overrides), resume=resume, overwrite=overwrite)
    if accelerate_config:
        from sftlib import distributed

        cmd = distributed.launch_command(
            config_path,
            list(overrides),
            num_processes,
            accelerate_config=accelerate_config,
            resume=resume,
            overwrite=overwrite,
        )
        distributed.run_streaming(cmd)
    elif num_processes == 1:
        return run_from_files(config_path, list(overrides), resume, overwrite)
    else:
        import sys

        from accelerate import notebook_launcher

        if "bitsandbytes" in sys.modules:
            raise SftlibError(
                "NUM_PROCESSES > 1 needs a fresh kernel: this one already imported bitsandbytes "
                "(through transformers), and accelerate.notebook_launcher refuses to fork after that.",
                "restart the kernel and run the launch cell before any cell that loads a model or config.",
            )
        from sftlib import distributed

        with distributed.worker_errors() as errors:
            notebook_launcher(
                distributed.reporting_errors(run_from_files, errors),
                args=(config_path, list(overrides), resume, overwrite),
                num_processes=num_processes,
                use_port=str(distributed.free_port()),
            )
    return read_run_info(output_dir_of(config_path, overrides))
