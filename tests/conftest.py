import pytest

from sftlib import embedded


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (ChatML; injects a default system prompt; pad == eos == <|im_end|>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded.resolve("embedded:tiny-random-llama"))
