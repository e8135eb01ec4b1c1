"""The fast path: one micro-batch per optimizer step, run as passes of whole examples, in TRL's trainer.

Same examples per optimizer step as plain batching, so the same loss and gradients (up to float
rounding); only the layout and the precision change:

- TRL's own padding-free collator (`DataCollatorForLanguageModeling(padding_free=True)`) turns the
  step's examples (per_device_train_batch_size x gradient_accumulation_steps) into one row [1, T]
  with position_ids restarting at 0 for every example and the first label of each example set to
  -100. transformers' `create_causal_mask` sees the restarts (`find_packed_sequence_indices`) and
  builds a block-diagonal causal mask, so no example attends to another. That detection only happens
  with no 2-D attention mask and no KV cache: TRL's `compute_loss` and fused LM head call the model
  with use_cache=False (and `train` sets `model.config.use_cache = False`).
- `SftlibTrainer.training_step` splits that row into passes of whole examples of at most
  `pass_tokens` tokens (best-fit decreasing), and runs forward and backward per pass, gradients
  summed, each pass's loss normalized by the step's trained tokens (`num_items_in_batch`): the same
  loss and gradient as one pass, with the activation memory of one pass. TRL computes the loss (its
  fused LM head), its metrics and its token counts on every pass: each pass is a padding-free row,
  the layout TRL counts.
- Pass size and precision are chosen by measurement (`sftlib.autotune`), unless the config sets them
  (`training.chunk_tokens`, `training.bf16` / `fp16`, `model.dtype`). With bf16 chosen for a frozen
  base (LoRA), its weights are stored in bf16 and the adapters stay fp32, instead of autocasting fp32
  weights op by op.
- With several processes the step is split into micro-batches of whole examples instead (gradient
  accumulation), because every rank must run the same number of passes and examples differ per rank.

Where the fast path does not apply (TRL's packing, DeepSpeed, FSDP, remote model code), the same
trainer class runs TRL's batches unchanged, and the log and run_info say why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

from trl import SFTTrainer

from sftlib.errors import SftlibError

log = logging.getLogger("sftlib")

IGNORE = -100

# Tokens per pass with several processes when `training.chunk_tokens` is unset (passes are not timed
# there: every rank must run the same passes). Measured on one process, see README "Performance".
DEFAULT_PASS_TOKENS = {"cpu": 512, "cuda": 4096}


def pack_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` grouped into bins whose lengths sum to <= max_length.

    Longer items first, each into the fullest bin it still fits (ties: the earliest bin). An item
    longer than max_length gets a bin of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        best = None
        for r, space in enumerate(free):
            if n <= space and (best is None or space < free[best]):
                best = r
        if best is None:
            rows.append([i])
            free.append(max_length - n)
        else:
            rows[best].append(i)
            free[best] -= n
    return rows


def example_spans(inputs: dict[str, Any]) -> list[tuple[int, int]]:
    """(start, end) of every example in a padding-free row [1, T], from TRL's `cu_seq_lens_q`."""
    bounds = inputs["cu_seq_lens_q"].tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def split_passes(inputs: dict[str, Any], pass_tokens: int) -> list[dict[str, Any]]:
    """A padding-free step [1, T] -> padding-free passes of whole examples of <= pass_tokens tokens each.

    Every pass carries what TRL's collator gives a row (input_ids, labels, position_ids, the sequence
    boundaries for varlen attention kernels); other keys are passed on unchanged.
    """
    import torch

    spans = example_spans(inputs)
    bins = pack_rows([end - start for start, end in spans], pass_tokens)
    per_token = ("input_ids", "labels", "position_ids")
    boundaries = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
    passes = []
    for members in bins:
        members = sorted(members)  # dataset order within a pass
        index = torch.cat([torch.arange(*spans[i]) for i in members]).to(inputs["input_ids"].device)
        lengths = torch.tensor([spans[i][1] - spans[i][0] for i in members])
        one = {k: v for k, v in inputs.items() if k not in per_token + boundaries}
        one.update({k: inputs[k][:, index] for k in per_token})
        cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
        cu = cu.to(inputs["cu_seq_lens_q"].device)
        one["cu_seq_lens_q"] = one["cu_seq_lens_k"] = cu
        one["max_length_q"] = one["max_length_k"] = int(lengths.max())
        if "seq_idx" in inputs:
            one["seq_idx"] = torch.repeat_interleave(torch.arange(len(members), dtype=torch.int32), lengths)[
                None
            ].to(inputs["seq_idx"].device)
        passes.append(one)
    return passes


