"""Labels for one normalized example (-100 = not trained), for any chat template and tokenizer.

Assistant turn i of a conversation is trained on exactly what the model generates for it:

    P = render(messages[:i], add_generation_prompt=True)    # what the model is given at inference
    Q = render(messages[:i + 1])                            # ... followed by its answer
    trained = the tokens of Q after P, up to and including the first stop token

and the tokens before that span are `tokenizer(P)`, the prompt tokenized alone, as a server does.
Rendering (phase one, sftlib.data.rendering) passes the row's `tools` and chat-template arguments, so
tool calls, tool results and reasoning render as at inference. The stop tokens are the tokenizer's
EOS plus the model's `generation_config.eos_token_id` (`modeling.stop_token_ids`). No answer is ever
located by searching for its text, so think blocks, tool calls, channel headers (gpt-oss) and several
end tokens (cohere2) are trained where the template makes the model generate them, and nothing after
the stop token is (ChatML's "\\n" after `<|im_end|>`).

A conversation is one example when every turn sits in the full rendering as above. Otherwise it is
expanded (under `all_assistant`) into one example per assistant turn, `tokenizer(P_i)` followed by
the tokens of Q_i after P_i, and the reason is reported:
- the template renders earlier turns differently once later turns follow (Qwen3 drops earlier
  reasoning, gpt-oss earlier analysis);
- tokens merge differently in history: the answer starts with a character that BPE merges with the
  end of the generation prompt (`<think>\\n` + `\\n</think>`), so the model generates a split token that a
  later turn's prompt, tokenized alone, merges.

Some templates end P with a prefill that an answered turn lacks (DeepSeek-R1/V3's `<think>\\n`).
Then training starts where P and Q diverge, provided they diverge inside the generation prompt;
otherwise the row is dropped (`history_changes`). A template that ends the conversation with the
answer and nothing after it (GLM-4.5) gets the tokenizer's EOS appended. A field the template does
not render for a trained turn (reasoning, tool calls, tool results, tool schemas) drops the row as
`not_rendered`: it is never trained as if it were not there. String prompt/completion and plain
text follow TRL exactly. A row that can't be masked raises `DropExample(reason, detail)`;
`sftlib.data.dataset` counts the reasons per split.

Tokenizing is phase two: `Encodings` tokenizes the renderings of many rows in one call (the fast
tokenizer spreads a batch over every core), so `sftlib.data.dataset` renders a batch of rows, tokenizes all
their texts at once, then labels each row. One row alone (`tokenize_example`) gets the same tokens.
"""

from __future__ import annotations

import bisect
import dataclasses

from sftlib.data import IGNORE_INDEX, completions, conversations, rendering
from sftlib.data.rendering import Rendering, Turn
from sftlib.errors import DropExample, SftlibError

# Why a conversation became one example per turn (Tokens.expansion; dataset reports each).
RENDERS_HISTORY = "renders"
TOKENIZES_HISTORY = "tokenizes"
EXPANSIONS = {
    RENDERS_HISTORY: "the template renders history differently once later turns follow",
    TOKENIZES_HISTORY: "a turn's tokens merge differently in history than where the model generated them",
}


@dataclasses.dataclass
class Tokens:
    """One training example: unshifted `labels`, -100 where not trained."""

    input_ids: list[int]
    labels: list[int]
    turns: list[int]  # message indices of the trained assistant turns
    expansion: str = ""  # one of several examples made from one conversation: a key of EXPANSIONS
    appended_eos: bool = False  # the template ended the conversation without a stop token
    boundary_merged: bool = False  # string prompt/completion: a token spans the boundary (as TRL warns)
    rendered: list[Turn] = dataclasses.field(
        default_factory=list, repr=False
    )  # the turns' P/Q, for the audit

    @property
    def expanded(self) -> bool:
        return bool(self.expansion)


