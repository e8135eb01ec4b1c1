"""LoRA adapter + unquantized base -> merged model, and the check that merging changed nothing.

QLoRA adapters are merged into a base re-loaded in full (or bf16) precision: merging into
4-bit weights would round the update away.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from sftlib.config import ModelConfig
from sftlib.errors import SftlibError

MERGE_DTYPES = ("float32", "bfloat16")


def _unquantized(model_cfg: ModelConfig, dtype: str | None) -> ModelConfig:
    dtype = dtype or (model_cfg.dtype if model_cfg.dtype in MERGE_DTYPES else "float32")
    if dtype not in MERGE_DTYPES:
        raise SftlibError(f"merge dtype {dtype!r} is not supported.", f"use one of {MERGE_DTYPES}.")
    return dataclasses.replace(model_cfg, load_in_4bit=False, dtype=dtype)


def load_base_with_adapter(model_cfg: ModelConfig, adapter_dir: str | Path, dtype: str | None = None):
    """The unquantized base with the adapter applied but not merged (a peft.PeftModel)."""
    from peft import PeftModel

    from sftlib import modeling

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SftlibError(
            f"{adapter_dir} holds no LoRA adapter (adapter_config.json is missing).",
            "train a LoRA run into this output_dir first (sftlib train with model.use_lora: true), "
            "or point training.output_dir at one.",
        )
    base = modeling.load_model(_unquantized(model_cfg, dtype), quantize=False)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def merge_adapter(
    model_cfg: ModelConfig, adapter_dir: str | Path, merged_dir: str | Path, dtype: str | None = None
):
    """Merge `adapter_dir` into the base and save it (safetensors) into `merged_dir`; returns the model.

    Files are written to a temporary folder first and moved in, so `merged_dir` never holds a
    half-written model.
    """
    merged = load_base_with_adapter(model_cfg, adapter_dir, dtype).merge_and_unload()
    merged_dir = Path(merged_dir)
    merged_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".merge-", dir=merged_dir))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        for item in tmp.iterdir():
            os.replace(item, merged_dir / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merged


def max_logit_difference(model_a, model_b, input_ids) -> float:
    """Largest absolute difference between two models' logits on the same inputs."""
    return compare_logits(model_a, model_b, input_ids)[0]


def compare_logits(model_a, model_b, input_ids) -> tuple[float, float]:
    """(max |logits_a - logits_b|, max |logits_b|): the difference and the scale it is judged against."""
    import torch

    with torch.no_grad():
        a = model_a(input_ids=input_ids).logits.float()
        b = model_b(input_ids=input_ids).logits.float()
    return float((a - b).abs().max()), float(b.abs().max())


def sample_inputs(tokenizer, texts: list[str] | None = None):
    texts = texts or ["The capital of France is", "Convert to ISO date: March 5th, 2021"]
    return tokenizer(texts, return_tensors="pt", padding=True)["input_ids"]


def disk_size_mb(folder: str | Path, pattern: str = "*.safetensors") -> float:
    return sum(p.stat().st_size for p in Path(folder).glob(pattern)) / 2**20