@dataclasses.dataclass
class Plan:
    """What sftlib decided for this run, and why; `record()` goes into run_info.json["fast_path"].

    `split`: "passes" (one micro-batch per step, split into passes in training_step), "examples"
    (several processes: micro-batches of whole examples through gradient accumulation) or "none"
    (the fast path does not apply: TRL's batches as configured).
    """

    used: bool
    why: str  # why the fast path is on or off
    examples_per_step: int
    split: str
    pass_tokens: int | None  # None while it is being timed
    pass_tokens_from: str
    precision: str  # "bf16", "fp32", or as configured
    precision_from: str
    precision_seconds: dict[str, float] | None  # timed candidates, seconds per pass of the linear layers
    frozen_weights_dtype: str | None  # the frozen base's dtype when sftlib cast it, else None
    bytes_per_token: float | None  # activations autograd keeps per token, measured
    activation_checkpointing: bool
    checkpointing_from: str
    micro_batch: int | None = None  # examples per micro-batch when split == "examples"
    allocator: str | None = None  # what sftlib told the C allocator (see autotune.keep_freed_memory)
    attention_calls_at_start: dict[str, int] = dataclasses.field(default_factory=dict)
    tuner: Any = None  # autotune.PassTuner while pass size is timed
    passes: int = 0  # forward/backward passes run so far

    def record(self) -> dict[str, Any]:
        from sftlib.attention import CALLS

        hidden = ("tuner", "attention_calls_at_start")
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in hidden}
        # Attention calls run per example (sftlib.attention) and those that fell back to sdpa, this run
        start = self.attention_calls_at_start
        out["attention_calls"] = {k: v - start.get(k, 0) for k, v in CALLS.items()}
        out["pass_timing"] = self.tuner.record_dict() if self.tuner is not None else None
        if self.tuner is not None and self.tuner.chosen is not None:
            out["pass_tokens"] = self.tuner.chosen
        return out

    def describe(self) -> str:
        per_k = (
            ""
            if self.bytes_per_token is None
            else f" ({self.bytes_per_token * 1024 / 2**20:.0f} MB of activations per 1k tokens)"
        )
        if not self.used:
            head = f"fast path off: {self.why}"
        elif self.tuner is not None:
            head = (
                f"fast path: {self.examples_per_step} examples per optimizer step, forward/backward over passes of "
                f"whole examples; pass size timed on the first steps among {self.tuner.candidates} tokens"
            )
        else:
            unit = "passes" if self.split == "passes" else "micro-batches of whole examples"
            head = (
                f"fast path: {self.examples_per_step} examples per optimizer step, forward/backward over {unit} "
                f"of <= {self.pass_tokens} tokens ({self.pass_tokens_from})"
            )
        timed = (
            ""
            if not self.precision_seconds
            else " (linear layers per pass: "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in self.precision_seconds.items())
            + ")"
        )
        weights = (
            f"; frozen weights stored in {self.frozen_weights_dtype}" if self.frozen_weights_dtype else ""
        )
        allocator = f"; allocator: {self.allocator}" if self.allocator else ""
        return (
            f"{head}; precision {self.precision}: {self.precision_from}{timed}{weights}{per_k}; "
            f"activation checkpointing {'on' if self.activation_checkpointing else 'off'}: "
            f"{self.checkpointing_from}{allocator}"
        )


