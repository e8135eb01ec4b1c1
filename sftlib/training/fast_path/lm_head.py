"""TRL's fused LM head, fed only the positions whose next token is trained.

TRL 1.16's SFTTrainer gives every model a fused LM head (`trl`'s `add_fused_lm_head`): called with
`fused_lm_head=True`, the model projects the backbone's hidden states through the head in vocabulary
tiles and scores the labels; given pre-shifted `shift_labels`, it scores the hidden states as they are.
On CUDA/XPU TRL projects only the positions that carry a label; on other devices (a CPU) it projects
every position, prompts included. `trained_positions_only` makes every device do the former, through
the head's documented arguments only (`fused_lm_head`, `labels`, `shift_labels`) and public torch hooks:
same loss, metrics and gradients, a fraction of the head's work where prompts are long.
"""

from __future__ import annotations

import contextlib

from sftlib.data import IGNORE_INDEX


@contextlib.contextmanager
def trained_positions_only(model):
    """While active, each fused-head call of `model` on one padding-free row [1, T] projects only the
    positions whose next token is trained.

    `model` is the causal LM the trainer calls (PEFT-wrapped or not). A forward pre-hook turns the call's
    `labels` into `shift_labels` at the trained positions; a forward hook on the backbone keeps only
    those positions of its `last_hidden_state`. Calls without `fused_lm_head` (full logits: a custom
    loss, label smoothing, generation) are left alone, and so is a row with nothing trained (TRL's own
    path keeps its graph connected).
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = causal_lm.base_model  # what TRL's fused forward runs before the head
    pending = []  # the positions kept for the backbone call in progress

    def select_labels(module, args, kwargs):
        labels = kwargs.get("labels")
        if not kwargs.get("fused_lm_head") or labels is None or labels.shape[0] != 1:
            return None
        if kwargs.get("shift_labels") is not None:
            return None
        keep = (labels[0, 1:] != IGNORE_INDEX).nonzero().flatten()
        if keep.numel() == 0:
            return None
        pending[:] = [keep]
        return args, {**kwargs, "labels": None, "shift_labels": labels[:, 1:][:, keep]}

    def select_positions(module, args, output):
        if pending:
            output.last_hidden_state = output.last_hidden_state[:, pending.pop()]
        return output

    handles = [
        model.register_forward_pre_hook(select_labels, with_kwargs=True),
        backbone.register_forward_hook(select_positions),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
