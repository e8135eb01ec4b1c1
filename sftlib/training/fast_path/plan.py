"""The training plan: sftlib's decisions for a run as frozen records built from measurements, and the one
step that applies them.

- `decide_setup(cfg, args, facts)` (pure) -> `Setup`: whether the fast path applies, where the model
  goes, the precision (timed where the config leaves it open) and the frozen base's dtype, the
  attention implementation, the allocator.
- `apply(setup, model)`: every side effect of the plan, in order, each named in the log: move the
  model, store the frozen base in bf16, set the attention implementation, tell glibc to keep freed
  memory. Nothing else in the plan changes the model or the process.
- `decide(cfg, args, setup, memory)` (pure) -> `Plan`: how a step runs (passes or micro-batches of
  whole examples), the pass size `pass_tokens` (set, timed on the first steps, or a default) and
  activation checkpointing, from memory measured after `apply`.

The fast path: one micro-batch per optimizer step, packed into one row by TRL's padding-free collator and run
as passes of whole examples (`sftlib.training.fast_path.passes`, `sftlib.training.trainer`): the same examples per optimizer step
as plain batching, so the same loss and gradients up to float rounding. Where it does not apply (TRL's
packing, DeepSpeed, FSDP, remote model code) TRL's batches run unchanged, and the log and
run_info.json say why.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from sftlib.errors import SftlibError
from sftlib.models import attention
from sftlib.training.fast_path.pass_tuner import FIRST_PASS_TOKENS, pass_candidates
from sftlib.training.fast_path.passes import examples_per_micro_batch

log = logging.getLogger("sftlib")

# Tokens per pass with several processes when `training.pass_tokens` is unset (passes are not timed
# there: every rank must run the same passes). Measured on one process, see the performance notes.
DEFAULT_PASS_TOKENS = {"cpu": 512, "cuda": 4096}
PRECISION_TIMING_TOKENS = 512  # pass size the precisions are timed at when pass_tokens is unset


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What `decide_setup` reads, measured before anything is changed."""

    placed: bool  # placed on devices when loaded (device_map, 4-bit)
    on_device: bool  # already on the training device
    precision_seconds: dict[str, float] | None  # linear layers per pass, over the shapes timed, or None
    flash_attention_installed: bool


@dataclasses.dataclass(frozen=True)
class MemoryFacts:
    """What `decide` reads, measured after `apply` (weights where and in the dtype they train in)."""

    longest: int  # tokens in the longest example
    loaded_bytes: int  # the weights as loaded, before `apply`
    bytes_per_token: float | None  # activations kept per token (with the run's attention); None: not measured
    free_bytes: int  # memory free for activations on the training device


@dataclasses.dataclass(frozen=True)
class Setup:
    """Decisions that change the model or the process; `apply` carries them out."""

    fast_path_on: bool  # sftlib's fast path runs the steps (passes, the trained-positions LM head)
    why: str  # why it is on or off
    move_to: str | None  # the device the model moves to before measuring (where the trainer puts it)
    precision: str  # "bf16", "fp32", or as configured
    precision_from: str
    precision_seconds: dict[str, float] | None
    frozen_weights_dtype: str | None  # "bfloat16": the frozen base is stored in bf16
    attention: str | None  # the implementation set on the model; None: as loaded
    attention_from: str
    keep_freed_memory: bool  # tell glibc's malloc to keep freed memory for reuse


