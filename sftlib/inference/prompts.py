"""Which prompts a model answers: your own, the held-out rows of every source (taking turns), or a few
seen in training; each rendered with the template arguments its row was trained with."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from sftlib.config import RunConfig
from sftlib.errors import SftlibError

SEEN_PROMPTS = 4  # without a held-out split, this many training prompts are answered (and labelled so)


@dataclasses.dataclass
class Prompts:
    """What to generate for: `references` are None where there is nothing to score against.

    `contexts` holds, per prompt, the chat-template arguments it is rendered with, as in training
    (`rendering.template_context`: the row's `tools`, its source's dataset.chat_template_kwargs, then
    the row's own `chat_template_kwargs`); pass them to `generate`.
    """

    prompts: list
    references: list[str | None]
    origin: str  # "yours", "held-out", or "seen in training"
    contexts: list[dict | None] = dataclasses.field(default_factory=list)

    def scored(self) -> bool:
        return self.origin == "held-out"


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
    from sftlib.data import loader

    if own:
        return own_prompts(own, cfg.sources[0].chat_template_kwargs)
    askable = [source for source in loader.load(cfg) if source.format != "text"]
    if not askable:
        raise SftlibError(
            "a `text` dataset has no prompts to answer.",
            "give your own prompts (notebook 05's PROMPTS), or use a chat or prompt/completion dataset.",
        )
    held_out = any("eval" in source.splits for source in askable)
    split, origin = ("eval", "held-out") if held_out else ("train", "seen in training")
    limit = limit if held_out else min(limit or SEEN_PROMPTS, SEEN_PROMPTS)
    asked = [list(itertools.islice(_asked(source, split), limit)) for source in askable]
    rows = loader.take_turns(asked, limit)  # a prompt of each source in turn: every source is asked
    if not rows:
        raise SftlibError(
            f"the {split} split has no prompt to answer.", "give your own prompts (notebook 05's PROMPTS)."
        )
    prompts, references, contexts = (list(column) for column in zip(*rows, strict=True))
    return Prompts(prompts, references if held_out else [None] * len(prompts), origin, contexts)


def own_prompts(texts: list[str], template_kwargs: dict | None, system: str | None = None) -> Prompts:
    """User messages to answer, each rendered with `template_kwargs` (and no tools), after `system`."""
    from sftlib.data import rendering

    context = rendering.template_context({}, template_kwargs)
    first = [{"role": "system", "content": system}] if system else []
    prompts = [[*first, {"role": "user", "content": text}] for text in texts]
    return Prompts(prompts, [None] * len(texts), "yours", [context] * len(texts))


def chats_file(path: str | Path, template_kwargs: dict | None, system: str | None = None) -> Prompts:
    """Multi-turn prompts from a JSONL file: per line a list of messages, or an object with `messages`
    (and `tools`, given to the template); each chat ends where the model answers. `system` comes
    first in chats that have no system message."""
    from sftlib.data import rendering

    prompts, contexts = [], []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SftlibError(
                f"{where} is not JSON ({exc.msg}).", "write one JSON list of messages per line."
            ) from None
        row = {"messages": row} if isinstance(row, list) else row
        messages = row.get("messages") if isinstance(row, dict) else None
        if not (isinstance(messages, list) and messages and all(_is_message(m) for m in messages)):
            raise SftlibError(
                f"{where} holds no list of messages with `role` and `content`.",
                'write e.g. [{"role": "user", "content": "Hi"}] per line.',
            )
        if messages[-1]["role"] == "assistant":
            raise SftlibError(
                f"{where} ends with an assistant turn: there is nothing to answer.",
                "end each chat with the user's (or a tool's) message.",
            )
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        prompts.append(messages)
        contexts.append(rendering.template_context({"tools": row.get("tools")}, template_kwargs))
    if not prompts:
        raise SftlibError(f"{path} holds no chats.", "write one JSON list of messages per line.")
    return Prompts(prompts, [None] * len(prompts), "yours", contexts)


def _is_message(m) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m


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


def _asked(source, split: str):
    """(prompt, reference, context) of each askable row of `split`, read through the loader as masking
    reads it: prompt/completion strings as they are; a conversation asked for its last assistant turn
    that answers in text (see `prompts_for`); rows masking drops are skipped."""
    from sftlib.data import chat, loader

    for row in loader.read_rows(source, split):
        if row.conversation is None:
            prompt, completion = row.data.get("prompt"), row.data.get("completion")
            if isinstance(prompt, str) and isinstance(completion, str):
                yield prompt, completion, None
            continue
        messages = row.conversation.messages
        answered = [
            i
            for i, m in enumerate(messages)
            if i >= row.conversation.first_trainable
            and m["role"] == chat.TRAINED_ROLE
            and not m.get("tool_calls")
        ]
        if answered:
            yield messages[: answered[-1]], chat.content_text(messages[answered[-1]]["content"]), row.context