class SftlibTrainer(SFTTrainer):
    """TRL's SFTTrainer plus what TRL lacks: a step run as passes of whole examples, and a loss check.

    `plan` (a `Plan`) says how steps are split; `loss_check`, when given, is called with each
    step's loss and step number before the optimizer applies it (see `sftlib.guards.FiniteLoss`).
    TRL computes the loss, its metrics and its token counts on every pass.
    """

    def __init__(self, *args, plan: Plan, loss_check=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.loss_check = loss_check

    def training_step(self, model, inputs, num_items_in_batch=None):
        plan = self.plan
        if plan.split == "passes" and num_items_in_batch is not None:
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
        from sftlib.autotune import StepClock

        tuner = self.plan.tuner
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
                    "pass size: %d tokens (timed on the first %d steps, tokens/s by pass size: %s)",
                    tuner.chosen,
                    self.state.global_step + 1,
                    {k: round(v) for k, v in tuner.tokens_per_second().items()},
                )
        return total

    def _pass(self, model, inputs, num_items_in_batch):
        """One forward/backward pass through TRL's training_step. On the fast path, TRL's fused LM head
        sees only the positions whose next token is trained (`trained_positions_only`), and with the
        frozen base in bf16 the adapters take its bf16 activations as they are (autocast runs them)."""
        self.plan.passes += 1
        unwrapped = self.accelerator.unwrap_model(model)
        keep = None
        if self.plan.used and self._head_takes_positions():
            keep = (inputs["labels"][0, 1:] != IGNORE).nonzero().flatten()
            if keep.numel() > 0:  # nothing trained: TRL's own path keeps the graph connected
                inputs = {**inputs, "shift_labels": inputs["labels"][:, 1:][:, keep]}
            else:
                keep = None
        with contextlib.ExitStack() as stack:
            if keep is not None:
                stack.enter_context(trained_positions_only(_backbone(unwrapped), keep))
            if self.plan.frozen_weights_dtype is not None:
                from peft.helpers import disable_input_dtype_casting

                # PEFT would copy every adapter input to fp32 (the adapters' dtype); under autocast the
                # adapter matmuls take bf16 inputs and keep fp32 weights and gradients.
                stack.enter_context(disable_input_dtype_casting(unwrapped))
            return super().training_step(model, inputs, num_items_in_batch)

    def _head_takes_positions(self) -> bool:
        """Whether TRL computes the loss from its fused head's per-token outputs alone (no full logits)."""
        return self.compute_loss_func is None and self.label_smoother is None and not self.aux_loss_enabled


def _backbone(model):
    """The module TRL's fused LM head runs before the head (`base_model` of the causal LM)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.base_model


@contextlib.contextmanager
def trained_positions_only(backbone, keep):
    """While active, `backbone`'s `last_hidden_state` keeps only the positions `keep`.

    TRL's fused LM head, given `shift_labels` (already shifted labels), scores the backbone's hidden
    states as they are; with only the positions whose next token is trained, it projects and folds
    those alone. TRL does the same itself on CUDA/XPU (its compact path); on other devices it scores
    every position, prompts included. Same loss, metrics and gradients; a forward hook (public
    torch API), removed on exit.
    """

    def select(module, args, output):
        output.last_hidden_state = output.last_hidden_state[:, keep]
        return output

    handle = backbone.register_forward_hook(select)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------- building the trainer


def applies(cfg, args) -> tuple[bool, str]:
    """(whether the fast path is used, why or why not)."""
    if args.packing or args.padding_free:
        return False, "training.packing / padding_free is set: TRL's own packing runs the batches"
    if cfg.model.trust_remote_code:
        return False, "remote model code may not detect packed examples from position_ids"
    if args.deepspeed or args.fsdp:
        return False, "DeepSpeed and FSDP count micro-batches themselves: the configured batches are used"
    return True, "one micro-batch per optimizer step, split into passes of whole examples"


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
    """The trainer `sftlib train` uses: decide the plan, build the SFTConfig it needs, then the trainer.

    `run_args` are extra SFTConfig fields (the bench sets max_steps, save_strategy ...). The model's
    frozen weights may be cast to bf16 here (see `make_plan`).
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from sftlib import attention
    from sftlib.train import sft_config

    run_args = dict(run_args or {})
    configured = sft_config(cfg, **run_args)
    plan = make_plan(cfg, configured, model, train_dataset)
    log.info("%s", plan.describe())
    args = sft_config(cfg, **run_args, **sft_fields(plan, configured, cfg))
    if plan.used:
        kwargs["data_collator"] = DataCollatorForLanguageModeling(
            pad_token_id=tokenizer.pad_token_id, padding_free=True
        )
        # Each example attends within itself, without transformers' [T, T] block-diagonal mask
        model.set_attn_implementation(attention.register())
    trainer = SftlibTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        plan=plan,
        loss_check=loss_check,
        **kwargs,
    )
    if plan.frozen_weights_dtype is not None:
        _check_trainable_fp32(trainer.model)
    return trainer


