"""An exported GGUF run by llama.cpp (through llama-cpp-python, the `export` extra): prompts rendered by
the chat template stored in the file, decoded by llama.cpp, answers scored as notebook 05 scores them.

Rendering uses llama-cpp-python's Jinja2ChatFormatter on the GGUF's `tokenizer.chat_template`: what
a llama.cpp runtime reads, not transformers' copy of the template. The tokenizer of the GGUF (read by
transformers from the same file) gives the stop tokens and the tool-call format.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

from sftlib.errors import SftlibError
from sftlib.inference.chat import Sampling, drain
from sftlib.inference.generate import Generation

TEMPLATE_KEY = "tokenizer.chat_template"


def require() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise SftlibError(
            "running a GGUF needs llama-cpp-python, which is not installed.",
            "pip install -e '.[export]' (it builds llama.cpp: minutes on a laptop).",
        )


def gguf_tokenizer(path: Path):
    """The GGUF's own tokenizer and chat template, read by transformers from the file."""
    from transformers import AutoTokenizer

    from sftlib.noise import library_deprecations

    with library_deprecations():
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


class LlamaCppEngine:
    """A chat engine (sftlib.inference.chat.Engine) over a GGUF file, and a batch generator for scoring."""

    def __init__(self, path: str | Path, n_ctx: int = 2048):
        require()
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from sftlib.inference.tool_loop import special_tokens
        from sftlib.models.modeling import stop_ids

        self.path = Path(path)
        if not self.path.is_file():
            raise SftlibError(
                f"{self.path} is not a file.", "give the .gguf file that `sftlib export ...` wrote."
            )
        self.llm = Llama(str(self.path), n_ctx=n_ctx, n_threads=os.cpu_count(), verbose=False)
        template = self.llm.metadata.get(TEMPLATE_KEY)
        if not template:
            raise SftlibError(
                f"{self.path} carries no chat template ({TEMPLATE_KEY}).",
                "export the run again with `sftlib export ...`: it stores the run's template.",
            )
        self.tokenizer = gguf_tokenizer(self.path)
        self.stops = set(stop_ids(self.tokenizer)) | {self.llm.token_eos()}
        self.specials = special_tokens(self.tokenizer)
        eos, bos = (self.token_text(i) for i in (self.llm.token_eos(), self.llm.token_bos()))
        self.formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)

    def token_text(self, token: int) -> str:
        return (
            self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""
        )

    def render(self, messages: list[dict], context: dict | None = None) -> str:
        """The prompt as llama.cpp's runtime renders it: the GGUF's template, ending in the generation prompt."""
        context = dict(context or {})
        return self.formatter(messages=messages, tools=context.pop("tools", None), **context).prompt

    def _tokens(self, prompt: str, sampling: Sampling) -> Iterator[int]:
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        if sampling.seed is not None:
            self.llm.set_seed(sampling.seed)
        greedy = sampling.temperature == 0
        return self.llm.generate(
            tokens,
            temp=sampling.temperature,
            top_k=1 if greedy else 0,
            top_p=sampling.top_p,
            min_p=0.0,
            repeat_penalty=1.0,
            reset=True,
        )

    def stream(self, messages: list[dict], context: dict | None, sampling: Sampling) -> Iterator[str]:
        """The reply's raw text piece by piece (up to and including the stop token); returns cut off."""
        made: list[int] = []
        shown = b""
        for token in self._tokens(self.render(messages, context), sampling):
            made.append(token)
            text = self.llm.detokenize(made, special=True)
            complete = text[: len(text) - _partial_utf8(text)]  # a character split across tokens waits
            if len(complete) > len(shown):
                yield complete[len(shown) :].decode("utf-8", errors="replace")
                shown = complete
            if token in self.stops:
                return False
            if len(made) >= sampling.max_new_tokens:
                return True
        return False

    def generations(
        self, prompts: list[list[dict]], contexts: list[dict | None], max_new_tokens: int
    ) -> list[Generation]:
        """Greedy answers for chat prompts, one at a time, as `generate.generations` returns them."""
        from sftlib import progress
        from sftlib.inference.tool_loop import visible

        sampling = Sampling(max_new_tokens=max_new_tokens)
        lines = progress.Lines("llama.cpp generate", len(prompts), "prompts")
        made = []
        for k, (prompt, context) in enumerate(zip(prompts, contexts, strict=True)):
            raw, cut_off = drain(self.stream(prompt, context, sampling), lambda piece: None)
            made.append(Generation(text=visible(raw, self.specials), raw=raw, cut_off=cut_off))
            lines.update(k + 1)
        return made


def _partial_utf8(data: bytes) -> int:
    """How many bytes at the end of `data` begin a UTF-8 character that is not complete yet."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the lead byte of the last character
            need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
            return back if need > back else 0
    return 0
