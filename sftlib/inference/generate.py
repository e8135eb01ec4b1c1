"""Answers from a model for chat prompts or strings, through the chat template, as training rendered them:
greedy, or sampled with a temperature.

`generate` renders chat prompts with the chat template (and each prompt's tools and template
arguments), left-pads, decodes greedily until one of the model's stop tokens, and returns only the new
text. Which model (sftlib.inference.loading) and which prompts (sftlib.inference.prompts) are chosen
elsewhere; scoring is sftlib.inference.scoring.
"""

from __future__ import annotations

import dataclasses

from sftlib.errors import SftlibError


@dataclasses.dataclass(frozen=True)
class Generation:
    """One prompt's new text: `text` without special tokens (what plain scoring compares), `raw` with
    them up to and including the stop token (what tool-call parsers read: Llama's `<|python_tag|>`,
    gpt-oss's channels are special tokens), and whether it was cut off by `max_new_tokens`."""

    text: str
    raw: str
    cut_off: bool


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How replies are decoded: greedy at temperature 0, else sampled (nucleus `top_p`), `seed` fixed."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 256

    def __post_init__(self):
        if self.temperature < 0:
            raise SftlibError(f"--temperature must be 0 or more, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise SftlibError(f"--top-p must be in (0, 1], got {self.top_p}.")
        if self.max_new_tokens < 1:
            raise SftlibError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}.")


def render_prompt(tokenizer, prompt: list[dict] | str, context: dict | None = None) -> str:
    """One prompt as the model reads it: a chat prompt rendered by the chat template with its context
    (tools, template arguments), ending in the generation prompt, exactly as `generate` renders it; a
    string as it is."""
    return _prompt_texts(tokenizer, [prompt], [context])[0][0]


def _prompt_texts(tokenizer, prompts, contexts=None) -> tuple[list[str], bool]:
    """Chat prompts become template text ending in the generation prompt, each rendered with its
    context (tools, chat-template arguments) by the call masking renders P with; strings pass through.

    Returns the texts and whether the tokenizer should add its own special tokens (only for raw
    strings: the chat template already wrote them).
    """
    from sftlib.data import rendering
    from sftlib.errors import DropExample

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
    """Greedy answers for `prompts`, in order: only the new text, without special tokens
    (`generations` keeps them, and whether each answer was cut off)."""
    return [
        g.text
        for g in generations(model, tokenizer, prompts, max_new_tokens, batch_size, progress, contexts, label)
    ]


def generations(
    model,
    tokenizer,
    prompts: list[list[dict]] | list[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
    contexts: list[dict | None] | None = None,
    label: str = "",
    sampling: Sampling | None = None,
) -> list[Generation]:
    """Greedy answers for `prompts`, in order, each as a Generation (sampled where `sampling` has a
    temperature above 0; its `max_new_tokens` is not read: the argument is).

    `contexts`: per chat prompt, the chat-template arguments to render it with (`Prompts.contexts`:
    the row's tools and chat-template kwargs, as in training); None renders with none. `progress`
    prints a line per tenth of the prompts (`sftlib.progress`), `[generate LABEL]`.

    Prompts are batched by token length (less padding) and left-padded; decoding stops at one of the
    model's stop tokens (`modeling.stop_ids`, the set masking trains) or after `max_new_tokens`.
    """
    import torch
    from transformers import set_seed

    from sftlib import progress as progress_lines
    from sftlib.models.modeling import stop_ids

    if not prompts:
        return []
    if batch_size < 1:
        raise SftlibError(f"batch_size must be at least 1, got {batch_size}.")
    texts, add_special_tokens = _prompt_texts(tokenizer, prompts, contexts)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    stops = stop_ids(tokenizer, model.generation_config)
    outputs: list[Generation | None] = [None] * len(texts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = next(model.parameters()).device
    lines = progress_lines.Lines(f"generate {label}".strip(), len(texts), "prompts") if progress else None
    sampling = sampling or Sampling()
    sample = sampling.temperature > 0
    if sampling.seed is not None:
        set_seed(sampling.seed)
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
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                top_k=None,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        for i, new in zip(batch, out[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
            # Up to the first stop token: after it, a finished row of the batch holds padding.
            end = next((k + 1 for k, token in enumerate(new) if token in stops), None)
            new = new if end is None else new[:end]
            outputs[i] = Generation(
                text=tokenizer.decode(new, skip_special_tokens=True),
                raw=tokenizer.decode(new, skip_special_tokens=False),
                cut_off=end is None and len(new) >= max_new_tokens,
            )
        if lines is not None:
            lines.update(sum(o is not None for o in outputs))
    return outputs
