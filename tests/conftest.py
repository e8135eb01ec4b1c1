import os

import pytest

from sftlib.models import embedded


def require(available: bool, what: str, install: str) -> None:
    """Skip a test that needs `what` where it is missing, naming it and the command that installs it.

    Under CI=true a missing requirement fails the test instead: CI installs everything first (.ci/run),
    so a skip there would hide a test that never ran.
    """
    if available:
        return
    reason = f"needs {what}, which is not here; to run it: {install}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run installs it before the tests)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (ChatML; injects a default system prompt; pad == eos == <|im_end|>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded.resolve("embedded:tiny-random-llama"))


def write_chat_rows(path, n: int = 16):
    """`n` one-turn chats (an English date -> its ISO form) as messages JSONL at `path`."""
    import json

    months = [("January", "01"), ("March", "03"), ("July", "07"), ("October", "10")]
    with open(path, "w") as f:
        for i in range(n):
            day, (month, number) = i % 27 + 1, months[i % 4]
            msgs = [
                {"role": "user", "content": f"{month} {day}, 2021"},
                {"role": "assistant", "content": f"2021-{number}-{day:02d}"},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path
