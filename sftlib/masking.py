"""Labels for one normalized example (-100 = not trained), for any chat template.

Assistant turn i of a conversation is trained on exactly what the model generates for it:

    P = render(messages[:i], add_generation_prompt=True)    # what the model is given at inference
    Q = render(messages[:i + 1])                            # ... followed by its answer
    trained = the tokens of Q after P, up to and including the first stop token

The stop tokens are the tokenizer's EOS plus the model's `generation_config.eos_token_id`
(`modeling.stop_token_ids`). No answer is ever located by searching for its text, so think blocks,
channel headers (gpt-oss) and several end tokens (cohere2) are trained where the template makes
the model generate them, and nothing after the stop token is (ChatML's "\\n" after `<|im_end|>`).

Two cases need more than one rendering:
- Some templates end P with a prefill that an answered turn lacks (DeepSeek-R1/V3's `<think>\\n`).
  Then training starts where P and Q diverge, provided they diverge inside the generation prompt
  (the history before it is the same); otherwise the row is dropped (`history_changes`).
- Some templates render earlier turns differently once later turns follow (Qwen3 drops earlier
  reasoning, gpt-oss earlier analysis). If a turn's P + trained span is not where the full
  conversation has it, the conversation is expanded (under `all_assistant`) into one example per
  assistant turn, each Q_i with its history as the model sees it at inference.

A template that ends the conversation with the answer and nothing after it (GLM-4.5: the next
turn's `<|user|>` is the stop token) gets the tokenizer's EOS appended, so the model learns to stop.
String prompt/completion and plain text follow TRL exactly. A row that can't be masked raises
`DropExample(reason, detail)`; `sftlib.dataset` counts the reasons per split.
"""

from __future__ import annotations

import dataclasses
import os

from sftlib import data, scoring
from sftlib.data import DropExample
from sftlib.errors import SftlibError

IGNORE = -100


@dataclasses.dataclass(frozen=True)
class Turn:
    """One trained assistant turn: `text` is Q (the conversation rendered up to and including it),
    `start` the character where the model's generation begins in it."""

    message: int
    text: str
    start: int
    answer: str  # the message's answer text (after any reasoning block), stripped


@dataclasses.dataclass
class Tokens:
    """One training example: unshifted `labels`, -100 where not trained."""

    input_ids: list[int]
    labels: list[int]
    turns: list[int]  # message indices of the trained assistant turns
    expanded: bool = False  # one of several examples made from one conversation
    appended_eos: bool = False  # the template ended the conversation without a stop token
    boundary_merged: bool = False  # string prompt/completion: a token spans the boundary (as TRL warns)
    rendered: list[Turn] = dataclasses.field(
        default_factory=list, repr=False
    )  # the turns' P/Q, for the audit


def tokenize_example(
    example: dict, tokenizer, stop_ids=None, train_on: str = "all_assistant"
) -> tuple[list[Tokens], data.Conversation | None]:
    """A normalized example (sftlib.data) -> ([Tokens, ...], the cleaned conversation or None).

    `stop_ids`: the model's stop token ids (default: the tokenizer's EOS). A conversation gives one
    example, or one per trained turn when the template renders history differently. Raises
    DropExample.
    """
    stop_ids = frozenset(stop_ids or [tokenizer.eos_token_id])
    if data.is_chat(example):
        conversation = data.conversation(example)
        turns = trained_turns(conversation, train_on)
        return chat_tokens(conversation.messages, turns, tokenizer, stop_ids, train_on), conversation
    if "prompt" in example:
        return [prompt_completion_tokens(example["prompt"], example["completion"], tokenizer)], None
    if "text" in example:
        return [text_tokens(example["text"], tokenizer)], None
    raise SftlibError(
        f"example has none of the canonical columns (messages, prompt/completion, text): {list(example)}."
    )


def trained_turns(conversation: data.Conversation, train_on: str) -> list[int]:
    turns = [
        i
        for i, m in enumerate(conversation.messages)
        if m["role"] == "assistant" and i >= conversation.first_trainable
    ]
    if train_on == "last_assistant":
        return turns[-1:]
    if train_on != "all_assistant":
        raise SftlibError(f"dataset.train_on={train_on!r} is not one of all_assistant, last_assistant.")
    return turns


# --------------------------------------------------------------------------- conversations


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    """The chat template's text; a template that raises on this row drops it (`template_error`)."""
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja's TemplateError, raise_exception(...), a missing key: the row's shape
        raise DropExample("template_error", f"{type(exc).__name__}: {exc}") from None


