"""One side of `sftlib bench`, run in its own process so that its peak RSS is its own.

- baseline: a plain `trl.SFTTrainer` with TRL's defaults (bf16 autocast, activation checkpointing on),
  the checkpoint's dtype, and the config's batch size, accumulation, max_length, learning rate and
  seed; no packing, each micro-batch padded to its longest example.
- sftlib: exactly what `sftlib train` builds for the config (`sftlib.training.trainer.build_trainer`).

Both sides draw the same examples in the same order. The first `warmup` optimizer steps (default: the
steps sftlib times its pass_tokens candidates on, 7) are not timed, on either side. Token counts are
real (non-pad) tokens; "trained" tokens are those that carry loss. Model FLOPs per real token: 6N for
full fine-tuning, 4N for LoRA (no weight gradients for the frozen base), N = weights of the matmuls
(lm_head included), plus causal attention (3 x 4 x layers x attention width x (position + 1) per
token), so MFU does not reward padding.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIDES = ("baseline", "sftlib")


def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: every nn.Linear, the LM head included."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def train_flops(lengths: list[int], n_params: int, config, lora: bool) -> float:
    """Model FLOPs to train on examples of these lengths (real tokens only; see the module docstring)."""
    text = config.get_text_config()
    width = text.num_attention_heads * getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    dense = (4 if lora else 6) * n_params * sum(lengths)
    attention = 3 * 4 * text.num_hidden_layers * width * sum(n * (n + 1) / 2 for n in lengths)
    return dense + attention


class Counter:
    """Wraps a data collator; records each micro-batch's real and trained token counts, in order."""

    def __init__(self, collate):
        self.collate = collate
        self.batches: list[tuple[list[int], int]] = []

    def __call__(self, examples):
        from sftlib.data import IGNORE_INDEX

        batch = self.collate(examples)
        labels = batch["labels"]
        trained = int((labels[:, 1:] != IGNORE_INDEX).sum())
        self.batches.append(([len(e["input_ids"]) for e in examples], trained))
        return batch


