"""A chat with a model: multi-turn history, a system prompt, sampling settings, replies streamed piece by
piece, and for a run trained with tools the real tool loop, its calls, results and answer shown apart.

The engine renders the chat and decodes: `TransformersEngine` here, through the chat template as
training rendered it; `sftlib.export.llama_cpp.LlamaCppEngine` for a GGUF, through the template stored
in the file. `sftlib chat` (the terminal) and notebook 05's chat widget both show a Session's Parts.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from sftlib.errors import SftlibError
from sftlib.inference import tool_loop
from sftlib.inference.generate import Generation, Sampling, render_prompt
from sftlib.inference.tool_formats import ToolFormat

Pieces = Callable[[str], None]  # called with each new piece of a reply, as it is decoded


class Engine(Protocol):
    specials: tuple[str, ...]  # the special tokens, removed from what is shown

    def stream(self, messages: list[dict], context: dict | None, sampling: Sampling) -> Iterator[str]:
        """The reply's raw text (special tokens included, up to the stop token) piece by piece; the
        generator returns whether `max_new_tokens` cut it off."""


def drain(pieces: Iterator[str], shown: Pieces) -> tuple[str, bool]:
    """(the whole text, cut off) of an Engine.stream, each piece passed to `shown` on the way."""
    text = []
    while True:
        try:
            piece = next(pieces)
        except StopIteration as stop:
            return "".join(text), bool(stop.value)
        text.append(piece)
        shown(piece)


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of a reply as shown: `reasoning`, `call`, `result`, `answer` or `error`."""

    kind: str
    text: str


def answer_parts(text: str) -> list[Part]:
    """A reply's visible text as its reasoning (a `<think>` block) and its answer."""
    if "</think>" not in text:
        return [Part("answer", text.strip())]
    thought, _, after = text.rpartition("</think>")
    thought = thought.replace("<think>", "").strip()
    return ([Part("reasoning", thought)] if thought else []) + [Part("answer", after.strip())]


class Session:
    """One conversation: `send` a user message, get the reply's Parts; `reset` forgets the history.

    With `tools` (names to Python functions) and their call format `fmt`, each reply runs the tool
    loop (sftlib.inference.tool_loop): calls read from the reply are run and their results added as
    tool messages until the model answers, at most `max_rounds` rounds."""

    def __init__(
        self,
        engine: Engine,
        system: str | None = None,
        context: dict | None = None,
        tools: dict[str, Callable] | None = None,
        fmt: ToolFormat | None = None,
        sampling: Sampling | None = None,
        max_rounds: int = 3,
    ):
        if tools and fmt is None:
            raise SftlibError("a chat with tools needs the template's tool-call format.")
        self.engine, self.system, self.tools, self.fmt = engine, system, tools, fmt
        self.context = dict(context or {})
        if tools and not self.context.get("tools"):  # schemas given with the prompt (as trained) win
            self.context["tools"] = tool_schemas(tools)
        self.sampling, self.max_rounds = sampling or Sampling(), max_rounds
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def _without_system(self, messages: list[dict]) -> list[dict]:
        return messages[1:] if self.system else messages

    def send(self, text: str, shown: Pieces = lambda piece: None) -> list[Part]:
        """The reply to `text`, its pieces passed to `shown` as they are decoded; kept in the history."""
        if not text.strip():
            raise SftlibError("the message is empty.", "type a message.")
        chat_so_far = self.messages() + [{"role": "user", "content": text}]
        if self.tools:
            return self._loop(chat_so_far, shown)
        raw, cut_off = drain(self.engine.stream(chat_so_far, self.context, self.sampling), shown)
        reply = tool_loop.visible(raw, self.engine.specials)
        self.history = self._without_system(chat_so_far) + [{"role": "assistant", "content": reply}]
        return answer_parts(reply) + _cut(cut_off, self.sampling)

    def _loop(self, chat_so_far: list[dict], shown: Pieces) -> list[Part]:
        def generator(chats, contexts, label) -> list[Generation]:
            raw, cut_off = drain(self.engine.stream(chats[0], contexts[0], self.sampling), shown)
            return [Generation(tool_loop.visible(raw, self.engine.specials), raw, cut_off)]

        (t,) = tool_loop.run_loop(
            [chat_so_far],
            [self.context],
            self.tools,
            self.fmt,
            generator,
            self.engine.specials,
            self.max_rounds,
        )
        parts = []
        for rnd in t.rounds:
            for call, result in zip(rnd.calls, rnd.results, strict=True):
                parts += [Part("call", tool_loop.shown_call(call)), Part("result", result)]
        if t.error is not None:
            parts.append(Part("error", f"malformed call: {t.error}"))
        elif t.unfinished:
            parts.append(Part("error", f"still calling after {len(t.rounds)} rounds"))
        else:
            parts += answer_parts(t.messages[-1]["content"] if t.messages[-1]["role"] == "assistant" else "")
        self.history = self._without_system(t.messages)
        return parts + _cut(t.cut_off, self.sampling)


def _cut(cut_off: bool, sampling: Sampling) -> list[Part]:
    note = f"cut off at {sampling.max_new_tokens} new tokens (raise --max-new-tokens)"
    return [Part("error", note)] if cut_off else []


def tool_schemas(tools: dict[str, Callable]) -> list[dict]:
    """The JSON schema of each tool, from its signature and Google-style docstring (transformers'
    get_json_schema), in OpenAI's function format."""
    from transformers.utils import get_json_schema

    schemas = []
    for name, function in tools.items():
        try:
            schema = get_json_schema(function)
        except Exception as exc:  # transformers raises its own parsing errors, one per missing piece
            raise SftlibError(
                f"tool {name!r} has no JSON schema: {exc}",
                "give it type hints and a docstring with an Args: section naming each argument.",
            ) from None
        # OpenAI's function format, as datasets carry tools: transformers adds a `return` entry, which a
        # template that writes the schema as JSON would show, unlike anything trained.
        schema["function"].pop("return", None)
        schemas.append(schema)
    return schemas


class TransformersEngine:
    """A transformers model: the chat rendered as training rendered it, decoded in a thread, streamed."""

    def __init__(self, model, tokenizer):
        from sftlib.models.modeling import stop_ids

        self.model, self.tokenizer = model, tokenizer
        self.stops = stop_ids(tokenizer, model.generation_config)
        self.specials = tool_loop.special_tokens(tokenizer)

    def stream(self, messages: list[dict], context: dict | None, sampling: Sampling) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer, set_seed

        text = render_prompt(self.tokenizer, messages, context)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=False)
        sample = sampling.temperature > 0
        if sampling.seed is not None:
            set_seed(sampling.seed)
        made: dict = {}

        def decode():  # a failure ends the stream, and is raised after it
            try:
                with torch.inference_mode():
                    made["ids"] = self.model.generate(
                        **enc,
                        max_new_tokens=sampling.max_new_tokens,
                        do_sample=sample,
                        temperature=sampling.temperature if sample else None,
                        top_p=sampling.top_p if sample else None,
                        top_k=None,
                        eos_token_id=self.stops,
                        pad_token_id=self.tokenizer.pad_token_id,
                        streamer=streamer,
                    )
            except BaseException as exc:
                made["error"] = exc
                streamer.end()

        worker = threading.Thread(target=decode, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if "error" in made:
            raise made["error"]
        new = made["ids"][0, enc["input_ids"].shape[1] :].tolist()
        return len(new) >= sampling.max_new_tokens and (not new or new[-1] not in self.stops)
