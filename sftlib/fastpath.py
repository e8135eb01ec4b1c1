"""The fast CPU path: each micro-batch's examples packed into [rows, L] with restarting position_ids.

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
- `plan` picks the micro-batch: all of the effective batch (per_device_train_batch_size x
  gradient_accumulation_steps examples) in one micro-batch when its tokens fit `token_budget`,
  else the largest divisor of it that fits. The sampler yields the same example order, so each
  optimizer step still sees the same examples, and the loss is normalized by the step's trained
  tokens either way (`num_items_in_batch`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

log = logging.getLogger("sftlib")

IGNORE = -100
# Tokens per micro-batch the fast path aims for. Measured on a 2-core CPU with SmolLM2-135M + LoRA:
# throughput is flat from ~2k tokens up; activations grow linearly with it.
DEFAULT_TOKEN_BUDGET = 4096


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


@dataclasses.dataclass
class Plan:
    """How the fast path batches: micro-batch size and accumulation for the same effective batch."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    effective_batch: int
    worst_case_tokens: int  # per micro-batch: micro-batch size x the longest example

    def describe(self) -> str:
        return (
            f"fast path: {self.per_device_train_batch_size} examples per micro-batch x "
            f"{self.gradient_accumulation_steps} accumulation steps (effective batch {self.effective_batch}), "
            f"packed into rows; at most {self.worst_case_tokens} tokens per micro-batch"
        )


def plan(batch_size: int, accumulation: int, longest: int, token_budget: int = DEFAULT_TOKEN_BUDGET) -> Plan:
    """The largest micro-batch that divides the effective batch and whose worst case fits the budget.

    Never smaller than the configured micro-batch: the fast path only merges micro-batches.
    """
    effective = batch_size * accumulation
    best = batch_size
    for k in range(batch_size, effective + 1):
        if effective % k == 0 and k * longest <= token_budget:
            best = k
    return Plan(best, effective // best, effective, best * longest)


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
    return True, ""


def build_trainer(cfg, args, model, tokenizer, train_dataset, eval_dataset, peft_config, **kwargs):
    """The SFTTrainer `sftlib train` uses: the fast path where it applies, plain TRL otherwise.

    Mutates `args` (micro-batch size, accumulation, activation checkpointing) as the plan says.
    """
    from trl import SFTTrainer

    ok, why = applies(cfg, args)
    trainer_class = fast_trainer_class() if ok else SFTTrainer
    if ok:
        longest = _longest(train_dataset, cfg.model.max_seq_length)
        p = plan(args.per_device_train_batch_size, args.gradient_accumulation_steps, longest)
        args.per_device_train_batch_size = p.per_device_train_batch_size
        args.gradient_accumulation_steps = p.gradient_accumulation_steps
        if not _set_explicitly(cfg, "activation_checkpointing", "gradient_checkpointing"):
            # The plan bounds a micro-batch's tokens, so activations fit without recomputing them.
            args.activation_checkpointing = args.gradient_checkpointing = False
        kwargs["data_collator"] = PackedCollator(
            pad_token_id=tokenizer.pad_token_id, max_length=cfg.model.max_seq_length
        )
        log.info("%s", p.describe())
    else:
        log.info("fast path off: %s", why)
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        **kwargs,
    )


def _set_explicitly(cfg, *keys: str) -> bool:
    return any(cfg.training.get(k) is not None for k in keys)


def _longest(dataset, default: int) -> int:
    if dataset is not None and "num_tokens" in dataset.column_names and len(dataset):
        return int(max(dataset["num_tokens"]))
    return default