def sft_fields(plan: Plan, configured, cfg) -> dict[str, Any]:
    """The SFTConfig fields the plan decides."""
    fields: dict[str, Any] = {}
    if plan.split == "passes":
        fields.update(per_device_train_batch_size=plan.examples_per_step, gradient_accumulation_steps=1)
    elif plan.split == "examples":
        fields.update(
            per_device_train_batch_size=plan.micro_batch,
            gradient_accumulation_steps=plan.examples_per_step // plan.micro_batch,
        )
    if cfg.activation_checkpointing is None:
        fields["activation_checkpointing"] = plan.activation_checkpointing
    if cfg.training.get("bf16") is None and cfg.training.get("fp16") is None:
        fields["bf16"] = plan.precision == "bf16"  # autocast: with the frozen base in bf16, for the adapters
        fields["fp16"] = False
    return fields


def _check_trainable_fp32(model) -> None:
    import torch

    low = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if low:
        raise SftlibError(
            f"{len(low)} trainable parameters are not float32 after storing the frozen weights in bf16 "
            f"(first: {low[0]}).",
            "set training.bf16: true (autocast, fp32 weights) or model.dtype explicitly.",
        )


def make_plan(cfg, args, model, train_dataset) -> Plan:
    """Decide the step layout, the precision and activation checkpointing for this config, model and device."""
    import torch

    from sftlib import attention, autotune

    device = args.device
    used, why = applies(cfg, args)
    chunk = cfg.chunk_tokens
    if not used and chunk is not None:
        raise SftlibError(
            f"training.chunk_tokens={chunk} is set, but sftlib's fast path, which reads it, is off: {why}.",
            "remove training.chunk_tokens, or the setting that turns the fast path off.",
        )
    examples = args.per_device_train_batch_size * args.gradient_accumulation_steps
    longest = _longest(train_dataset, cfg.model.max_seq_length)
    placed = getattr(model, "hf_device_map", None) is not None or getattr(model, "is_loaded_in_4bit", False)
    sharded = bool(args.deepspeed or args.fsdp)
    if not placed and not sharded and model.get_input_embeddings().weight.device != device:
        model.to(device)  # where the Trainer puts it anyway: measure there (a large model is slow on a CPU)

    loaded_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    precision, precision_from, seconds, cast = _decide_precision(cfg, args, model, sharded, chunk or 512)
    autocast = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else None
    measured = None if sharded else autotune.activation_bytes_per_token(model, autocast)
    if used and measured is not None:
        # Measured with transformers' attention; sftlib.attention also keeps attention probabilities
        # (per token: layers x heads x example length), counted at the longest example.
        size = 4 if precision == "fp32" else 2
        measured += attention.saved_bytes_per_token(model.config, longest, size)
    on_device = model.get_input_embeddings().weight.device == device
    weights = 0 if on_device else sum(p.numel() * p.element_size() for p in model.parameters())
    free = autotune.free_memory_bytes(device, weights)

    split, pass_tokens, pass_from, tuner, micro = "none", None, "TRL's configured batches", None, None
    if used:
        # A pass holds at most what one configured micro-batch can, and activations of at most the weights'
        # size as loaded (and half the free memory): past that, larger passes buy little speed for much
        # more memory, and the baseline's peak memory is the bar (README "Performance").
        cap = args.per_device_train_batch_size * cfg.model.max_seq_length
        if measured:
            cap = min(cap, int(min(loaded_bytes, free / 2) / measured))
        if chunk is not None:
            pass_tokens, pass_from = chunk, "training.chunk_tokens"
        elif args.world_size > 1:
            pass_tokens = DEFAULT_PASS_TOKENS.get(device.type, DEFAULT_PASS_TOKENS["cuda"])
            pass_from = "default: not timed with several processes, every rank must run the same passes"
        else:
            whole_step = examples * longest  # the most tokens a step can hold
            candidates = autotune.pass_candidates(whole_step, max(cap, autotune.FIRST_PASS_TOKENS))
            if len(candidates) == 1:
                pass_tokens, pass_from = candidates[0], "the only size within the step and memory"
            else:
                tuner, pass_from = autotune.PassTuner(candidates), "timed on the first steps"
        split = "examples" if args.world_size > 1 else "passes"
        if split == "examples":
            micro = examples_per_micro_batch(examples, longest, pass_tokens)
    # While pass sizes are timed, checkpointing must suit the largest candidate (the tuner may keep it)
    largest_pass = pass_tokens or (max(tuner.candidates) if tuner else autotune.FIRST_PASS_TOKENS)
    checkpointing, checkpointing_from = _decide_checkpointing(
        cfg, measured, free, sharded, largest_pass, longest, used, args
    )
    plan = Plan(
        used=used,
        why=why,
        examples_per_step=examples,
        split=split,
        pass_tokens=pass_tokens,
        pass_tokens_from=pass_from,
        precision=precision,
        precision_from=precision_from,
        precision_seconds=seconds,
        frozen_weights_dtype=cast,
        bytes_per_token=measured,
        activation_checkpointing=checkpointing,
        checkpointing_from=checkpointing_from,
        micro_batch=micro,
        allocator=autotune.keep_freed_memory() if used and device.type == "cpu" else None,
        attention_calls_at_start=dict(attention.CALLS),
        tuner=tuner,
    )
    return plan


