"""Generate answers with a base or fine-tuned model: which prompts, which model, greedy decoding.

Models are loaded by `modeling.load_model` / `load_tokenizer`, the same loaders training uses
(dtype, 4-bit, pad token, trust_remote_code, hub id, folder or `embedded:`, the configured chat
template). `generate` renders chat prompts with the chat template, left-pads, decodes greedily
until one of the model's stop tokens, and returns only the new text. Scoring is sftlib.scoring.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
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
    """What to generate for: `references` are None where there is nothing to score against.

    `contexts` holds, per prompt, the chat-template arguments it is rendered with, as in training
    (`rendering.template_context`: the row's `tools`, its source's dataset.chat_template_kwargs, then
    the row's own `chat_template_kwargs`); pass them to `generate`.
    """

    prompts: list
    references: list[str | None]
    source: str  # "yours", "held-out", or "seen in training"
    contexts: list[dict | None] = dataclasses.field(default_factory=list)

    def scored(self) -> bool:
        return self.source == "held-out"


def prompts_for(cfg: RunConfig, limit: int | None = None, own: list[str] | None = None) -> Prompts:
    """The prompts notebook 05 answers: `own` prompts (user messages) when given; else the held-out
    split of every source that has one, with its references; else a few training prompts, labelled
    as seen in training and not scored. Sources take turns until `limit`. Rows that can't be trained
    on are skipped.

    A conversation is asked for its last assistant turn that answers in text: the prompt is the
    messages before it (earlier tool calls and tool results included), rendered with the row's tools
    and chat-template arguments, exactly the prompt masking trained that turn after; the reference
    is the turn's content (any reasoning is kept apart in `reasoning_content` / `thinking`, and the
    score compares answers after a reasoning block). A turn that calls tools has no text to compare
    (which call is right is scored by tool-calling checks, not by exact match), so an earlier turn
    that answers in text is asked, and a conversation without one is skipped. Own prompts are
    rendered with the (first) source's dataset.chat_template_kwargs.
    """
    from sftlib import formats, sources

    if own:
        return own_prompts(own, cfg.sources[0].chat_template_kwargs)
    loaded = []
    for src in cfg.sources:
        raw = sources.load_raw(src, seed=cfg.seed)
        fmt, _ = formats.resolve_format(raw["train"], src.format)
        if fmt != "text":
            loaded.append((src, raw, fmt))
    if not loaded:
        raise SftlibError(
            "a `text` dataset has no prompts to answer.",
            "give your own prompts (notebook 05's PROMPTS), or use a chat or prompt/completion dataset.",
        )
    held_out = any("eval" in raw for _, raw, _ in loaded)
    split, source = ("eval", "held-out") if held_out else ("train", "seen in training")
    limit = limit if held_out else min(limit or SEEN_PROMPTS, SEEN_PROMPTS)
    asked = [
        _asked(sources.normalize(raw[split], fmt), src.chat_template_kwargs, limit)
        for src, raw, fmt in loaded
        if split in raw
    ]
    # One source after another, a prompt at a time, so that each source is asked.
    rows = [row for turn in itertools.zip_longest(*asked) for row in turn if row is not None][:limit]
    if not rows:
        raise SftlibError(
            f"the {split} split has no prompt to answer.", "give your own prompts (notebook 05's PROMPTS)."
        )
    prompts, references, contexts = (list(column) for column in zip(*rows, strict=True))
    return Prompts(prompts, references if held_out else [None] * len(prompts), source, contexts)


def own_prompts(texts: list[str], template_kwargs: dict | None) -> Prompts:
    """User messages to answer, each rendered with `template_kwargs` (and no tools)."""
    from sftlib import rendering

    context = rendering.template_context({}, template_kwargs)
    prompts = [[{"role": "user", "content": text}] for text in texts]
    return Prompts(prompts, [None] * len(texts), "yours", [context] * len(texts))


def trained_template_kwargs(model: str, adapter: str | None = None, given: str | None = None) -> dict:
    """The chat-template arguments for `sftlib generate`: those the run was trained with (the
    resolved config that training wrote beside the model, or beside the adapter folder), then the
    JSON mapping `given` (--chat-template-kwargs). A model sftlib did not train has none saved."""
    from sftlib.config import load_config

    kwargs = {}
    for folder in (Path(adapter).parent if adapter else None, Path(model)):
        if folder is not None and (folder / "resolved_config.yaml").is_file():
            kwargs = load_config(folder / "resolved_config.yaml").sources[0].chat_template_kwargs or {}
            break
    if given is None:
        return kwargs
    try:
        extra = json.loads(given)
    except json.JSONDecodeError:
        extra = None
    if not isinstance(extra, dict):
        raise SftlibError(
            f"--chat-template-kwargs must be a JSON object, got {given!r}.",
            "give e.g. --chat-template-kwargs '{\"enable_thinking\": false}'.",
        )
    return {**kwargs, **extra}


def _asked(norm, template_kwargs: dict | None, limit: int | None) -> list[tuple]:
    """(prompt, reference, context) for the first `limit` askable rows of a normalized split."""
    from sftlib import chat, conversations, rendering

    out = []
    for example in norm:
        if limit is not None and len(out) >= limit:
            break
        if not conversations.is_chat(example):
            if isinstance(example.get("prompt"), str) and isinstance(example.get("completion"), str):
                out.append((example["prompt"], example["completion"], None))
            continue
        try:
            conversation = conversations.conversation(example)
            context = rendering.template_context(example, template_kwargs)
        except conversations.DropExample:
            continue
        messages = conversation.messages
        answered = [
            i
            for i, m in enumerate(messages)
            if i >= conversation.first_trainable
            and m["role"] == chat.TRAINED_ROLE
            and not m.get("tool_calls")
        ]
        if answered:
            out.append((messages[: answered[-1]], messages[answered[-1]]["content"], context))
    return out


def _prompt_texts(tokenizer, prompts, contexts=None) -> tuple[list[str], bool]:
    """Chat prompts become template text ending in the generation prompt, each rendered with its
    context (tools, chat-template arguments) by the call masking renders P with; strings pass through.

    Returns the texts and whether the tokenizer should add its own special tokens (only for raw
    strings: the chat template already wrote them).
    """
    from sftlib import rendering
    from sftlib.conversations import DropExample

    if all(isinstance(p, str) for p in prompts):
        return list(prompts), True
    if all(isinstance(p, list) and all(isinstance(m, dict) for m in p) for p in prompts):
        if tokenizer.chat_template is None:
            raise SftlibError(
                "the tokenizer has no chat template, so chat prompts cannot be rendered.",
                "pass plain string prompts, or set model.chat_template.",
            )
        contexts = contexts or [None] * len(prompts)
        if len(contexts) != len(prompts):
            raise SftlibError(f"got {len(contexts)} template contexts for {len(prompts)} prompts.")
        texts = []
        for k, (prompt, context) in enumerate(zip(prompts, contexts, strict=True)):
            try:
                texts.append(rendering.render(tokenizer, prompt, True, context))
            except DropExample as exc:
                raise SftlibError(
                    f"prompt {k} can't be rendered by the chat template ({exc.detail}).",
                    "check the prompt's messages, tools and chat_template_kwargs against the template.",
                ) from None
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
    contexts: list[dict | None] | None = None,
    label: str = "",
) -> list[str]:
    """Greedy answers for `prompts`, in order: only the new text, without special tokens.

    `contexts`: per chat prompt, the chat-template arguments to render it with (`Prompts.contexts`:
    the row's tools and chat-template kwargs, as in training); None renders with none. `progress`
    prints a line per tenth of the prompts (`sftlib.progress`), `[generate LABEL]`.

    Prompts are batched by token length (less padding) and left-padded; decoding stops at one of the
    model's stop tokens (`modeling.stop_ids`, the set masking trains) or after `max_new_tokens`.
    """
    import torch

    from sftlib import progress as progress_lines
    from sftlib.modeling import stop_ids

    if not prompts:
        return []
    if batch_size < 1:
        raise SftlibError(f"batch_size must be at least 1, got {batch_size}.")
    texts, add_special_tokens = _prompt_texts(tokenizer, prompts, contexts)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    stops = stop_ids(tokenizer, model.generation_config)
    outputs: list[str | None] = [None] * len(texts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = next(model.parameters()).device
    lines = progress_lines.Lines(f"generate {label}".strip(), len(texts), "prompts") if progress else None
    for batch in batches:
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
        if lines is not None:
            lines.update(sum(o is not None for o in outputs))
    return outputs
