"""The trainer `sftlib train` runs: TRL's SFTTrainer, a step run as passes of whole examples, a loss check.

`build_trainer` measures, decides the plan (`sftlib.training.fast_path.plan`), applies it, and builds `SftlibTrainer`
with the SFTConfig the plan asks for. `SftlibTrainer.training_step` splits the step's padding-free row
into passes of at most `pass_tokens` tokens (`sftlib.training.fast_path.passes`) and runs forward and backward per pass,
gradients summed, each pass's loss normalized by the step's trained tokens (`num_items_in_batch`): the
same loss and gradient as one pass, with the activation memory of one pass. TRL computes the loss (its
fused LM head, fed only the trained positions: `sftlib.training.fast_path.lm_head`), its metrics and its token counts on
every pass, each pass being the padding-free row TRL counts.

Packed examples stay apart: transformers' `create_causal_mask` sees the position_ids restart at 0
(`find_packed_sequence_indices`) and builds a block-diagonal mask, or the attention implementation
reads the sequence boundaries (sftlib's per-example attention, FlashAttention). That detection needs
no 2-D attention mask and no KV cache: TRL's `compute_loss` and fused head call the model with
use_cache=False (and `train` sets `model.config.use_cache = False`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from trl import SFTTrainer

from sftlib.errors import SftlibError
from sftlib.models import attention
from sftlib.training.fast_path import lm_head, measure, plan
from sftlib.training.fast_path.pass_tuner import PassTuner, StepClock
from sftlib.training.fast_path.passes import split_passes
from sftlib.training.sft_args import sft_config

log = logging.getLogger("sftlib")


class SftlibTrainer(SFTTrainer):
    """TRL's SFTTrainer plus what TRL lacks: a step run as passes of whole examples, and a loss check.

    `plan` (a `plan.Plan`) says how steps are split; `loss_check`, when given, is called with each
    step's loss and step number before the optimizer applies it (see `sftlib.training.guards.FiniteLoss`).
    """

    def __init__(self, *args, plan: plan.Plan, loss_check=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.loss_check = loss_check
        self.tuner = PassTuner(list(plan.pass_candidates)) if plan.pass_candidates else None
        self.passes_run = 0
        self.attention_calls_at_start = dict(attention.CALLS)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.plan.split == "passes" and num_items_in_batch is not None:
            loss = self._step_in_passes(model, inputs, num_items_in_batch)
        else:
            # TRL's own batches, or several processes: one pass per micro-batch. A model that takes no
            # loss kwargs gives no step-wide count to normalize passes with, so its step runs whole.
            loss = self._pass(model, inputs, num_items_in_batch)
        if self.loss_check is not None:
            self.loss_check(loss, self.state.global_step + 1)
        return loss

    def _step_in_passes(self, model, inputs, num_items_in_batch):
        """Forward and backward per pass, gradients summed: the step's gradient in one pass's memory.

        Every pass's loss is normalized by the whole step's trained tokens, so the sum equals the
        loss of one pass over the step.
        """
        tuner = self.tuner
        size = tuner.size_for_next_step() if tuner is not None else self.plan.pass_tokens
        total = None
        with StepClock(self.args.device) as clock:
            for one in split_passes(inputs, size):
                loss = self._pass(model, one, num_items_in_batch)
                total = loss if total is None else total + loss
        if tuner is not None and tuner.chosen is None:
            tuner.record(size, int(inputs["input_ids"].numel()), clock.seconds)
            if tuner.chosen is not None:
                log.info(
                    "pass_tokens: %d (timed on the first %d steps, tokens/s by pass_tokens: %s)",
                    tuner.chosen,
                    self.state.global_step + 1,
                    {k: round(v) for k, v in tuner.tokens_per_second().items()},
                )
        return total

    def _pass(self, model, inputs, num_items_in_batch):
        """One forward/backward pass through TRL's training_step. On the fast path, TRL's fused LM head
        sees only the positions whose next token is trained; with the frozen base in bf16 the adapters
        take its bf16 activations as they are (autocast runs them)."""
        self.passes_run += 1
        unwrapped = self.accelerator.unwrap_model(model)
        with contextlib.ExitStack() as stack:
            if self.plan.setup.fast_path_on:
                stack.enter_context(lm_head.trained_positions_only(unwrapped))
            if self.plan.setup.frozen_weights_dtype is not None:
                from peft.helpers import disable_input_dtype_casting

                # PEFT would copy every adapter input to fp32 (the adapters' dtype); under autocast the
                # adapter matmuls take bf16 inputs and keep fp32 weights and gradients.
                stack.enter_context(disable_input_dtype_casting(unwrapped))
            return super().training_step(model, inputs, num_items_in_batch)

    def plan_record(self) -> dict[str, Any]:
        """The plan as run: its decisions, the pass size the tuner kept, passes and attention calls run."""
        out = self.plan.record()
        start = self.attention_calls_at_start
        # Attention calls run per example (sftlib.models.attention) and those that fell back to sdpa, this run
        out["attention_calls"] = {k: v - start.get(k, 0) for k, v in attention.CALLS.items()}
        out["pass_timing"] = self.tuner.record_dict() if self.tuner is not None else None
        if self.tuner is not None and self.tuner.chosen is not None:
            out["pass_tokens"] = self.tuner.chosen
        out["passes"] = self.passes_run
        return out


def build_trainer(
    cfg,
    model,
    tokenizer,
    train_dataset,
    eval_dataset,
    peft_config,
    *,
    run_args=None,
    loss_check=None,
    **kwargs,
):
    """The trainer `sftlib train` uses: measure, decide and apply the plan, then build the trainer.

    `run_args` are extra SFTConfig fields (the bench sets max_steps, save_strategy ...). `apply` may
    move the model and store its frozen weights in bf16 (see `sftlib.training.fast_path.plan`).
    """
    run_args = dict(run_args or {})
    configured = sft_config(cfg, **run_args)
    setup = plan.decide_setup(cfg, configured, model_facts(cfg, configured, model))
    loaded_bytes = measure.weights_bytes(model)
    applied = plan.apply(setup, model)
    memory = memory_facts(cfg, configured, setup, model, train_dataset, loaded_bytes)
    decided = plan.decide(cfg, configured, setup, memory, applied)
    log.info("%s", decided.describe())
    trainer = SftlibTrainer(
        model=model,
        args=sft_config(cfg, **run_args, **plan.sft_fields(decided, cfg)),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        plan=decided,
        loss_check=loss_check,
        **kwargs,
    )
    if setup.frozen_weights_dtype is not None:
        check_trainable_fp32(trainer.model)
    return trainer


def model_facts(cfg, args, model) -> plan.ModelFacts:
    """What the setup decision reads: where the model is, and the precisions timed when the config leaves them open."""
    device = args.device
    seconds = None
    if plan.precision_is_timed(cfg):
        tokens = cfg.pass_tokens or plan.PRECISION_TIMING_TOKENS
        seconds = measure.on_rank_zero(
            args.world_size,
            lambda: measure.time_precisions(model, tokens, device.type, not cfg.model.use_lora),
        )
    return plan.ModelFacts(
        placed=getattr(model, "hf_device_map", None) is not None
        or getattr(model, "is_loaded_in_4bit", False),
        on_device=model.get_input_embeddings().weight.device == device,
        precision_seconds=seconds,
        flash_attention_installed=measure.flash_attention_installed(),
    )


def memory_facts(cfg, args, setup, model, train_dataset, loaded_bytes: int) -> plan.MemoryFacts:
    """What the step decision reads, measured with the weights where and as they train."""
    import torch

    longest = measure.longest_example(train_dataset, cfg.model.max_seq_length)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.precision)
    measured = None if plan.is_sharded(args) else measure.activation_bytes_per_token(model, autocast)
    if measured is not None and setup.attention == attention.NAME:
        # Measured on one example, where sftlib.models.attention runs transformers' sdpa; over several examples it
        # also keeps attention probabilities (per token: layers x heads x example length), at the longest.
        measured += attention.saved_bytes_per_token(
            model.config, longest, 4 if setup.precision == "fp32" else 2
        )
    on_device = model.get_input_embeddings().weight.device == args.device
    pending = 0 if on_device else measure.weights_bytes(model)
    return plan.MemoryFacts(
        longest=longest,
        loaded_bytes=loaded_bytes,
        bytes_per_token=measured,
        free_bytes=measure.free_memory_bytes(args.device, pending),
    )


def check_trainable_fp32(model) -> None:
    import torch

    low = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if low:
        raise SftlibError(
            f"{len(low)} trainable parameters are not float32 after storing the frozen weights in bf16 "
            f"(first: {low[0]}).",
            "set training.bf16: true (autocast, fp32 weights) or model.dtype explicitly.",
        )
