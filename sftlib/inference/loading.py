"""A base or trained model loaded for generation: the same loaders as training, eval mode, an adapter
applied (and merged where the weights are not 4-bit), or the merged model of a finished run."""

from __future__ import annotations

from pathlib import Path

from sftlib.config import ModelConfig, RunConfig
from sftlib.errors import SftlibError
from sftlib.noise import library_deprecations
from sftlib.outputs.layout import ADAPTER_DIRNAME, require_adapter


def load_for_generation(model_cfg: ModelConfig, adapter_dir: str | Path | None = None):
    """(model, tokenizer) ready for `generate`: eval mode, a pad token.

    With `adapter_dir`, the LoRA adapter is applied to the model; it is merged into unquantized
    weights so generation runs at base-model speed, and kept unmerged on a 4-bit base (merging
    would round the update into 4-bit weights).
    """
    from sftlib.models import modeling

    tokenizer = modeling.load_tokenizer(model_cfg)
    model = modeling.load_model(model_cfg)
    if adapter_dir is not None:
        from peft import PeftModel

        with library_deprecations():
            model = PeftModel.from_pretrained(model, str(require_adapter(adapter_dir)))
        if not model_cfg.load_in_4bit:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def tuned_model(cfg: RunConfig, use_adapter: bool = False) -> tuple[ModelConfig, str | None]:
    """(model config, adapter_dir) of the trained run in `training.output_dir`.

    The merged model (or the full fine-tune) is a plain model there, saved with its tokenizer and
    chat template; with `use_adapter` (LoRA runs), the base as configured plus `lora_weights/`.
    """
    if use_adapter and cfg.model.use_lora:
        return cfg.model, str(cfg.output_dir / ADAPTER_DIRNAME)
    if not (cfg.output_dir / "config.json").is_file():
        raise SftlibError(
            f"{cfg.output_dir} holds no trained model (config.json is missing).",
            "train first (notebook 03 or `sftlib train`), or point training.output_dir at a finished run.",
        )
    dtype = cfg.model.dtype if cfg.model.dtype in ("float32", "bfloat16", "float16") else None
    merged = ModelConfig(
        path=str(cfg.output_dir),
        max_seq_length=cfg.model.max_seq_length,
        dtype=dtype,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    return merged, None
