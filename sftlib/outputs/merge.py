"""LoRA adapter + unquantized base -> merged model, written, re-read and checked against base + adapter.

Every merge (the end of `sftlib train`, `sftlib merge`, notebook 04) goes through `merge_adapter`,
which compares the logits of the merged model, as re-read from disk, with those of base + adapter
unmerged. The check measures its tolerance instead of fitting it to a machine: a correct merge differs
from base + adapter only by float rounding, and the rounding this machine and dtype produce shows when
the adapter is merged into the base and unmerged again (PEFT's `merge_adapter` /
`unmerge_adapter`), which must give back the base. A wrong merge (adapter missing, scaled wrongly)
differs by a share of the adapter's own effect. So the check allows the larger of 4x that
round-trip rounding and 1% of the adapter's effect; where the adapter's effect is itself within
rounding, it says that it can't tell a merge from no merge.

QLoRA adapters are merged into a base re-loaded unquantized (float32 or bfloat16): merging into
4-bit weights would round the update away.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from sftlib.config import ModelConfig
from sftlib.errors import SftlibError
from sftlib.files import move_files_into
from sftlib.noise import library_deprecations
from sftlib.outputs.layout import require_adapter

log = logging.getLogger("sftlib")

MERGE_DTYPES = ("float32", "bfloat16")
ROUNDING_FACTOR = 4.0  # a merge rounds once where merge + unmerge rounds twice; 4x leaves room for op order
ADAPTER_SHARE = 0.01  # a wrong merge misses a share of the adapter's effect; 1% catches a 10% scale error


def _unquantized(model_cfg: ModelConfig, dtype: str | None) -> ModelConfig:
    dtype = dtype or (model_cfg.dtype if model_cfg.dtype in MERGE_DTYPES else "float32")
    if dtype not in MERGE_DTYPES:
        raise SftlibError(f"merge dtype {dtype!r} is not supported.", f"use one of {MERGE_DTYPES}.")
    return dataclasses.replace(model_cfg, load_in_4bit=False, dtype=dtype)


def load_base_with_adapter(model_cfg: ModelConfig, adapter_dir: str | Path, dtype: str | None = None):
    """The unquantized base with the adapter applied but not merged (a peft.PeftModel)."""
    from peft import PeftModel

    from sftlib.models import modeling

    adapter_dir = require_adapter(adapter_dir)
    base = modeling.load_model(_unquantized(model_cfg, dtype), quantize=False)
    with library_deprecations():
        return PeftModel.from_pretrained(base, str(adapter_dir))


def merge_adapter(
    model_cfg: ModelConfig, adapter_dir: str | Path, merged_dir: str | Path, dtype: str | None = None
) -> dict:
    """Merge `adapter_dir` into the base, save it (safetensors) into `merged_dir`, re-read it and check it.

    Returns the check's figures; raises SftlibError when the merged model's logits differ from base +
    adapter by more than `tolerance` allows. Files are written to a temporary folder first and moved
    in, so `merged_dir` never holds a half-written model.
    """
    import torch

    from sftlib.models import modeling

    dtype = _unquantized(model_cfg, dtype).dtype
    model = load_base_with_adapter(model_cfg, adapter_dir, dtype).eval()
    ids = sample_inputs(modeling.load_tokenizer(model_cfg))
    with torch.no_grad(), model.disable_adapter():
        base = logits(model, ids)
    reference = logits(model, ids)
    model.merge_adapter()
    model.unmerge_adapter()
    with torch.no_grad(), model.disable_adapter():
        round_trip = logits(model, ids)  # the base again, up to two roundings of every adapted weight
    merged = model.merge_and_unload()
    _save(merged, Path(merged_dir))
    from sftlib.outputs.staging import verify_safetensors

    verify_safetensors(merged_dir, merged.state_dict())
    del merged, model
    reloaded = modeling.load_model(
        ModelConfig(path=str(merged_dir), trust_remote_code=model_cfg.trust_remote_code)
    )
    result = check(
        difference=_max_abs(logits(reloaded.eval(), ids) - reference),
        rounding=_max_abs(round_trip - base),
        effect=_max_abs(reference - base),
    )
    result |= {"dtype": dtype, "was_4bit": model_cfg.load_in_4bit, "merged_dir": str(merged_dir)}
    if not result["resolves_adapter"]:
        log.warning(
            "warning: the adapter changes logits by only %.3g, within float rounding (%.3g): the merge check "
            "can't tell this merge from no merge (train longer, or compare generations).",
            result["adapter_effect"],
            result["rounding"],
        )
    return result


def check(difference: float, rounding: float, effect: float) -> dict:
    """Judge a merge: `difference` (merged vs base + adapter) against the round-trip `rounding` and the
    adapter's `effect` (base + adapter vs base), all max |logit difference|. SftlibError if wrong."""
    tolerance = max(ROUNDING_FACTOR * rounding, ADAPTER_SHARE * effect)
    result = {
        "max_logit_difference": difference,
        "rounding": rounding,
        "adapter_effect": effect,
        "tolerance": tolerance,
        "resolves_adapter": effect > ROUNDING_FACTOR * rounding,
    }
    if difference > tolerance:
        raise SftlibError(
            f"the merged model's logits differ from base + adapter by {difference:.3g}, more than float rounding "
            f"allows ({tolerance:.3g}: the larger of {ROUNDING_FACTOR:g}x the merge/unmerge round-trip rounding "
            f"{rounding:.3g} and {ADAPTER_SHARE:g} of the adapter's own effect {effect:.3g}).",
            "do not use this merged model; load base + adapter instead, and report the model and config.",
        )
    return result


def _save(model, merged_dir: Path) -> None:
    merged_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".merge-", dir=merged_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        move_files_into(tmp, merged_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def logits(model, input_ids):
    import torch

    with torch.no_grad():
        return model(input_ids=input_ids.to(model.device)).logits.float().cpu()


def _max_abs(tensor) -> float:
    return float(tensor.abs().max())


def sample_inputs(tokenizer, texts: list[str] | None = None):
    texts = texts or ["The capital of France is", "Convert to ISO date: March 5th, 2021"]
    return tokenizer(texts, return_tensors="pt", padding=True)["input_ids"]


def disk_size_mb(folder: str | Path, pattern: str = "*.safetensors") -> float:
    return sum(p.stat().st_size for p in Path(folder).glob(pattern)) / 2**20


def summary(result: dict) -> str:
    """One paragraph for notebook 04 and `sftlib merge`."""
    line = (
        f"merged in {result['dtype']}{' (the 4-bit base re-loaded unquantized)' if result['was_4bit'] else ''}: "
        f"max |logit difference| merged (re-read from disk) vs base + adapter = {result['max_logit_difference']:.3g}, "
        f"tolerance {result['tolerance']:.3g} (round-trip rounding {result['rounding']:.3g}); the adapter itself "
        f"moves logits by up to {result['adapter_effect']:.3g}."
    )
    if not result["resolves_adapter"]:
        line += " The adapter's effect is within rounding, so this check can't tell a merge from no merge."
    return line
