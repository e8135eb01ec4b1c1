"""A training run: RunConfig -> SFTConfig + SftlibTrainer -> output_dir.

One code path for every launch: in-process, `accelerate launch -m sftlib train`, and the notebook's
`launch(num_processes=N)` through accelerate.notebook_launcher. Every rank trains and saves its part;
only the main process writes run_info.json; after training every rank's parameters are checked to be
equal. The merge of a LoRA adapter runs after the ranks have left the process group, in the main
process alone (`training.merge: false` leaves it to `sftlib merge`).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from sftlib.config import RunConfig, load_config, write_resolved
from sftlib.errors import SftlibError
from sftlib.layout import ADAPTER_DIRNAME, CLI, NOTEBOOK, Controls
from sftlib.noise import library_deprecations
from sftlib.outputs import read_run_info
from sftlib.sft_args import sft_config

log = logging.getLogger("sftlib")


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    launcher_holds_workers: bool = False,
    how: Controls = CLI,
) -> dict[str, Any]:
    """Fine-tune as configured; returns the run info (also written to output_dir/run_info.json).

    The main process merges once the other ranks have left the process group and exited.
    `launcher_holds_workers`: the launcher keeps every worker until all have returned
    (accelerate.notebook_launcher, through torch elastic), so the merge can't wait for the others to
    exit; they have left the collective and freed their model. `how`: the controls an error about
    output_dir names (the CLI's flags, or notebook 03's parameters, which also print progress lines).
    """
    from sftlib import checkpoints, dataset, distributed, guards, layout, modeling, outputs, progress
    from sftlib.trainer import build_trainer

    args = sft_config(cfg)
    state = distributed.distributed_state(args.use_cpu)
    distributed.check_supported(cfg.model)
    out = cfg.output_dir
    layout.check_output_dir(out, resume=resume, overwrite=overwrite, how=how)
    resume_from = checkpoints.resume_checkpoint(out, how) if resume else None
    if overwrite and not resume and state.is_main_process:
        outputs.clear_output_dir(out)
    state.wait_for_everyone()
    if state.is_main_process:
        write_resolved(cfg, out)

    with state.local_main_process_first():  # local rank 0 fills this machine's datasets/model caches first
        tokenizer = modeling.load_tokenizer(cfg.model)
        data = dataset.prepare(cfg, tokenizer)
    model = modeling.load_model(cfg.model)
    model.config.use_cache = False  # a KV cache in train mode lets packed sequences attend across boundaries
    peft_config = modeling.lora_config(cfg.model, model) if cfg.model.use_lora else None

    # The plan (fast path, precision, attention, pass size, checkpointing), decided by measurement and
    # applied, then the trainer it asks for; see sftlib.plan and sftlib.trainer
    with library_deprecations():
        trainer = build_trainer(
            cfg, model, tokenizer, data.train, data.eval, peft_config, loss_check=guards.FiniteLoss(cfg)
        )
    if how == NOTEBOOK and state.is_main_process:  # a kernel: the pipeline passes these lines to its terminal
        trainer.add_callback(progress.training_lines())
    with guards.guarded(trainer, cfg):  # complete checkpoints, SIGINT/SIGTERM
        result = trainer.train(resume_from_checkpoint=resume_from)
    fingerprints = distributed.check_ranks_agree(trainer.model)  # SftlibError if ranks trained apart
    outputs.save_trained(trainer, cfg, tokenizer)  # every rank: FSDP/DeepSpeed gather the weights here

    runtime_s = result.metrics.get("train_runtime", 0.0)
    info = {
        "world_size": state.num_processes,
        "distributed_type": distributed.type_name(trainer.accelerator.distributed_type),
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(runtime_s, 3),
        "tokens_per_second": distributed.throughput(trainer.state.log_history, runtime_s),
        **distributed.peak_memory(),  # rank 0's, during training
        "rank_param_fingerprints": fingerprints,
        "final_loss": _final_loss(trainer.state.log_history, result.training_loss),
        "train_loss": result.training_loss,
        "model_path": cfg.model.path,
        "use_lora": cfg.model.use_lora,
        "load_in_4bit": cfg.model.load_in_4bit,
        "output_dir": str(out),
        "adapter_dir": str(out / ADAPTER_DIRNAME) if cfg.model.use_lora else None,
        "data": {"format": data.format, "report": data.report, "sources": data.sources},
        "merge": None,
        "fast_path": trainer.plan_record(),
        "versions": library_versions(),
        "log_history": trainer.state.log_history,
    }
    # Every rank frees its training copy (the merge loads the base again, unquantized) while the process
    # group is still up: DDP's teardown may talk to the other ranks.
    del trainer, model
    gc.collect()
    peers = distributed.leave(state)  # the last collective: from here no rank waits for another
    if not state.is_main_process:
        return info
    if cfg.model.use_lora and cfg.merge:
        if not launcher_holds_workers:
            distributed.wait_for_exit(peers)  # this machine's other ranks have exited and freed their memory
        info["merge"] = outputs.merge_run(cfg)
    elif cfg.model.use_lora:
        log.info(
            "training.merge is false: the adapter is in %s; merge it later with `sftlib merge --config ...`",
            out / ADAPTER_DIRNAME,
        )
    outputs.write_run_info(out, info)
    return info


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


def run_from_files(
    config_path: str | None,
    overrides: list[str],
    resume: bool = False,
    overwrite: bool = False,
    launcher_holds_workers: bool = False,
    how: Controls = CLI,
) -> dict:
    """Entry used by the CLI and by each process that `launch` starts (see `train`)."""
    cfg = load_config(config_path, overrides)
    return train(
        cfg, resume=resume, overwrite=overwrite, launcher_holds_workers=launcher_holds_workers, how=how
    )


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
    layout.check_output_dir(
        output_dir_of(config_path, overrides), resume=resume, overwrite=overwrite, how=NOTEBOOK
    )
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
        return run_from_files(config_path, list(overrides), resume, overwrite, how=NOTEBOOK)
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
                args=(config_path, list(overrides), resume, overwrite, True, NOTEBOOK),
                num_processes=num_processes,
                use_port=str(distributed.free_port()),
            )
    return read_run_info(output_dir_of(config_path, overrides))
