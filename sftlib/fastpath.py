"""The fast path: each step's examples packed into [rows, L] with restarting position_ids, run in chunks.

Same examples per optimizer step as plain batching, so the same loss and gradients (up to float
rounding); only the layout changes:

- `PackedCollator` best-fit-decreasing packs a micro-batch's examples into rows of at most
  `max_length` tokens, position_ids restart at 0 for every example, and no attention_mask is
  passed. transformers' `create_causal_mask` then sees the restarts
  (`masking_utils.find_packed_sequence_indices`) and builds a block-diagonal causal mask, so no
  example attends to another. That detection only happens with no 2-D attention mask and no KV
  cache: the trainer must call the model with use_cache=False (TRL's `compute_loss` does, and
  `train` also sets `model.config.use_cache = False`). Each example's first label is set to -100,
  since that position would otherwise be "predicted" from the previous example's last token; the
  padded path never scores it either (labels are shifted).
- Rows of `max_length`, not TRL's padding-free single [1, sum(L)] row: CPU SDPA with a mask costs
  O(row length²), so one long row is ~2x slower than the same tokens in rows of max_length.
- One micro-batch per optimizer step (all of per_device_train_batch_size x
  gradient_accumulation_steps), so packing sees the whole step; forward and backward then run over
  chunks of at most `chunk_tokens` tokens (`training.chunk_tokens`), gradients summed, each chunk's
  loss normalized by the step's trained tokens (`num_items_in_batch`). Same loss and gradient as
  one pass; activation memory is that of one chunk. Activation checkpointing stays off unless one
  chunk's activations, measured on a short forward pass, would not fit in half the free memory.
  With several processes the step is split into micro-batches of whole examples instead (gradient
  accumulation), because every rank must run the same number of passes and rows differ per rank.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

log = logging.getLogger("sftlib")

IGNORE = -100


def pack_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` grouped into rows whose lengths sum to <= max_length.

    Longer items first, each into the fullest row it still fits (ties: the earliest row). An item
    longer than max_length gets a row of its own (callers truncate before packing).
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


@dataclasses.dataclass
class PackedCollator:
    """Examples with `input_ids` and `labels` -> {input_ids, labels, position_ids} of shape [rows, L].

    L is the longest packed row (<= max_length unless one example is longer). Padding gets
    `pad_token_id`, label -100, and position_ids 0, 1, 2, ... of its own, so it is a separate
    block that no example attends to.
    """

    pad_token_id: int
    max_length: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lengths = [len(e["input_ids"]) for e in examples]
        rows = pack_rows(lengths, self.max_length)
        width = max(sum(lengths[i] for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n = lengths[i]
                input_ids[r, start : start + n] = torch.as_tensor(examples[i]["input_ids"])
                labels[r, start : start + n] = torch.as_tensor(examples[i]["labels"])
                labels[r, start] = IGNORE  # no example is scored on a token of the one before it
                position_ids[r, start : start + n] = torch.arange(n)
                start += n
            position_ids[r, start:] = torch.arange(width - start)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False}


# Tokens per forward/backward pass when `training.chunk_tokens` is unset (a pass always holds at least one
# packed row). Measured with SmolLM2-135M + LoRA on 2 CPU cores (fp32, ~1.3 MB of activations per token):
# chat-mix rows of 512 tokens ran at 259 tok/s one row per pass and 263 two rows per pass; the demo's
# 65-token rows ran at 202 tok/s one row per pass, 236 three per pass and ~280 all eight at once, at
# peak RSS 1611, 1863 and ~2400 MB. On a CPU, memory is the scarcer resource; a GPU needs more rows to
# fill its cores.
DEFAULT_CHUNK_TOKENS = {"cpu": 128, "cuda": 4096}
MEASURE_TOKENS = 64  # length of the forward pass that measures activation memory


def default_chunk_tokens(device_type: str) -> int:
    return DEFAULT_CHUNK_TOKENS.get(device_type, DEFAULT_CHUNK_TOKENS["cuda"])


@dataclasses.dataclass
class Plan:
    """How the fast path runs one optimizer step.

    The step's examples (per_device_train_batch_size x gradient_accumulation_steps) form one
    micro-batch, packed into rows; forward and backward then run over chunks of rows of at most
    `chunk_tokens` tokens (at least one row), so activation memory is bounded by the chunk, not by the
    batch. Activation checkpointing is used only when one chunk's activations would not fit.
    """

    examples_per_step: int
    chunk_tokens: int
    bytes_per_token: float | None  # activations autograd keeps per token, measured; None if unmeasured
    activation_checkpointing: bool
    why: str
    # "rows": one micro-batch per step, chunked by rows in training_step. "examples": several processes;
    # micro-batches of whole examples through gradient accumulation (see build_trainer).
    split: str = "rows"
    passes: int = 0  # forward/backward passes run so far, for run_info

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rows_per_chunk(self, row_length: int) -> int:
        return max(1, self.chunk_tokens // max(1, row_length))

    def describe(self) -> str:
        per_k = (
            ""
            if self.bytes_per_token is None
            else f" ({self.bytes_per_token * 1024 / 2**20:.0f} MB per 1k tokens)"
        )
        unit = "chunks of rows" if self.split == "rows" else "micro-batches of whole examples"
        return (
            f"fast path: {self.examples_per_step} examples per optimizer step packed into rows, forward/backward "
            f"over {unit} of <= {self.chunk_tokens} tokens{per_k}; activation checkpointing "
            f"{'on' if self.activation_checkpointing else 'off'}: {self.why}"
        )


def plan(
    batch_size: int,
    accumulation: int,
    max_length: int,
    chunk_tokens: int,
    bytes_per_token: float | None,
    free_bytes: int | None,
    checkpointing: bool | None = None,
) -> Plan:
    """The step plan; `checkpointing` None = decide from memory, a bool = the config's explicit choice."""
    examples = batch_size * accumulation
    if checkpointing is not None:
        why = "set by training.activation_checkpointing"
    elif bytes_per_token is None or free_bytes is None:
        checkpointing, why = False, "activation memory could not be measured"
    else:
        # A chunk holds at least one row, and a row up to max_length tokens.
        need = max(chunk_tokens, max_length) * bytes_per_token
        checkpointing = need > free_bytes / 2
        why = (
            f"one chunk's activations (~{need / 2**20:.0f} MB) "
            f"{'exceed' if checkpointing else 'fit in'} half the free memory ({free_bytes / 2**20:.0f} MB)"
        )
    return Plan(examples, chunk_tokens, bytes_per_token, checkpointing, why)


