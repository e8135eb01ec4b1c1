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

from sftlib.config import RunConfig, load_config
from sftlib.noise import library_deprecations
from sftlib.outputs.layout import ADAPTER_DIRNAME, CLI, NOTEBOOK, Controls
from sftlib.training.sft_args import sft_config

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
    from sftlib import progress
    from sftlib.data import dataset
    from sftlib.models import modeling
    from sftlib.outputs import layout, saving
    from sftlib.training import checkpoints, distributed, guards, metrics
    from sftlib.training.trainer import build_trainer

    args = sft_config(cfg)
    state = distributed.distributed_state(args.use_cpu)
    distributed.check_supported(cfg.model)
    out = cfg.output_dir
    layout.check_output_dir(out, resume=resume, overwrite=overwrite, how=how)
    resume_from = checkpoints.resume_checkpoint(out, how) if resume else None
    if overwrite and not resume and state.is_main_process:
        saving.clear_output_dir(out)
    state.wait_for_everyone()
    if state.is_main_process:
        saving.write_resolved(cfg, out)

    with state.local_main_process_first():  # local rank 0 fills this machine's datasets/model caches first
        tokenizer = modeling.load_tokenizer(cfg.model)
        data = dataset.prepare(cfg, tokenizer)
    model = modeling.load_model(cfg.model)
    model.config.use_cache = False  # a KV cache in train mode lets packed sequences attend across boundaries
    peft_config = modeling.lora_config(cfg.model, model) if cfg.model.use_lora else None

    # The plan (fast path, precision, attention, pass size, checkpointing), decided by measurement and
    # applied, then the trainer it asks for; see sftlib.training.fast_path.plan and sftlib.training.trainer
    with library_deprecations():
        trainer = build_trainer(
            cfg, model, tokenizer, data.train, data.eval, peft_config, loss_check=guards.FiniteLoss(cfg)
        )
    if how == NOTEBOOK and state.is_main_process:  # a kernel: the pipeline passes these lines to its terminal
        trainer.add_callback(progress.training_lines())
    with guards.guarded(trainer, cfg):  # complete checkpoints, SIGINT/SIGTERM
        result = trainer.train(resume_from_checkpoint=resume_from)
    fingerprints = distributed.check_ranks_agree(trainer.model)  # SftlibError if ranks trained apart
    saving.save_trained(trainer, cfg, tokenizer)  # every rank: FSDP/DeepSpeed gather the weights here

    runtime_s = result.metrics.get("train_runtime", 0.0)
    info = {
        "world_size": state.num_processes,
        "distributed_type": distributed.type_name(trainer.accelerator.distributed_type),
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(runtime_s, 3),
        "tokens_per_second": metrics.throughput(trainer.state.log_history, runtime_s),
        **metrics.peak_memory(),  # rank 0's, during training
        "rank_param_fingerprints": fingerprints,
        "final_loss": metrics.final_loss(trainer.state.log_history, result.training_loss),
        "train_loss": result.training_loss,
        "model_path": cfg.model.path,
        "use_lora": cfg.model.use_lora,
        "load_in_4bit": cfg.model.load_in_4bit,
        "output_dir": str(out),
        "adapter_dir": str(out / ADAPTER_DIRNAME) if cfg.model.use_lora else None,
        "data": {"format": data.format, "report": data.report, "sources": data.sources},
        "merge": None,
        "plan": trainer.plan_record(),
        "versions": metrics.library_versions(),
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
        info["merge"] = saving.merge_run(cfg)
    elif cfg.model.use_lora:
        log.info(
            "training.merge is false: the adapter is in %s; merge it later with `sftlib merge --config ...`",
            out / ADAPTER_DIRNAME,
        )
    saving.write_run_info(out, info)
    return info


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
