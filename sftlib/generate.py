"""Generate answers with a base or fine-tuned model: which prompts, which model, greedy decoding.

Models are loaded by `modeling.load_model` / `load_tokenizer`, the same loaders training uses
(dtype, 4-bit, pad token, trust_remote_code, hub id, folder or `embedded:`, the configured chat
template). `generate` renders chat prompts with the chat template, left-pads, decodes greedily
until one of the model's stop tokens, and returns only the new text. Scoring is sftlib.scoring.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sftlib.config import ModelConfig, RunConfig
from sftlib.errors import SftlibError
from sftlib.noise import library_deprecations

SEEN_PROMPTS = 4  # without a held-out split, this many training prompts are answered (and labelled so)


def load_for_generation(model_cfg: ModelConfig, adapter_dir: str | Path | None = None):
    """(model, tokenizer) ready for `generate`: eval mode, a pad token.

    With `adapter_dir`, the LoRA adapter is applied to the model; it is merged into unquantized
    weights so generation runs at base-model speed, and kept unmerged on a 4-bit base (merging
    would round the update into 4-bit weights).
    """
    from sftlib import modeling

    tokenizer = modeling.load_tokenizer(model_cfg)
    model = modeling.load_model(model_cfg)
    if adapter_dir is not None:
        from peft import PeftModel

        adapter = Path(adapter_dir)
        if not (adapter / "adapter_config.json").is_file():
            raise SftlibError(
                f"{adapter} holds no LoRA adapter (adapter_config.json is missing).",
                "give the lora_weights/ folder of a LoRA run, or load the merged model in its output_dir.",
            )
        with library_deprecations():
            model = PeftModel.from_pretrained(model, str(adapter))
        if not model_cfg.load_in_4bit:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def tuned_model(cfg: RunConfig, use_adapter: bool = False) -> tuple[ModelConfig, str | None]:
    """(model config, adapter_dir) of the trained run in `training.output_dir`.

    The merged model (or the full fine-tune) is a plain model there, saved with its tokenizer and
    chat template; with `use_adapter` (LoRA runs), the base as configured plus `lora_weights/`.
    """
    from sftlib.layout import ADAPTER_DIRNAME

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


@dataclasses.dataclass
class Prompts:
    """What to generate for: `references` are None where there is nothing to score against."""

    prompts: list
    references: list[str | None]
    source: str  # "yours", "held-out", or "seen in training"

    def scored(self) -> bool:
        return self.source == "held-out"


def prompts_for(cfg: RunConfig, limit: int | None = None, own: list[str] | None = None) -> Prompts:
    """The prompts notebook 05 answers: `own` prompts (user messages) when given; else the held-out
    split with its references; else a few training prompts, labelled as seen in training and not
    scored. Rows that can't be trained on are skipped."""
    from sftlib import data

    if own:
        return Prompts([[{"role": "user", "content": p}] for p in own], [None] * len(own), "yours")
    raw = data.load_raw(cfg.dataset, seed=cfg.seed)
    fmt, _ = data.resolve_format(raw["train"], cfg.dataset.format)
    if fmt == "text":
        raise SftlibError(
            "a `text` dataset has no prompts to answer.",
            "give your own prompts (notebook 05's PROMPTS), or use a chat or prompt/completion dataset.",
        )
    split, source = ("eval", "held-out") if "eval" in raw else ("train", "seen in training")
    limit = limit if split == "eval" else min(limit or SEEN_PROMPTS, SEEN_PROMPTS)
    prompts, references = [], []
    for example in data.normalize(raw[split], fmt):
        if limit is not None and len(prompts) >= limit:
            break
        if data.is_chat(example):
            try:
                messages = data.conversation(example).messages
            except data.DropExample:
                continue
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompts.append(messages[:last])
            references.append(messages[last]["content"])
        elif isinstance(example.get("prompt"), str) and isinstance(example.get("completion"), str):
            prompts.append(example["prompt"])
            references.append(example["completion"])
    if not prompts:
        raise SftlibError(
            f"the {split} split has no prompt to answer.", "give your own prompts (notebook 05's PROMPTS)."
        )
    return Prompts(prompts, references if split == "eval" else [None] * len(prompts), source)


def _prompt_texts(tokenizer, prompts) -> tuple[list[str], bool]:
    """Chat prompts become template text ending in the generation prompt; strings pass through.

    Returns the texts and whether the tokenizer should add its own special tokens (only for raw
    strings: the chat template already wrote them).
    """
    if all(isinstance(p, str) for p in prompts):
        return list(prompts), True
    if all(isinstance(p, list) and all(isinstance(m, dict) for m in p) for p in prompts):
        if tokenizer.chat_template is None:
            raise SftlibError(
                "the tokenizer has no chat template, so chat prompts cannot be rendered.",
                "pass plain string prompts, or set model.chat_template.",
            )
        texts = [
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts
        ]
        return texts, False
    raise SftlibError(
        "prompts must be all strings or all chat message lists ([{'role': ..., 'content': ...}]).",
        "pass one kind of prompt per call.",
    )


def generate(
    model,
    tokenizer,
    prompts: list[list[dict]] | list[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy answers for `prompts`, in order: only the new text, without special tokens.

    Prompts are batched by token length (less padding) and left-padded; decoding stops at one of the
    model's stop tokens (`modeling.stop_ids`, the set masking trains) or after `max_new_tokens`.
    """
    import torch
    from tqdm.auto import tqdm

    from sftlib.modeling import stop_ids

    if not prompts:
        return []
    if batch_size < 1:
        raise SftlibError(f"batch_size must be at least 1, got {batch_size}.")
    texts, add_special_tokens = _prompt_texts(tokenizer, prompts)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    stops = stop_ids(tokenizer, model.generation_config)
    outputs: list[str | None] = [None] * len(texts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = next(model.parameters()).device
    for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        enc = tokenizer(
            [texts[i] for i in batch],
            return_tensors="pt",
            padding=True,
            padding_side="left",  # per call: the tokenizer may be shared with training, which pads right
            add_special_tokens=add_special_tokens,
        ).to(device)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            outputs[i] = text
    return outputs
