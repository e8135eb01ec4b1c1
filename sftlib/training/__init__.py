"""Training: a run from its config to its outputs, on one process or many.

- `train`: a training run, RunConfig -> SFTConfig + trainer -> output_dir;
- `launch`: starting a run from a notebook, on N processes, or as `accelerate launch` children;
- `preview`: the SFTConfig, LoraConfig and first batch a run trains with, shown before it trains;
- `sft_args`: the one place a `trl.SFTConfig` is built;
- `trainer`: TRL's SFTTrainer, a step run as passes of whole examples, a loss check;
- `fast_path`: the plan (decisions measured on this machine), passes, the LM head;
- `guards`: what stops a run early: a stop signal, a loss that is no longer finite;
- `checkpoints`: checkpoints that count only once complete, resume, rotation;
- `distributed`: the process group and the checks that N processes train one model;
- `metrics`: what a run measured: throughput, peak memory, library versions;
- `tracking`: experiment trackers (`training.report_to`).
"""

__all__ = [
    "checkpoints",
    "distributed",
    "fast_path",
    "guards",
    "launch",
    "metrics",
    "preview",
    "sft_args",
    "tracking",
    "train",
    "trainer",
]