@dataclasses.dataclass(frozen=True)
class Plan:
    """What sftlib decided for this run, and why; `record()` goes into run_info.json["plan"].

    `split`: "passes" (one micro-batch per step, split into passes in the trainer's training_step),
    "micro_batches" (several processes: micro-batches of whole examples through gradient accumulation)
    or "none" (the fast path does not apply: TRL's batches as configured).
    """

    setup: Setup
    applied: tuple[str, ...]  # what `apply` did
    examples_per_step: int
    split: str
    pass_tokens: int | None  # None while it is timed among `pass_candidates`
    pass_tokens_from: str
    pass_candidates: tuple[int, ...] | None
    micro_batch: int | None  # examples per micro-batch when split == "micro_batches"
    bytes_per_token: float | None
    activation_checkpointing: bool
    checkpointing_from: str

    def record(self) -> dict[str, Any]:
        out = dataclasses.asdict(self.setup)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "setup"})
        out["applied"] = list(self.applied)
        out["pass_candidates"] = list(self.pass_candidates) if self.pass_candidates else None
        return out

    def describe(self) -> str:
        s = self.setup
        if not s.fast_path_on:
            head = f"fast path off: {s.why}"
        elif self.pass_candidates:
            head = (
                f"fast path: {self.examples_per_step} examples per optimizer step, forward/backward over passes of "
                f"whole examples; pass_tokens timed on the first steps among {list(self.pass_candidates)}"
            )
        else:
            unit = "passes" if self.split == "passes" else "micro-batches of whole examples"
            head = (
                f"fast path: {self.examples_per_step} examples per optimizer step, forward/backward over {unit} "
                f"of <= {self.pass_tokens} tokens (pass_tokens: {self.pass_tokens_from})"
            )
        seconds = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in (s.precision_seconds or {}).items())
        timed = f" (linear layers timed per pass: {seconds})" if seconds else ""
        weights = f"; frozen weights stored in {s.frozen_weights_dtype}" if s.frozen_weights_dtype else ""
        per_k = ""
        if self.bytes_per_token is not None:
            per_k = f" ({self.bytes_per_token * 1024 / 2**20:.0f} MB of activations per 1k tokens)"
        return (
            f"{head}; precision {s.precision}: {s.precision_from}{timed}{weights}{per_k}; "
            f"attention {s.attention or 'as loaded'}: {s.attention_from}; "
            f"activation checkpointing {'on' if self.activation_checkpointing else 'off'}: {self.checkpointing_from}"
        )


# --------------------------------------------------------------------------- decisions (pure)


def fast_path(cfg, args) -> tuple[bool, str]:
    """(whether the fast path is used, why or why not)."""
    if args.packing or args.padding_free:
        return False, "training.packing / padding_free is set: TRL's own packing runs the batches"
    if cfg.model.trust_remote_code:
        return False, "remote model code may not detect packed examples from position_ids"
    if args.deepspeed or args.fsdp:
        return False, "DeepSpeed and FSDP count micro-batches themselves: the configured batches are used"
    return True, "one micro-batch per optimizer step, split into passes of whole examples"


def is_sharded(args) -> bool:
    return bool(args.deepspeed or args.fsdp)


def precision_is_timed(cfg) -> bool:
    """Whether the config leaves the precision to a timing (no bf16/fp16, no 4-bit, no low-precision dtype)."""
    t = cfg.training
    configured = t.get("bf16") is not None or t.get("fp16") is not None
    return not configured and not cfg.model.load_in_4bit and cfg.model.dtype in (None, "float32")


def decide_setup(cfg, args, facts: ModelFacts) -> Setup:
    on, why = fast_path(cfg, args)
    if not on and cfg.pass_tokens is not None:
        raise SftlibError(
            f"training.pass_tokens={cfg.pass_tokens} is set, but sftlib's fast path, which reads it, is off: {why}.",
            "remove training.pass_tokens, or the setting that turns the fast path off.",
        )
    precision, precision_from, cast = decide_precision(cfg, args, facts.precision_seconds)
    name, name_from = decide_attention(cfg, args.device.type, on, facts.flash_attention_installed)
    stays = facts.placed or facts.on_device or is_sharded(args)
    return Setup(
        fast_path_on=on,
        why=why,
        move_to=None if stays else str(args.device),
        precision=precision,
        precision_from=precision_from,
        precision_seconds=facts.precision_seconds,
        frozen_weights_dtype=cast,
        attention=name,
        attention_from=name_from,
        keep_freed_memory=on and args.device.type == "cpu",
    )


