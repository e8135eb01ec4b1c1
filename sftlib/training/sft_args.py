"""TRL's training arguments: the one place sftlib builds a `trl.SFTConfig`.

`sft_config(cfg)` turns a run config's `training` section into an SFTConfig, with the fields sftlib
owns filled in; `from_fields` is the constructor both it and the bench's plain-TRL baseline use, so
invalid settings end as the same SftlibError.
"""

from __future__ import annotations

from typing import Any

from sftlib.config import DECIDED_WHEN_NULL, SFTLIB_TRAINING, RunConfig, sft_config_default
from sftlib.errors import SftlibError


def sft_config(cfg: RunConfig, **overrides: Any):
    """trl.SFTConfig from `training`, with the fields sftlib owns filled in.

    `overrides` are fields decided elsewhere (the training plan's batch size and accumulation, precision and
    activation checkpointing where the config leaves them null; the bench's step counts).
    """
    import torch

    kwargs = {
        k: v
        for k, v in cfg.training.items()
        if k not in SFTLIB_TRAINING and not (v is None and k in DECIDED_WHEN_NULL)
    }
    kwargs["max_length"] = cfg.model.max_seq_length
    if cfg.activation_checkpointing is None:
        # TRL still defaults transformers' deprecated alias (gradient_checkpointing); naming the new field
        # keeps TRL's default without transformers' FutureWarning on every run.
        kwargs["activation_checkpointing"] = sft_config_default("gradient_checkpointing")
    kwargs.setdefault("report_to", "none")
    # Every trainable weight (LoRA or full) takes part in each forward pass, so DDP's extra graph walk to
    # find unused ones only costs time. A model with unused weights gets DDP's error naming this setting.
    kwargs.setdefault("ddp_find_unused_parameters", False)
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
    # sftlib rotates checkpoints itself, only once the new one is complete (checkpoints.CompleteCheckpoints).
    kwargs["save_total_limit"] = None
    kwargs.update(overrides)
    return from_fields(kwargs)


def from_fields(fields: dict[str, Any]):
    """`trl.SFTConfig(**fields)`; TRL's refusal of a value becomes an SftlibError."""
    from trl import SFTConfig

    try:
        return SFTConfig(**fields)
    except (ValueError, TypeError) as exc:
        raise SftlibError(f"invalid `training` settings: {exc}") from None