def _decide_precision(cfg, args, model, sharded: bool, tokens: int):
    """(precision, why, timed seconds or None, dtype the frozen weights were cast to or None)."""
    import torch

    from sftlib import autotune

    t = cfg.training
    if t.get("bf16") is not None or t.get("fp16") is not None:
        name = "bf16" if t.get("bf16") else "fp16" if t.get("fp16") else "fp32"
        return name, "set by training.bf16 / training.fp16", None, None
    if cfg.model.load_in_4bit:
        return "bf16", "4-bit base: computes in model.dtype (bf16 unless set)", None, None
    if cfg.model.dtype not in (None, "float32"):
        return cfg.model.dtype, f"set by model.dtype={cfg.model.dtype}", None, None
    frozen_base = cfg.model.use_lora and cfg.model.lora_config.bias == "none" and not sharded
    seconds = _shared_timing(
        args, lambda: autotune.time_precisions(model, tokens, args.device.type, not cfg.model.use_lora)
    )
    choice = autotune.faster(seconds)
    why = f"the faster on this machine's matmuls at the model's shapes ({tokens} tokens per pass)"
    if args.world_size > 1:
        why += ", timed on rank 0"
    cast = None
    if choice == "bf16" and frozen_base:
        # Every weight of the base: the trainer's PEFT wrapping freezes them all and adds fp32 adapters.
        autotune.cast_weights(model, torch.bfloat16, frozen_only=False)
        cast = "bfloat16"
    return choice, why, seconds, cast


def _shared_timing(args, measure):
    """`measure()` on rank 0, the same result on every rank (ranks must make the same choice)."""
    if args.world_size == 1:
        return measure()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    result = [measure() if PartialState().is_main_process else None]
    broadcast_object_list(result, from_process=0)
    return result[0]


def _decide_checkpointing(cfg, measured, free, sharded, pass_tokens, longest, used, args) -> tuple[bool, str]:
    explicit = cfg.activation_checkpointing
    if explicit is not None:
        return bool(explicit), "set by training.activation_checkpointing"
    if sharded:
        return True, (
            "activation memory is not measured under DeepSpeed/FSDP (the model is sharded), so the memory-saving "
            "choice is kept; set training.activation_checkpointing: false to turn it off"
        )
    if measured is None:
        raise SftlibError(
            "could not measure this model's activation memory (it has no plain backbone with input embeddings), "
            "and that measurement decides activation checkpointing.",
            "set training.activation_checkpointing: true (less memory, about a third slower) or false.",
        )
    # A pass holds at least one whole example, up to max_length tokens; TRL's batches hold the micro-batch.
    tokens = (
        max(pass_tokens, longest) if used else args.per_device_train_batch_size * cfg.model.max_seq_length
    )
    need = tokens * measured
    on = need > free / 2
    return on, (
        f"one pass's activations (~{need / 2**20:.0f} MB for {tokens} tokens) "
        f"{'exceed' if on else 'fit in'} half the free memory ({free / 2**20:.0f} MB)"
    )


def examples_per_micro_batch(examples_per_step: int, longest: int, pass_tokens: int) -> int:
    """The most examples per micro-batch that divide the step and whose worst case fits one pass (>= 1)."""
    budget = max(pass_tokens, longest)
    return max(
        k for k in range(1, examples_per_step + 1) if examples_per_step % k == 0 and k * longest <= budget
    )


def _longest(dataset, default: int) -> int:
    if dataset is not None and "num_tokens" in dataset.column_names and len(dataset):
        return int(max(dataset["num_tokens"]))
    return default
