"""Load a model for generation, generate greedy answers in batches, and score them.

`load_for_generation` takes a merged model folder, or a base model folder plus a PEFT adapter
folder. `generate` applies the chat template, left-pads, decodes greedily until the end-of-turn
token, and returns only the new text. `score` gives exact match and SQuAD-style token F1.
"""

from __future__ import annotations

import collections
import re
import string
from pathlib import Path

from sftlib import embedded
from sftlib.errors import SftlibError

DTYPES = (None, "auto", "float32", "bfloat16", "float16")
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def _torch_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SftlibError(f"unknown dtype {dtype!r}.", f"use one of: {', '.join(str(d) for d in DTYPES)}.")
    return dtype if dtype == "auto" else getattr(torch, dtype)


def _check_dir(path: str, what: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise SftlibError(
            f"{what} {str(path)!r} is not a model folder (no config.json or adapter_config.json).",
            "give the folder that save_pretrained wrote (or an `embedded:` model name).",
        )
    return folder


def load_for_generation(model_dir: str, adapter_dir: str | None = None, dtype=None):
    """Return (model, tokenizer) ready for `generate`: eval mode, left padding, a pad token.

    `model_dir` is a merged model folder or the base model of `adapter_dir` (a PEFT adapter
    folder, merged into the base after loading so generation runs at base-model speed).
    `embedded:` names are resolved. `dtype` is None (the checkpoint's own), "auto", "float32",
    "bfloat16" or "float16". Weights are read from safetensors only.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = embedded.resolve(str(model_dir))
    _check_dir(model_dir, "model_dir")
    torch_dtype = _torch_dtype(dtype)
    kwargs = {"use_safetensors": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    tokenizer_dir = model_dir
    if adapter_dir is not None:
        from peft import PeftModel

        adapter = _check_dir(str(adapter_dir), "adapter_dir")
        if not (adapter / "adapter_config.json").is_file():
            raise SftlibError(
                f"adapter_dir {str(adapter_dir)!r} has no adapter_config.json.",
                "give the folder a LoRA run saved its adapter to, or pass a merged model as model_dir.",
            )
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        # A training run saves its tokenizer next to the adapter; it wins if present.
        if (adapter / "tokenizer_config.json").is_file():
            tokenizer_dir = str(adapter)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def stop_token_ids(tokenizer) -> list[int]:
    """The eos token plus any end-of-turn token the vocabulary has (ChatML's `<|im_end|>`, ...)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] not in ids]
    return ids


def _prompt_texts(tokenizer, prompts) -> tuple[list[str], bool]:
    """Chat prompts become template text ending in the assistant header; strings pass through.

    Returns the texts and whether the tokenizer should add its own special tokens (only for raw
    strings: the chat template already wrote them).
    """
    if all(isinstance(p, str) for p in prompts):
        return list(prompts), True
    if all(isinstance(p, list) and all(isinstance(m, dict) for m in p) for p in prompts):
        if tokenizer.chat_template is None:
            raise SftlibError(
                "the tokenizer has no chat template, so chat prompts cannot be rendered.",
                "pass plain string prompts, or use a tokenizer with a chat template.",
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

    Prompts are batched by token length (less padding) and left-padded; decoding stops at the
    eos / end-of-turn token or after `max_new_tokens`.
    """
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    if batch_size < 1:
        raise SftlibError(f"batch_size must be at least 1, got {batch_size}.")
    texts, add_special_tokens = _prompt_texts(tokenizer, prompts)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    stops = stop_token_ids(tokenizer)
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


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> list[str]:
    """SQuAD's normalization (lower case, no articles, collapsed spaces), except that punctuation
    separates tokens instead of vanishing, so "2021-03-05" is three tokens and a near miss on a
    date gets partial credit."""
    text = _PUNCTUATION.sub(" ", text.lower())
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 in [0, 1]; two empty answers agree (1.0)."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(predictions: list[str], references: list[str]) -> dict:
    """{"exact_match": 0..100, "token_f1": 0..100, "n": n}; exact match compares `.strip()`-ed text."""
    if len(predictions) != len(references):
        raise SftlibError(
            f"got {len(predictions)} predictions for {len(references)} references.",
            "score one prediction per reference, in the same order.",
        )
    n = len(references)
    if n == 0:
        return {"exact_match": 0.0, "token_f1": 0.0, "n": 0}
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    f1 = sum(token_f1(p, r) for p, r in zip(predictions, references, strict=True))
    return {"exact_match": 100.0 * exact / n, "token_f1": 100.0 * f1 / n, "n": n}