def generation_turn(messages: list[dict], i: int, tokenizer) -> Turn:
    """Q for assistant turn `i`, and where the model's generation starts in it (see module docstring)."""
    prompt, answered = render(tokenizer, messages[:i], True), render(tokenizer, messages[: i + 1])
    answer = scoring.answer(messages[i]["content"])
    if answered.startswith(prompt):
        return Turn(i, answered, len(prompt), answer)
    start = len(os.path.commonprefix([prompt, answered]))
    history = len(os.path.commonprefix([render(tokenizer, messages[:i]), prompt]))
    if start < history:  # they differ before the generation prompt: the turn changes its own history
        raise DropExample(
            "history_changes",
            f"assistant turn {i}: the conversation renders differently before its generation prompt once "
            f"the turn is answered; with the prompt: {_around(prompt, start)}; answered: {_around(answered, start)}. "
            "Fix: set dataset.train_on: last_assistant, or choose another template (model.chat_template).",
        )
    return Turn(i, answered, start, answer)


def chat_tokens(
    messages, turns: list[int], tokenizer, stop_ids: frozenset[int], train_on: str
) -> list[Tokens]:
    if not getattr(tokenizer, "is_fast", False):
        raise SftlibError("masking conversations needs a fast tokenizer (for character offsets).")
    rendered = [generation_turn(messages, i, tokenizer) for i in turns]
    # Q of a conversation's final turn is the whole conversation: no need to render it again.
    full = rendered[-1].text if turns[-1] == len(messages) - 1 else render(tokenizer, messages)
    try:  # one example, if every turn sits in the full rendering where its own rendering has it
        ids, labels, ends, appended = label_spans(full, rendered, tokenizer, stop_ids)
        if all(
            full.startswith(t.text[: min(end, len(t.text))]) for t, end in zip(rendered, ends, strict=True)
        ):
            return [Tokens(ids, labels, turns, appended_eos=appended, rendered=rendered)]
        moved = "renders earlier turns differently once later turns follow"
    except DropExample as drop:
        if train_on != "all_assistant" or len(turns) < 2:
            raise
        moved = drop.detail
    if train_on != "all_assistant" or len(turns) < 2:
        raise DropExample("history_changes", f"the template {moved}.")
    examples = []
    for turn in rendered:
        ids, labels, _, appended = label_spans(turn.text, [turn], tokenizer, stop_ids)
        examples.append(
            Tokens(ids, labels, [turn.message], expanded=True, appended_eos=appended, rendered=[turn])
        )
    return examples


def label_spans(text: str, turns: list[Turn], tokenizer, stop_ids: frozenset[int]):
    """Tokenize `text` and train each turn from its start up to and including the first stop token.

    Returns (input_ids, labels, end character of each trained span, whether EOS was appended).
    The stop token must start inside the turn's own rendering Q or right after it (GLM-4.5's next
    turn opens with its stop token `<|user|>`). If the text ends with the answer and no stop token
    follows, EOS is appended.
    """
    ids, offsets = tokenize_at(text, [t.start for t in turns], tokenizer)
    labels, ends, appended = [IGNORE] * len(ids), [], False
    starts = {}
    for k, (a, _) in enumerate(offsets):
        starts.setdefault(a, k)
    for turn in turns:
        k = starts[turn.start]
        stop = next((j for j in range(k, len(ids)) if ids[j] in stop_ids), None)
        if stop is not None and offsets[stop][0] > len(turn.text):
            stop = None  # a later turn's stop token
        if stop is None:
            stop = _append_eos(text, turn, tokenizer, stop_ids, ids)
            offsets.append((len(text), len(text)))
            labels.append(IGNORE)
            appended = True
        labels[k : stop + 1] = ids[k : stop + 1]
        ends.append(offsets[stop][1])
    return ids, labels, ends, appended


