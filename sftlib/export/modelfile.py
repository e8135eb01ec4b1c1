"""An Ollama Modelfile for an exported GGUF: the file, the run's stop tokens, and what Ollama would miss.

Ollama reads the chat template stored in the GGUF (`tokenizer.chat_template`) and picks the built-in
template that matches it, so no `TEMPLATE` is written: a hand-written Go template would be a second
copy of the template to drift from the first. What Ollama's matched template leaves out is written
here: the stop tokens the run trained (the end of an assistant turn, not only the GGUF's one EOS),
and the default system prompt that a ChatML template such as SmolLM2's adds when a chat has none
(the model was trained with it in every example).
"""

from __future__ import annotations

import json
import re

MODELFILE = "Modelfile"
_CHATML_SYSTEM = re.compile(r"\A<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)


def default_system_prompt(tokenizer) -> str | None:
    """The system text a ChatML template writes into a chat that has no system message, else None."""
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    found = _CHATML_SYSTEM.match(text)
    return found.group(1) if found else None


def modelfile(gguf_name: str, stop_tokens: list[str], system: str | None) -> str:
    """The Modelfile's text, for a GGUF in the same folder."""
    lines = [
        "# Ollama Modelfile written by `sftlib export`: ollama create NAME -f Modelfile",
        "# The chat template is the one stored in the GGUF; Ollama matches it to its own.",
        f"FROM ./{gguf_name}",
    ]
    lines += [f"PARAMETER stop {json.dumps(token)}" for token in stop_tokens]
    if system is not None:
        lines.append(f"SYSTEM {json.dumps(system)}")
    return "\n".join(lines) + "\n"