def decide_precision(cfg, args, seconds: dict[str, float] | None) -> tuple[str, str, str | None]:
    """(precision, why, the dtype the frozen base is stored in or None)."""
    t = cfg.training
    if t.get("bf16") is not None or t.get("fp16") is not None:
        name = "bf16" if t.get("bf16") else "fp16" if t.get("fp16") else "fp32"
        return name, "set by training.bf16 / training.fp16", None
    if cfg.model.load_in_4bit:
        return "bf16", "4-bit base: computes in model.dtype (bf16 unless set)", None
    if cfg.model.dtype not in (None, "float32"):
        return cfg.model.dtype, f"set by model.dtype={cfg.model.dtype}", None
    choice = min(seconds, key=seconds.get)
    tokens = cfg.pass_tokens or PRECISION_TIMING_TOKENS
    why = f"the faster on this machine's matmuls at the model's shapes ({tokens} tokens per pass)"
    if args.world_size > 1:
        why += ", timed on rank 0"
    # Every weight of the base: the trainer's PEFT wrapping freezes them all and adds fp32 adapters.
    frozen_base = cfg.model.use_lora and cfg.model.lora_config["bias"] == "none" and not is_sharded(args)
    return choice, why, "bfloat16" if choice == "bf16" and frozen_base else None


def decide_attention(cfg, device: str, fast_path_on: bool, flash_installed: bool) -> tuple[str | None, str]:
    """(the attention implementation to set, or None to keep the loaded one; why)."""
    configured = cfg.model.attn_implementation
    if configured:
        return configured, "set by model.attn_implementation"
    if not fast_path_on:
        return None, "transformers' default, as loaded (the fast path is off)"
    if device == "cuda" and flash_installed:
        return (
            "flash_attention_2",
            "TRL recommends FlashAttention for padding-free batches (SFTConfig.padding_free)",
        )
    if device == "cuda":
        return attention.NAME, (
            "TRL recommends FlashAttention for padding-free batches, but flash-attn is not installed: sftlib's "
            "per-example attention instead (SDPA per group of similar-length examples, no [T, T] mask)"
        )
    return attention.NAME, (
        "measured faster than sdpa over the block-diagonal mask on a CPU (each example attends within itself)"
    )


def decide(cfg, args, setup: Setup, memory: MemoryFacts, applied: tuple[str, ...] = ()) -> Plan:
    examples = args.per_device_train_batch_size * args.gradient_accumulation_steps
    measured, longest = memory.bytes_per_token, memory.longest
    split, pass_tokens, pass_from, candidates, micro = "none", None, "TRL's configured batches", None, None
    if setup.fast_path_on:
        # A pass holds at most what one configured micro-batch can, and activations of at most the weights'
        # size as loaded (and half the free memory): past that, larger passes buy little speed for much
        # more memory, and the baseline's peak memory is the bar (the performance notes).
        cap = args.per_device_train_batch_size * cfg.model.max_seq_length
        if measured:
            cap = min(cap, int(min(memory.loaded_bytes, memory.free_bytes / 2) / measured))
        if cfg.pass_tokens is not None:
            pass_tokens, pass_from = cfg.pass_tokens, "training.pass_tokens"
        elif args.world_size > 1:
            pass_tokens = DEFAULT_PASS_TOKENS.get(args.device.type, DEFAULT_PASS_TOKENS["cuda"])
            pass_from = "default: not timed with several processes, every rank must run the same passes"
        else:
            sizes = pass_candidates(examples * longest, max(cap, FIRST_PASS_TOKENS))  # a step's most tokens
            if len(sizes) == 1:
                pass_tokens, pass_from = sizes[0], "the only size within the step and memory"
            else:
                candidates, pass_from = tuple(sizes), "timed on the first steps"
        split = "micro_batches" if args.world_size > 1 else "passes"
        if split == "micro_batches":
            micro = examples_per_micro_batch(examples, longest, pass_tokens)
    # While pass sizes are timed, checkpointing must suit the largest candidate (the tuner may keep it)
    largest_pass = pass_tokens or (max(candidates) if candidates else FIRST_PASS_TOKENS)
    checkpointing, checkpointing_from = decide_checkpointing(
        cfg,
        args,
        bytes_per_token=measured,
        free_bytes=memory.free_bytes,
        sharded=is_sharded(args),
        pass_tokens=largest_pass,
        longest=longest,
        fast_path_on=setup.fast_path_on,
    )
    return Plan(
        setup=setup,
        applied=applied,
        examples_per_step=examples,
        split=split,
        pass_tokens=pass_tokens,
        pass_tokens_from=pass_from,
        pass_candidates=candidates,
        micro_batch=micro,
        bytes_per_token=measured,
        activation_checkpointing=checkpointing,
        checkpointing_from=checkpointing_from,
    )