def examples_per_micro_batch(examples_per_step: int, longest: int, chunk_tokens: int) -> int:
    """The most examples per micro-batch that divide the step and whose worst case fits one chunk (>= 1)."""
    budget = max(chunk_tokens, longest)
    return max(
        k for k in range(1, examples_per_step + 1) if examples_per_step % k == 0 and k * longest <= budget
    )


def activation_bytes_per_token(model, autocast_dtype=None, tokens: int = MEASURE_TOKENS) -> float | None:
    """Bytes of activations autograd keeps for the backward pass, per token, from two short forward passes.

    Gradients flow into the input embeddings, so a frozen base model keeps what LoRA's backward needs;
    the run's autocast applies; weights are not counted and shared storage counts once. The passes
    are `tokens` and 2 x `tokens` long and the difference is taken, so per-pass costs (autocast's
    low-precision weight copies, rotary tables) don't count as per-token ones. The RNG state is
    restored, so the run's dropout masks are unchanged. None for a model without a plain backbone.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if backbone is None or model.get_input_embeddings() is None:
        return None
    short, long = (_saved_bytes(model, backbone, n, autocast_dtype) for n in (tokens, 2 * tokens))
    return max(0, long - short) / tokens


def _saved_bytes(model, backbone, tokens: int, autocast_dtype) -> int:
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    device = model.get_input_embeddings().weight.device
    ids = torch.zeros((1, tokens), dtype=torch.long, device=device)
    positions = torch.arange(tokens, device=device).unsqueeze(0)
    was_training = model.training
    model.train()
    try:
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            torch.enable_grad(),
            torch.autocast(
                device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
            backbone(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    finally:
        model.train(was_training)
    return sum(saved.values())


def free_memory_bytes(device, pending_bytes: int = 0) -> int:
    """Memory free for activations on `device`, less `pending_bytes` still to be placed there."""
    import torch

    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return max(0, free - pending_bytes)


LOSS_CHUNK = 1024  # trained tokens per LM-head tile: bounds the [tokens, vocab] logits held at once


def trained_token_loss(hidden, weight, labels, num_items=None, chunk: int = LOSS_CHUNK):
    """Causal LM loss from the backbone's hidden states, scoring only the trained positions.

    hidden [B, L, H], labels [B, L] unshifted (-100 = not trained). The LM head runs on the
    positions whose next token is trained, in checkpointed tiles of `chunk` tokens: no [B, L, vocab]
    logits, no work on prompts or padding. Returns the summed loss / num_items (default: the number of
    trained tokens).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:]
    mask = targets != IGNORE
    selected, targets = hidden[:, :-1][mask], targets[mask]
    total = hidden.sum() * 0.0  # connected to the graph even when nothing is trained
    for start in range(0, targets.numel(), chunk):
        h, t = selected[start : start + chunk], targets[start : start + chunk]
        total = total + checkpoint(_tile_nll, h, weight, t, use_reentrant=False)
    denominator = targets.numel() if num_items is None else num_items
    return total / torch.as_tensor(denominator, device=total.device).clamp(min=1)