def tokenize_at(text: str, cuts: list[int], tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """(input_ids, character offsets) of `text`, with a token boundary at every cut.

    The whole text is tokenized once. Where one token would span a cut (the prompt ends with "\n"
    and the answer starts with one, and BPE merges them), the pieces between cuts are tokenized
    separately, as at inference: the prompt is tokenized alone and the model generates from there.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if not any(a < cut < b for cut in cuts for a, b in offsets):
        return ids, offsets
    ids, offsets = [], []
    bounds = [0, *sorted(set(cuts)), len(text)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi > lo:
            piece = tokenizer(text[lo:hi], add_special_tokens=False, return_offsets_mapping=True)
            ids += piece["input_ids"]
            offsets += [(a + lo, b + lo) for a, b in piece["offset_mapping"]]
    return ids, offsets


def _append_eos(text: str, turn: Turn, tokenizer, stop_ids, ids: list[int]) -> int:
    """Append EOS after a final answer that the template leaves unterminated; else say what is wrong."""
    tail = turn.text[turn.start :]
    ends_conversation = len(turn.text) == len(text)
    if ends_conversation and tokenizer.eos_token_id is not None and tail.rstrip().endswith(turn.answer):
        # Nothing but whitespace after the answer: at inference the model stops with a stop token here.
        ids.append(tokenizer.eos_token_id)
        return len(ids) - 1
    names = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(stop_ids))
    end = tail.rstrip()[-30:]
    raise DropExample(
        "no_stop_token",
        f"assistant turn {turn.message} renders as ...{end!r} and none of the stop tokens ({names}) follows it. "
        "If the template ends turns with a marker string, that string is not a stop token of this tokenizer and "
        "model (generation_config.eos_token_id), so a model trained on it would not learn to stop. "
        "Fix: use the template that belongs to this model (model.chat_template), or a model whose tokenizer "
        "has that marker as a special stop token.",
    )


def _around(text: str, pos: int, width: int = 40) -> str:
    return repr(f"...{text[max(0, pos - width) : pos]}⟨here⟩{text[pos : pos + width]}...")


# --------------------------------------------------------------------------- strings


def _eos(tokenizer) -> str:
    if not tokenizer.eos_token:
        raise SftlibError(
            "the tokenizer has no eos_token, so a completion can't be ended.", "use a tokenizer with one."
        )
    return tokenizer.eos_token


def prompt_completion_tokens(prompt, completion, tokenizer) -> Tokens:
    """As trl.SFTTrainer does: the completion starts where the tokenized prompt and prompt+completion+eos
    diverge. When a token spans the boundary, it is part of the completion (`boundary_merged`)."""
    from trl.data_utils import common_prefix_length

    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DropExample("non_string_content")
    if not completion.strip():
        raise DropExample("empty_completion")
    eos = _eos(tokenizer)
    completion = completion if completion.endswith(eos) else completion + eos
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    ids = tokenizer(text=prompt + completion)["input_ids"]
    n = common_prefix_length(prompt_ids, ids)
    return Tokens(ids, [IGNORE] * n + ids[n:], [], boundary_merged=n < len(prompt_ids))


def text_tokens(text, tokenizer) -> Tokens:
    """Language modeling, as trl.SFTTrainer does: text + eos, every token trained."""
    if not isinstance(text, str):
        raise DropExample("non_string_content")
    if not text.strip():
        raise DropExample("empty_text")
    eos = _eos(tokenizer)
    ids = tokenizer(text=text if text.endswith(eos) else text + eos)["input_ids"]
    return Tokens(ids, list(ids), [])


# --------------------------------------------------------------------------- the audit


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """[(start, end)] of each maximal run of trained positions."""
    runs, start = [], None
    for k, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = k
        elif label == IGNORE and start is not None:
            runs.append((start, k))
            start = None
    return runs


def audit(tokens: Tokens, example: dict, tokenizer, stop_ids=None) -> None:
    """Check where the trained tokens sit, not only what they decode to; SftlibError on a mismatch.

    Conversation: each trained run is one trained turn; everything before it decodes to the turn's
    own rendering up to where generation starts (so the run sits exactly there), the run ends with
    its first stop token, decodes to the text the template renders there, and holds the turn's
    answer. Prompt/completion: one run that ends the text and holds the completion + eos. Text:
    everything + eos. Run on untruncated tokens. The turns' renderings come with `tokens` when masking
    made them, and are rendered again otherwise.
    """
    ids, labels = tokens.input_ids, tokens.labels
    stop_ids = frozenset(stop_ids or [tokenizer.eos_token_id])

    def decode(a, b):
        return tokenizer.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    runs = trained_runs(labels)
    if data.is_chat(example):
        messages = data.conversation(example).messages
        problem = (
            None
            if len(runs) == len(tokens.turns)
            else f"{len(runs)} trained runs for {len(tokens.turns)} turns"
        )
        rendered = {t.message: t for t in tokens.rendered}
        for (a, b), i in zip(runs, tokens.turns, strict=False):
            if problem:
                break
            turn = rendered.get(i) or generation_turn(messages, i, tokenizer)
            body, run = decode(a, b - 1), decode(a, b)
            answer = scoring.answer(messages[i]["content"])
            if decode(0, a) != turn.text[: turn.start]:
                problem = f"turn {i}: the trained run does not start where the model's generation starts"
            elif ids[b - 1] not in stop_ids or any(t in stop_ids for t in ids[a : b - 1]):
                problem = f"turn {i}: the trained run does not end with its first stop token"
            elif not (turn.text[turn.start :].startswith(run) or body == turn.text[turn.start :]):
                problem = f"turn {i}: the trained run {run!r} is not the text the template renders there"
            elif answer not in run:
                problem = f"turn {i}: the trained run {run!r} does not hold the answer {answer!r}"
    else:
        eos = tokenizer.eos_token
        body = example.get("completion", example.get("text"))
        body = body if body.endswith(eos) else body + eos
        full = (example.get("prompt") or "") + body
        decoded = [decode(a, b) for a, b in runs]
        ok = len(decoded) == 1 and full.endswith(decoded[0]) and len(decoded[0]) >= len(body)
        if "text" in example:
            ok = ok and decoded[0] == body
        problem = None if ok else f"trained tokens decode to {decoded!r}, expected {body!r} at the end"
    if problem:
        raise SftlibError(
            f"mask audit failed for example {example.get('index', '?')}: {problem}.",
            "this is a masking bug for this tokenizer/chat template: please report it with the template.",
        )