def decide_checkpointing(
    cfg, args, *, bytes_per_token, free_bytes, sharded, pass_tokens, longest, fast_path_on
) -> tuple[bool, str]:
    """(activation checkpointing on, why): as configured, else on only if one pass's measured activations
    (`bytes_per_token` times its tokens) would not fit in half of `free_bytes`."""
    measured, free = bytes_per_token, free_bytes
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
        max(pass_tokens, longest)
        if fast_path_on
        else args.per_device_train_batch_size * cfg.model.max_seq_length
    )
    need = tokens * measured
    on = need > free / 2
    return on, (
        f"one pass's activations (~{need / 2**20:.0f} MB for {tokens} tokens) "
        f"{'exceed' if on else 'fit in'} half the free memory ({free / 2**20:.0f} MB)"
    )


def sft_fields(plan: Plan, cfg) -> dict[str, Any]:
    """The SFTConfig fields the plan decides."""
    fields: dict[str, Any] = {}
    if plan.setup.fast_path_on:
        # TRL's padding-free collator packs each micro-batch into one row. Its max_length check is off
        # because sftlib's prepared examples are already cut at model.max_seq_length.
        fields.update(padding_free=True, max_length=None)
    if plan.split == "passes":
        fields.update(per_device_train_batch_size=plan.examples_per_step, gradient_accumulation_steps=1)
    elif plan.split == "micro_batches":
        fields.update(
            per_device_train_batch_size=plan.micro_batch,
            gradient_accumulation_steps=plan.examples_per_step // plan.micro_batch,
        )
    if cfg.activation_checkpointing is None:
        fields["activation_checkpointing"] = plan.activation_checkpointing
    if cfg.training.get("bf16") is None and cfg.training.get("fp16") is None:
        fields["bf16"] = (
            plan.setup.precision == "bf16"
        )  # autocast: with the frozen base in bf16, for the adapters
        fields["fp16"] = False
    return fields


# --------------------------------------------------------------------------- the side effects


def apply(setup: Setup, model) -> tuple[str, ...]:
    """Carry out `setup` on `model` and this process, each action logged; returns what was done."""
    done = []
    if setup.move_to is not None:
        model.to(setup.move_to)
        done.append(f"model moved to {setup.move_to}, where the trainer runs it (measured there)")
    if setup.frozen_weights_dtype == "bfloat16":
        import torch

        cast = cast_weights(model, torch.bfloat16, frozen_only=False)
        done.append(f"{cast} weights of the frozen base stored in bfloat16 (adapters stay float32)")
    if setup.attention is not None:
        model.set_attn_implementation(
            attention.register() if setup.attention == attention.NAME else setup.attention
        )
        done.append(f"attention implementation: {setup.attention}")
    if setup.keep_freed_memory:
        done.append(f"allocator: {keep_freed_memory()}")
    for line in done:
        log.info("plan: %s", line)
    return tuple(done)


def cast_weights(model, dtype, frozen_only: bool = True) -> int:
    """Store the model's parameters in `dtype` (only those that do not train, with `frozen_only`).

    Only parameters: buffers (rotary frequencies) keep their precision, and tied weights, being one
    parameter, stay tied. Returns how many were cast.
    """
    cast = 0
    for param in model.parameters():
        if (param.requires_grad and frozen_only) or not param.is_floating_point() or param.dtype == dtype:
            continue
        param.data = param.data.to(dtype)
        cast += 1
    return cast


# glibc returns large freed blocks to the OS at once (mmap above a threshold, heap trimming), so every
# pass page-faults its big temporaries in again. Keeping them for reuse saves that work at no cost in
# peak RSS (the same blocks are reused; the performance notes have the measurement). The process keeps
# up to this much freed memory instead of returning it.
KEEP_FREED_BYTES = 1 << 30
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep freed memory for reuse (mallopt); says what was done, or why not."""
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return "unchanged: not glibc"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    ok = all(libc.mallopt(p, KEEP_FREED_BYTES) == 1 for p in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))
    if not ok:
        return "unchanged: glibc refused mallopt"
    return (
        f"glibc keeps up to {KEEP_FREED_BYTES >> 20} MB of freed memory for reuse (mmap and trim thresholds)"
    )
