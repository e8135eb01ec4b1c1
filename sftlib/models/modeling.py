"""Tokenizer, model and LoRA config from `ModelConfig`: dtype, 4-bit NF4, attention implementation, pad token."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from sftlib.config import ModelConfig
from sftlib.errors import SftlibError, first_line
from sftlib.models import embedded

log = logging.getLogger("sftlib")


def torch_dtype(name: str | None):
    """Config dtype name -> what `from_pretrained(dtype=...)` takes. None keeps the checkpoint's own."""
    import torch

    return {
        None: None,
        "auto": "auto",
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[name]


def resolve_path(model_cfg: ModelConfig) -> str:
    """A local folder or hub id for the model; `embedded:` names are materialized once."""
    path = embedded.resolve(model_cfg.path)
    if not embedded.is_embedded(model_cfg.path) and (path.startswith((".", "/", "~")) or Path(path).suffix):
        local = Path(path).expanduser()
        if not local.exists():
            raise SftlibError(
                f"model.path {path!r} does not exist.",
                "point model.path at a saved model folder, a hub id like HuggingFaceTB/SmolLM2-135M-Instruct, "
                "or embedded:SmolLM2-135M-Instruct.",
            )
        if local.is_dir() and not (local / "config.json").is_file():
            raise SftlibError(
                f"model.path {path!r} has no config.json, so it is not a saved model folder.",
                "point model.path at the folder that save_pretrained wrote (config.json and *.safetensors).",
            )
    return path


def load_tokenizer(model_cfg: ModelConfig):
    """The model's tokenizer, with a pad token (the EOS when it has none).

    pad == eos is safe here because labels are built from token spans, never by comparing ids
    with pad_token_id, so the EOS that ends a completion is still trained.
    """
    from transformers import AutoTokenizer

    path = resolve_path(model_cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise SftlibError(
            f"could not load a tokenizer from {path!r}: {first_line(exc)}",
            "point model.path at a folder holding the model's tokenizer files (tokenizer.json, tokenizer_config.json).",
        ) from exc
    if model_cfg.chat_template:
        tokenizer.chat_template = chat_template_text(model_cfg.chat_template)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SftlibError(f"the tokenizer of {path!r} has neither a pad nor an EOS token.")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: using the EOS token %r for padding", tokenizer.eos_token)
    return tokenizer


def bundled_chat_templates() -> dict[str, Path]:
    """The chat templates TRL ships (`chat_templates/NAME.jinja` in its package), by name; training
    variants excluded."""
    from importlib.resources import files

    # no public hook (TRL 1.16): TRL exports no list of the templates it bundles, so they are read from
    # its package data; tests/test_chat_templates.py fails when the templates sftlib names move or go.
    folder = files("trl") / "chat_templates"
    return {
        Path(p.name).stem: Path(str(p))
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".jinja") and not p.name.endswith("_training.jinja")
    }


def chat_template_text(value: str) -> str:
    """`model.chat_template`: a path to a Jinja file, or the name of a template TRL bundles (qwen3, llama3, ...)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    bundled = bundled_chat_templates()
    if value in bundled:
        return bundled[value].read_text(encoding="utf-8")
    import difflib

    close = difflib.get_close_matches(value, list(bundled), n=1)
    raise SftlibError(
        f"model.chat_template {value!r} is neither a file nor a template TRL bundles.",
        (f"did you mean {close[0]}? " if close else "")
        + f"give a path to a .jinja file or one of: {', '.join(bundled)}.",
    )


def stop_token_ids(model_cfg: ModelConfig, tokenizer) -> list[int]:
    """The model's stop tokens, read from its folder without loading its weights (see `stop_ids`)."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(resolve_path(model_cfg))
    except OSError:  # a model folder without generation_config.json: the tokenizer's EOS alone
        generation = None
    ids = stop_ids(tokenizer, generation)
    if not ids:
        raise SftlibError(
            f"model {model_cfg.path!r} defines no stop token (no eos_token in its tokenizer or generation_config).",
            "use a model whose tokenizer has an eos_token.",
        )
    return ids


def stop_ids(tokenizer, generation_config=None) -> list[int]:
    """The tokens that end generation: the tokenizer's EOS plus generation_config.eos_token_id (a list
    for Llama 3, Gemma, gpt-oss). Masking trains each assistant turn up to the first of them, and
    generation stops at them."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return sorted(ids)


def quantization_config(model_cfg: ModelConfig):
    """NF4 with double quantization (QLoRA), computing in bf16 unless fp32/fp16 is asked for."""
    if not model_cfg.load_in_4bit:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SftlibError(
            "model.load_in_4bit needs bitsandbytes, which is not installed.",
            "pip install bitsandbytes==0.50.2",
        )
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch_dtype(model_cfg.dtype)
    compute = compute if isinstance(compute, torch.dtype) else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def load_model(model_cfg: ModelConfig, *, quantize: bool = True, device_map=None):
    """The causal LM as configured. `quantize=False` loads the base unquantized (for merging).

    4-bit weights are placed when loaded, so QLoRA puts the whole model on this process's own GPU
    (`device_map={"": local_process_index}`): under DDP each rank trains its own full copy on its GPU.
    `model.attn_implementation`, when set, is the attention the model loads with (sftlib's per-example
    attention registered first); unset, transformers' default, which the training plan may change.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_path(model_cfg)
    kwargs = {
        "dtype": torch_dtype(model_cfg.dtype),
        "trust_remote_code": model_cfg.trust_remote_code,
        "use_safetensors": True,  # never unpickle weights (a .bin file can run code when loaded)
    }
    if model_cfg.attn_implementation:
        from sftlib.models import attention

        if model_cfg.attn_implementation == attention.NAME:
            attention.register()
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if quantize and model_cfg.load_in_4bit:
        kwargs["quantization_config"] = quantization_config(model_cfg)
        kwargs["device_map"] = device_map if device_map is not None else this_process_device_map()
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ImportError as exc:  # an attention implementation whose kernels are not installed
        raise SftlibError(
            f"model.attn_implementation={model_cfg.attn_implementation!r} can't run here: {first_line(exc)}",
            "install its package (flash-attn for flash_attention_2), or set model.attn_implementation: null "
            "to let sftlib choose.",
        ) from exc
    except (OSError, ValueError) as exc:
        raise SftlibError(
            f"could not load model {path!r}: {first_line(exc)}",
            "check model.path (and model.attn_implementation, when set); sftlib loads weights from safetensors "
            "only (re-save pickled .bin weights with save_pretrained(folder, safe_serialization=True)).",
        ) from exc


def this_process_device_map() -> dict[str, int | str]:
    """The whole model on this process's GPU: local rank, not global rank, which exceeds the GPU
    count on every machine but the first. CPU when there is no GPU."""
    import torch
    from accelerate import PartialState

    if not torch.cuda.is_available():
        return {"": "cpu"}
    return {"": PartialState().local_process_index}


def lora_config(model_cfg: ModelConfig, model=None):
    """peft.LoraConfig from `model.lora_config` (any of its fields), checking that the target modules
    exist in `model`; PEFT's own refusal of a combination is one error naming the section."""
    from peft import LoraConfig

    settings = model_cfg.lora_config
    if model is not None:
        check_target_modules(model, settings.get("target_modules"))
    try:
        return LoraConfig(**settings)
    except (ValueError, TypeError) as exc:
        raise SftlibError(
            f"peft.LoraConfig refuses model.lora_config: {first_line(exc)}",
            "change model.lora_config as PEFT says (its fields: https://huggingface.co/docs/peft).",
        ) from None


def check_target_modules(model, targets: list[str] | str | None) -> None:
    import torch

    linear = sorted(
        {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if _is_linear(mod, torch)}
    )
    if targets is None or isinstance(targets, str):  # "all-linear", a regex, PEFT's defaults: PEFT checks
        return
    missing = [t for t in targets if t not in linear]
    if missing:
        raise SftlibError(
            f"model.lora_config.target_modules {missing} match no linear layer of this model.",
            f"choose from {linear} (or 'all-linear').",
        )


def _is_linear(module, torch) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt"}