def phase(text: str) -> None:
    """Name a phase of this side as it starts (`sftlib.bench.compare` passes these lines on)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def step_timer(warmup: int, total: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """When each optimizer step ended, and the peak RSS (MB) by then; names the timed phase."""

        def __init__(self):
            self.ends: list[float] = []
            self.peak_rss_mb: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            phase(f"{warmup} warm-up steps (not timed)" if warmup else "timed steps")

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.peak_rss_mb.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            if len(self.ends) == warmup:
                phase(f"timed steps: {total - warmup}")
            elif len(self.ends) == total and state.max_steps > total:
                phase(f"profiled steps: {state.max_steps - total}")

    return StepTimer()


def default_warmup() -> int:
    """Untimed steps on both sides: sftlib times its pass_tokens candidates on its first steps."""
    from sftlib.training.fast_path.pass_tuner import MAX_CANDIDATES, PassTuner

    return PassTuner.tuning_steps(MAX_CANDIDATES)


def baseline_trainer(cfg, tokenizer, train, run: dict[str, Any]):
    """A plain trl.SFTTrainer with TRL's defaults and the config's batch, learning rate and seed."""
    import dataclasses

    from trl import SFTTrainer

    from sftlib.bench.machine import training_device
    from sftlib.models import modeling
    from sftlib.training import sft_args

    t = cfg.training
    model_cfg = dataclasses.replace(cfg.model, dtype=None)
    model = modeling.load_model(model_cfg)
    args = sft_args.from_fields(
        {
            "per_device_train_batch_size": t.get("per_device_train_batch_size", 8),
            "gradient_accumulation_steps": t.get("gradient_accumulation_steps", 1),
            "learning_rate": t.get("learning_rate", 2e-5),
            "seed": t.get("seed", 42),
            "max_length": cfg.model.max_seq_length,
            "report_to": "none",
            "use_cpu": training_device() == "cpu",
            **run,
        }
    )
    peft_config = modeling.lora_config(model_cfg, model) if model_cfg.use_lora else None
    return SFTTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config
    )


def run_side(
    side: str,
    config: str,
    overrides: list[str],
    steps: int,
    warmup: int | None = None,
    profile_steps: int = 0,
) -> dict[str, Any]:
    """Train `warmup + steps` optimizer steps on one side; measure the last `steps`. With `profile_steps`,
    that many more steps run under torch.profiler (not timed) and `profile` holds their breakdown."""
    from sftlib.config import load_config
    from sftlib.data import dataset
    from sftlib.models import modeling
    from sftlib.training.trainer import build_trainer

    warmup = default_warmup() if warmup is None else warmup
    phase("loading the data, the model and the trainer")
    cfg = load_config(config, overrides)
    tokenizer = modeling.load_tokenizer(cfg.model)
    train = dataset.prepare(cfg, tokenizer, splits=("train",)).train
    total = warmup + steps
    run = {
        "output_dir": tempfile.mkdtemp(prefix=f"sftlib-bench-{side}-"),
        "max_steps": total + profile_steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": total,
    }
    if side == "baseline":
        trainer = baseline_trainer(cfg, tokenizer, train, run)
    else:
        model = modeling.load_model(cfg.model)
        model.config.use_cache = False
        peft_config = modeling.lora_config(cfg.model, model) if cfg.model.use_lora else None
        trainer = build_trainer(cfg, model, tokenizer, train, None, peft_config, run_args=run)
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    n_params = matmul_params(model)
    counter = Counter(trainer.data_collator)
    trainer.data_collator = counter
    timer = step_timer(warmup, total)
    trainer.add_callback(timer)
    profiler = None
    if profile_steps:
        from sftlib.bench.profiling import ProfileSteps

        profiler = ProfileSteps(total + 1, profile_steps, model.config.get_text_config().vocab_size)
        trainer.add_callback(profiler)
    trainer.train()

    accumulation = trainer.args.gradient_accumulation_steps
    plan = trainer.plan_record() if side == "sftlib" else None
    timed = counter.batches[warmup * accumulation : total * accumulation]
    seconds = timer.ends[total - 1] - timer.ends[warmup - 1]
    lengths = [n for batch, _ in timed for n in batch]
    trained = sum(t for _, t in timed)
    flops = train_flops(lengths, n_params, model.config, cfg.model.use_lora)
    return {
        "side": side,
        "steps_timed": steps,
        "micro_batch_size": trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": accumulation,
        "activation_checkpointing": bool(trainer.args.activation_checkpointing),
        "bf16_autocast": bool(trainer.args.bf16),
        "weights_dtype": frozen_dtype(trainer.model),
        "collator": type(counter.collate).__name__,
        "padding_free": bool(getattr(counter.collate, "padding_free", False)),
        "pass_tokens": plan["pass_tokens"] if plan else None,
        "precision": plan["precision"] if plan else None,
        "activation_mb_per_1k_tokens": (
            plan["bytes_per_token"] * 1024 / 2**20 if plan and plan["bytes_per_token"] is not None else None
        ),
        "plan": plan,
        "warmup_steps": warmup,
        "examples": len(lengths),
        "real_tokens": sum(lengths),
        "trained_tokens": trained,
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "tokens_per_second": sum(lengths) / seconds,
        "trained_tokens_per_second": trained / seconds,
        "model_flops": flops,
        "achieved_gflops": flops / seconds / 1e9,
        "peak_rss_mb": timer.peak_rss_mb[total - 1],  # before any profiled step (the profiler holds memory)
        "peak_gpu_mb": peak_gpu_mb(),
        "final_loss": trainer.state.log_history[-1].get("train_loss"),
        "profile": profiler.result if profiler else None,
    }


def peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def frozen_dtype(model) -> str:
    """The dtype most weights are stored in (the frozen base with LoRA)."""
    import collections

    sizes: collections.Counter = collections.Counter()
    for p in model.parameters():
        sizes[str(p.dtype).replace("torch.", "")] += p.numel()
    return sizes.most_common(1)[0][0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sftlib.bench.side", description="one side of `sftlib bench` (internal)"
    )
    p.add_argument("--side", choices=SIDES, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--profile-steps", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    result = run_side(a.side, a.config, a.overrides, a.steps, a.warmup, a.profile_steps)
    Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