class Encodings:
    """Texts tokenized as a server tokenizes a rendered prompt (no special tokens added: the template
    wrote them), many in one call, each once: (input_ids, character offsets) by text."""

    def __init__(self, tokenizer, texts=()):
        self.tokenizer, self.memo = tokenizer, {}
        self.add(texts)

    def add(self, texts) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            enc = self.tokenizer(new, add_special_tokens=False, return_offsets_mapping=True)
            for text, ids, offsets in zip(new, enc["input_ids"], enc["offset_mapping"], strict=True):
                self.memo[text] = (ids, offsets)

    def __call__(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if text not in self.memo:
            self.add([text])
        ids, offsets = self.memo[text]
        return list(ids), list(offsets)  # copies: label_spans appends to them


def stop_texts(tokenizer, stop_ids) -> tuple[str, ...]:
    return tuple(tokenizer.convert_ids_to_tokens(sorted(stop_ids)))


def render_example(example: dict, tokenizer, stop_ids, train_on: str = "all_assistant", template_kwargs=None):
    """Phase one: a conversation's Rendering (sftlib.data.rendering), or None for string formats."""
    if not conversations.is_chat(example):
        return None
    if not getattr(tokenizer, "is_fast", False):
        raise SftlibError("masking conversations needs a fast tokenizer (for character offsets).")
    stops = stop_texts(tokenizer, stop_ids or [tokenizer.eos_token_id])
    return rendering.render_chat(example, tokenizer, stops, train_on, template_kwargs)


def tokenize_example(
    example: dict,
    tokenizer,
    stop_ids=None,
    train_on: str = "all_assistant",
    template_kwargs=None,
    rendered: Rendering | None = None,
    encodings: Encodings | None = None,
) -> tuple[list[Tokens], conversations.Conversation | None]:
    """A normalized example (sftlib.data.sources) -> ([Tokens, ...], the cleaned conversation or None).

    `stop_ids`: the model's stop token ids (default: the tokenizer's EOS). `template_kwargs`: the
    configured chat-template arguments (dataset.chat_template_kwargs); a row's own `tools` and
    `chat_template_kwargs` are added. A conversation gives one example, or one per trained turn (see
    the module docstring). `rendered`/`encodings`: phase one's Rendering and the batch's tokens, when
    the caller made them for many rows at once. Raises DropExample.
    """
    stop_ids = frozenset(stop_ids or [tokenizer.eos_token_id])
    if conversations.is_chat(example):
        rendered = rendered or render_example(example, tokenizer, stop_ids, train_on, template_kwargs)
        encodings = encodings or Encodings(tokenizer, rendered.texts())
        return chat_tokens(rendered, tokenizer, stop_ids, encodings), rendered.conversation
    if "prompt" in example:
        ids, labels, merged = completions.prompt_completion_tokens(
            example["prompt"], example["completion"], tokenizer
        )
        return [Tokens(ids, labels, [], boundary_merged=merged)], None
    if "text" in example:
        ids, labels = completions.text_tokens(example["text"], tokenizer)
        return [Tokens(ids, labels, [])], None
    raise SftlibError(
        f"example has none of the canonical columns (messages, prompt/completion, text): {list(example)}."
    )


def generation_turn(messages: list[dict], i: int, tokenizer, context: dict | None = None, stops=()) -> Turn:
    """Assistant turn `i` rendered (sftlib.data.rendering.render_turn), with its prompt's tokens."""
    turn = rendering.render_turn(messages, i, tokenizer, context, stops)
    return dataclasses.replace(turn, prompt_ids=tuple(Encodings(tokenizer)(turn.prompt)[0]))


def chat_tokens(
    rendered: Rendering, tokenizer, stop_ids: frozenset[int], encodings: Encodings
) -> list[Tokens]:
    turns = [dataclasses.replace(t, prompt_ids=tuple(encodings(t.prompt)[0])) for t in rendered.turns]
    try:
        one, why = single_example(rendered.full, turns, tokenizer, stop_ids, encodings)
    except DropExample:
        if len(turns) < 2:
            raise
        one, why = None, RENDERS_HISTORY  # a later turn's rendering moves an earlier turn's stop token
    if one is not None:
        return [one]
    # One example per turn. (`last_assistant` trains one turn, which is then one example as it is.)
    expansion = why if len(turns) > 1 else ""
    return [turn_example(turn, tokenizer, stop_ids, expansion, encodings) for turn in turns]


def single_example(
    full: str, rendered: list[Turn], tokenizer, stop_ids, encodings: Encodings | None = None
) -> tuple[Tokens | None, str]:
    """The conversation as one example, or (None, the EXPANSIONS key saying why it can't be one).

    One example holds when each turn's rendering up to its stop token is where the full conversation
    has it, and the tokens before each trained span are that turn's prompt tokenized alone.
    """
    ids, offsets = tokenize_at(full, [t.start for t in rendered], tokenizer, encodings)
    labels, spans, appended = label_spans(ids, offsets, full, rendered, tokenizer, stop_ids)
    for turn, (k, stop) in zip(rendered, spans, strict=True):
        end = min(offsets[stop][1], len(turn.text))
        if not full.startswith(turn.text[:end]):
            return None, RENDERS_HISTORY
        if tuple(ids[:k]) != turn.prompt_ids:
            return None, TOKENIZES_HISTORY
    turns = [t.message for t in rendered]
    return Tokens(ids, labels, turns, appended_eos=appended, rendered=rendered), ""


def turn_example(
    turn: Turn, tokenizer, stop_ids, expansion: str, encodings: Encodings | None = None
) -> Tokens:
    """Turn `turn` alone: its prompt tokenized alone, then the tokens of Q after it, by construction."""
    answer_ids, answer_offsets = (encodings or Encodings(tokenizer))(turn.text[turn.start :])
    k = len(turn.prompt_ids)
    ids = [*turn.prompt_ids, *answer_ids]
    offsets = [(0, turn.start)] * k + [(a + turn.start, b + turn.start) for a, b in answer_offsets]
    labels, _, appended = label_spans(ids, offsets, turn.text, [turn], tokenizer, stop_ids, starts=[k])
    return Tokens(ids, labels, [turn.message], expansion=expansion, appended_eos=appended, rendered=[turn])


def label_spans(ids, offsets, text: str, turns: list[Turn], tokenizer, stop_ids, starts=None):
    """Train each turn from its first token up to and including the first stop token.

    `starts`: each turn's first token (default: the token that begins at its start character).
    Returns (labels, [(first token, stop token)] per turn, whether EOS was appended); appending grows
    `ids` and `offsets`. The stop token must start inside the turn's own rendering Q or right after
    it (GLM-4.5's next turn opens with its stop token `<|user|>`). If the text ends with the answer
    and no stop token follows, EOS is appended.
    """
    if starts is None:
        first = {}
        for k, (a, _) in enumerate(offsets):
            first.setdefault(a, k)
        missing = [t for t in turns if t.start not in first]
        if missing:  # a token spans the point where the model's generation starts: no boundary to train from
            raise DropExample(
                "audit_failed", f"no token starts where turn {missing[0].message}'s generation starts"
            )
        starts = [first[t.start] for t in turns]
    labels, spans, appended = [IGNORE_INDEX] * len(ids), [], False
    for turn, k in zip(turns, starts, strict=True):
        stop = next((j for j in range(k, len(ids)) if ids[j] in stop_ids), None)
        if stop is not None and offsets[stop][0] > len(turn.text):
            stop = None  # a later turn's stop token
        if stop is None:
            stop = _append_eos(text, turn, tokenizer, stop_ids, ids)
            offsets.append((len(text), len(text)))
            labels.append(IGNORE_INDEX)
            appended = True
        labels[k : stop + 1] = ids[k : stop + 1]
        spans.append((k, stop))
    return labels, spans, appended


def tokenize_at(
    text: str, cuts: list[int], tokenizer, encodings: Encodings | None = None
) -> tuple[list[int], list[tuple[int, int]]]:
    """(input_ids, character offsets) of `text`, with a token boundary at every cut.

    The whole text is tokenized once. Where one token would span a cut (the prompt ends with "\n"
    and the answer starts with one, and BPE merges them), the pieces between cuts are tokenized
    separately, as at inference: the prompt is tokenized alone and the model generates from there.
    """
    encode = encodings or Encodings(tokenizer)
    ids, offsets = encode(text)
    starts = [a for a, _ in offsets]
    # Offsets run in order, so only the last token starting before a cut can span it.
    spanned = [cut for cut in cuts if (j := bisect.bisect_left(starts, cut)) and offsets[j - 1][1] > cut]
    if not spanned:
        return ids, offsets
    ids, offsets = [], []
    bounds = [0, *sorted(set(cuts)), len(text)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi > lo:
            piece_ids, piece_offsets = encode(text[lo:hi])
            ids += piece_ids
            offsets += [(a + lo, b + lo) for a, b in piece_offsets]
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


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """[(start, end)] of each maximal run of trained positions."""
    runs, start = [], None
    for k, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = k
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, k))
            start = None
    return runs