def _tile_nll(h, weight, t):
    import torch

    logits = torch.nn.functional.linear(h, weight)
    return torch.nn.functional.cross_entropy(logits.float(), t, reduction="sum")


def fast_trainer_class():
    """SFTTrainer with `trained_token_loss` on one process (the backbone is called directly, so DDP is
    left to TRL's own loss)."""
    from trl import SFTTrainer

    class FastSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            base = self.accelerator.unwrap_model(model)
            base = base.get_base_model() if hasattr(base, "get_base_model") else base
            simple = not return_outputs and self.accelerator.num_processes == 1 and "position_ids" in inputs
            if not (simple and _plain_lm_head(base)):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            backbone = getattr(base, base.base_model_prefix)
            hidden = backbone(
                input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False
            ).last_hidden_state
            weight = base.get_output_embeddings().weight
            loss = trained_token_loss(hidden, weight, inputs["labels"], num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            if mode == "train":
                self._total_train_tokens += inputs["input_ids"].numel()
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            """Forward and backward over chunks of rows, gradients summed: the step's gradient, in less memory.

            Every chunk's loss is normalized by the whole step's trained tokens, so the sum equals the
            unchunked loss. Without that count (a model that takes no loss kwargs) the step runs whole.
            """
            import torch

            n, width = inputs["input_ids"].shape
            rows = self.sftlib_plan.rows_per_chunk(width)
            if self.sftlib_plan.split != "rows" or n <= rows or num_items_in_batch is None:
                self.sftlib_plan.passes += 1
                return super().training_step(model, inputs, num_items_in_batch)
            starts = range(0, n, rows)
            total = None
            for start in starts:
                chunk = {k: v[start : start + rows] if torch.is_tensor(v) else v for k, v in inputs.items()}
                loss = super().training_step(model, chunk, num_items_in_batch)
                self.sftlib_plan.passes += 1
                total = loss if total is None else total + loss
            return total

    return FastSFTTrainer


def _plain_lm_head(model) -> bool:
    """logits = hidden @ W.T exactly: a plain Linear head without bias, adapter, scaling or softcap."""
    import torch

    head = model.get_output_embeddings()
    text = model.config.get_text_config()
    scaled = any(
        getattr(text, k, None) not in (None, 1.0)
        for k in (
            "final_logit_softcapping",
            "logit_scale",
            "output_multiplier",
            "lm_head_multiplier",
            "logits_scaling",
        )
    )
    return type(head) is torch.nn.Linear and head.bias is None and not scaled


def applies(cfg, args) -> tuple[bool, str]:
    """(whether the fast path is used, why not when it isn't)."""
    if args.packing or args.padding_free:
        return False, "training.packing / padding_free set: TRL's own packing is used"
    if cfg.model.trust_remote_code:
        return False, "remote model code may not detect packed rows from position_ids"
    if args.deepspeed or args.fsdp:
        return False, "DeepSpeed and FSDP count micro-batches themselves: the configured batches are used"
    return True, ""


def build_trainer(cfg, args, model, tokenizer, train_dataset, eval_dataset, peft_config, **kwargs):
    """The SFTTrainer `sftlib train` uses: the fast path where it applies, plain TRL otherwise.

    Mutates `args` (micro-batch size, accumulation, activation checkpointing) as the plan says.
    """
    from trl import SFTTrainer

    kwargs = dict(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        **kwargs,
    )
    ok, why = applies(cfg, args)
    if not ok:
        log.info("fast path off: %s", why)
        return SFTTrainer(**kwargs)
    p = make_plan(cfg, args, model)
    args.per_device_train_batch_size, args.gradient_accumulation_steps = p.examples_per_step, 1
    if args.world_size > 1:
        # Each process packs its own examples, so row counts differ between ranks, while every rank must
        # run the same number of forward passes per step (DDP and TRL's metrics communicate in each).
        # Whole-example micro-batches through gradient accumulation keep the counts equal.
        p.split = "examples"
        k = examples_per_micro_batch(
            p.examples_per_step, _longest(train_dataset, cfg.model.max_seq_length), p.chunk_tokens
        )
        args.per_device_train_batch_size, args.gradient_accumulation_steps = k, p.examples_per_step // k
    args.activation_checkpointing = args.gradient_checkpointing = p.activation_checkpointing
    log.info("%s", p.describe())
    collator = PackedCollator(pad_token_id=tokenizer.pad_token_id, max_length=cfg.model.max_seq_length)
    trainer = fast_trainer_class()(data_collator=collator, **kwargs)
    trainer.sftlib_plan = p
    return trainer


def make_plan(cfg, args, model) -> Plan:
    """The plan for this config, model and device: chunk size, measured activation memory, checkpointing."""
    import torch

    from sftlib.config import DECIDED_WHEN_NULL

    device = args.device
    chunk = cfg.training.get("chunk_tokens") or default_chunk_tokens(device.type)
    autocast = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    placed = getattr(model, "hf_device_map", None) is not None or getattr(model, "is_loaded_in_4bit", False)
    if not placed and model.get_input_embeddings().weight.device != device:
        model.to(device)  # where the Trainer puts it anyway: measure there (a large model is slow on a CPU)
    per_token = activation_bytes_per_token(model, autocast)
    on_device = model.get_input_embeddings().weight.device == device
    weights = 0 if on_device else sum(p.numel() * p.element_size() for p in model.parameters())
    explicit = next((cfg.training[k] for k in DECIDED_WHEN_NULL if cfg.training.get(k) is not None), None)
    return plan(
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        cfg.model.max_seq_length,
        chunk,
        per_token,
        free_memory_bytes(device, weights),
        explicit,
    )


def _longest(dataset, default: int) -> int:
    if dataset is not None and "num_tokens" in dataset.column_names and len(dataset):
        return int(max(dataset["num_tokens"]))
    return default
