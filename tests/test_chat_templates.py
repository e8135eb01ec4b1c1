"""The oracle suite: sftlib's labels against TRL's `{% generation %}` masks, for every template pair TRL bundles.

For each text-only pair `X.jinja` / `X_training.jinja` in trl/chat_templates, multi-turn conversations
are masked by sftlib with the model's own template X, and by TRL with X_training and
`apply_chat_template(..., return_assistant_tokens_mask=True)`. The tokenizer is SmolLM2's, with the
template's control strings added as special tokens and the model's stop tokens set as they are in its
generation_config. Turn by turn, the trained texts must be equal, or differ only in one of the named,
justified classes below (docs/masking.md). A difference of a new kind fails the test.
"""

import copy
import importlib.resources
import re
from pathlib import Path

import pytest

from sftlib.data import audit, masking, rendering
from sftlib.errors import DropExample

# TRL exports no list of its bundled templates (TRL 1.16): read from its package data, as
# sftlib.models.modeling.bundled_chat_templates does.
TEMPLATES = Path(str(importlib.resources.files("trl") / "chat_templates"))
PAIRS = sorted(p.name.removesuffix("_training.jinja") for p in TEMPLATES.glob("*_training.jinja"))
# Vision templates render content only as lists of image/text blocks: a string content is dropped or raises.
NOT_TEXT_ONLY = {"idefics3", "llava_next", "smolvlm"}
TEXT_PAIRS = [p for p in PAIRS if p not in NOT_TEXT_ONLY]

# The model's stop tokens (tokenizer EOS first, then generation_config.eos_token_id); ChatML otherwise.
STOPS = {
    "cohere": ["<|END_OF_TURN_TOKEN|>"],
    "cohere2": ["<|END_OF_TURN_TOKEN|>"],
    "deepseek_r1_distill": ["<｜end▁of▁sentence｜>"],
    "deepseekv3": ["<｜end▁of▁sentence｜>"],
    "diffusion_gemma": ["<turn|>"],
    "gemma": ["<eos>", "<end_of_turn>"],
    "gemma3": ["<eos>", "<end_of_turn>"],
    # Gemma 4 ends a turn with `<turn|>` and a tool call with `<|tool_response>` (TRL's gemma4 response schema).
    **dict.fromkeys(
        ("gemma4", "gemma4_v2", "gemma4_v3", "gemma4_v4", "gemma4_v5"),
        ["<turn|>", "<eos>", "<|tool_response>"],
    ),
    "glm4moe": ["<|endoftext|>", "<|user|>", "<|observation|>"],
    "gptoss": ["<|return|>", "<|endoftext|>", "<|call|>"],
    "llama3": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
    "muse_glimmer": ["<|eot|>", "<|eom|>"],
    "phi3": ["<|endoftext|>", "<|end|>", "<|assistant|>"],
    "phi3_5": ["<|endoftext|>", "<|end|>", "<|assistant|>"],
}
CHATML_STOPS = ["<|im_end|>", "<|endoftext|>"]
CONTROL = re.compile(
    r"</?think>|<\|[^<>|\s]+\|>|<｜[^<>｜]+｜>|<(?:start|end)_of_turn>|\[gMASK\]|<sop>|<\|[a-z]+>|<[a-z]+\|>"
)


def chat(*turns):
    roles = {"s": "system", "u": "user", "a": "assistant"}
    return [{"role": roles[t[0]], "content": t[2:]} for t in turns]


CONVERSATIONS = {
    "system_and_three_turns": chat(
        "s Be terse.", "u Capital of France?", "a Paris.", "u And Italy?", "a Rome.", "u Spain?", "a Madrid."
    ),
    "reasoning_in_content": chat(
        "u 2+2?", "a <think>\nadd them\n</think>\n\n4", "u times 3?", "a <think>\n4*3\n</think>\n\n12"
    ),
    "scaffold_words": chat(
        "u Say final.", "a final", "u Say user.", "a user", "u Say assistant.", "a assistant"
    ),
    "leading_newline": chat("u Hi", "a \nHello.", "u Bye", "a Bye!"),
    "emoji_at_the_end": chat("u Hi", "a Hello 😀", "u Bye", "a Bye 👋"),
    "assistant_first": chat("a How can I help?", "u Hi", "a Hello.", "u Bye", "a Bye."),
}
# Rows a template itself refuses: counted drops, never a crash.
EXPECTED_DROPS = {("gemma", "system_and_three_turns"): "template_error"}  # "System role not supported"

# Every way TRL's trained text may differ from sftlib's, and why sftlib's is right (docs/masking.md).
CLASSES = {
    "trl_trains_prompt_text": "TRL's span starts inside the generation prompt (ChatML's newline after "
    "`assistant`, `<|start|>assistant`, `<｜Assistant｜>`, a `<think>` prefill): given at inference, not generated",
    "trl_trains_after_stop": "TRL's span goes past the stop token (the newline after `<|im_end|>`, Phi-3's "
    "`\\n<|endoftext|>`): generation ends at the stop token",
    "different_final_stop": "GLM-4.5's template ends the conversation with the answer: TRL's training template "
    "adds `<|user|>`, sftlib appends EOS; both are stop tokens",
    "history_rewritten": "the template renders earlier turns differently once later turns follow: TRL trains a "
    "turn as the full conversation shows it, sftlib (expanded) as the model generates it",
    "trl_misses_split_character_tokens": "transformers marks only the first of the byte tokens that spell one "
    "character (an emoji) inside `{% generation %}`; sftlib trains all of them",
    "training_template_keeps_reasoning": "DeepSeek's template drops the reasoning before `</think>`, TRL's "
    "training template keeps it; sftlib renders with the model's own template",
}


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    """(template name, variant) -> the SmolLM2 tokenizer set up for that template, and its stop ids."""
    return template_tokenizers(tokenizer)


def template_tokenizers(tokenizer):
    """A cached getter (template name, variant) -> (`tokenizer` set up for that template, stop ids)."""
    cache = {}

    def get(name, variant=""):
        if (name, variant) not in cache:
            tok = copy.deepcopy(tokenizer)
            stops = STOPS.get(name, CHATML_STOPS)
            paths = (TEMPLATES / f"{name}.jinja", TEMPLATES / f"{name}_training.jinja")
            text = "".join(p.read_text() for p in paths if p.is_file())  # some have no training template
            controls = sorted(set(CONTROL.findall(text)) | set(stops))
            tok.add_special_tokens(
                {"additional_special_tokens": controls}, replace_extra_special_tokens=False
            )
            tok.eos_token = stops[0]
            tok.chat_template = (TEMPLATES / f"{name}{variant}.jinja").read_text()
            cache[name, variant] = tok, [tok.convert_tokens_to_ids(s) for s in stops]
        return cache[name, variant]

    return get


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def ours_by_turn(name, messages, tokenizers, row=None, template_kwargs=None):
    """{assistant message index: trained text}, the examples, and the cleaned conversation.

    `row`: the row's template columns (`tools`, `chat_template_kwargs`); `template_kwargs`: the
    configured dataset.chat_template_kwargs."""
    tok, stop_ids = tokenizers(name)
    example = {"messages": messages, "index": 0, **(row or {})}
    examples, conversation = masking.tokenize_example(example, tok, stop_ids, template_kwargs=template_kwargs)
    out = {}
    for tokens in examples:
        audit.check(tokens, example, tok, stop_ids, template_kwargs=template_kwargs)
        runs = masking.trained_runs(tokens.labels)
        assert len(runs) == len(tokens.turns)
        for (a, b), turn in zip(runs, tokens.turns, strict=True):
            out[turn] = decode(tok, tokens.input_ids[a:b])
    return out, examples, conversation


def trl_by_turn(name, messages, tokenizers, context=None):
    """{assistant message index: (TRL's trained text, whether TRL missed tokens of a split character)}.

    transformers maps the `{% generation %}` character span to tokens character by character, so of the
    byte tokens that spell one character (an emoji) only the first is marked: a known gap, repaired here
    (and named, class `trl_misses_split_character_tokens`) so the rest of the span can be compared.
    `context`: the row's `tools` and chat-template arguments, passed as TRL passes them.
    """
    tok, _ = tokenizers(name, "_training")
    context = context or {}
    text = tok.apply_chat_template(messages, tokenize=False, **context)
    marked = tok.apply_chat_template(
        messages, return_assistant_tokens_mask=True, return_dict=True, tokenize=True, **context
    )
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == len(marked["input_ids"])
    covered = {
        c for (a, b), m in zip(offsets, marked["assistant_masks"], strict=True) if m for c in range(a, b)
    }
    repaired = [
        bool(m) or (b > a and set(range(a, b)) <= covered)
        for (a, b), m in zip(offsets, marked["assistant_masks"], strict=True)
    ]
    labels = [i if m else -100 for i, m in zip(marked["input_ids"], repaired, strict=True)]
    runs = masking.trained_runs(labels)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(runs) == len(turns), f"TRL marks {len(runs)} runs for {len(turns)} assistant turns"
    return {
        turn: (decode(tok, marked["input_ids"][a:b]), not all(marked["assistant_masks"][a:b]))
        for turn, (a, b) in zip(turns, runs, strict=True)
    }


def classify(
    ours: str, theirs: str, *, before: str, stops: list[str], expanded: bool, full: str, content: str
):
    """The set of CLASSES that explain `theirs` != `ours`, or None when nothing does.

    `before`: the turn's own rendering up to where sftlib starts training; `full`: the whole
    conversation rendered by the model's template; `content`: the message.
    """
    found, text = set(), theirs
    cut = min((text.find(s) + len(s) for s in stops if s in text), default=len(text))
    if cut < len(text):
        found.add("trl_trains_after_stop")
        text = text[:cut]
    # TRL's span may start with text the model is given (a suffix of `before`); try each such split.
    for given in [0, *(k for k in range(1, len(text)) if before.endswith(text[:k]))]:
        rest = _explain(ours, text[given:], stops=stops, expanded=expanded, full=full, content=content)
        if rest is not None:
            return found | rest | ({"trl_trains_prompt_text"} if given else set())
    return None


def _explain(ours, text, *, stops, expanded, full, content):
    if text == ours:
        return set()
    ends = [s for s in stops if text.endswith(s)], [s for s in stops if ours.endswith(s)]
    if all(ends) and text[: -len(ends[0][0])] == ours[: -len(ends[1][0])]:
        return {"different_final_stop"}
    reasoning = content[: content.rindex("</think>") + len("</think>")] if "</think>" in content else None
    if reasoning and text == reasoning + ours:
        return {"training_template_keeps_reasoning"}
    if expanded and text in full:
        return {"history_rewritten"}
    return None


def check_against_trl(name, messages, tokenizers, stops, expected_drop=None, row=None, template_kwargs=None):
    """sftlib's labels for `messages` under template `name` equal TRL's marker masks, turn by turn, up to
    the named CLASSES; every sftlib invariant holds (masking.audit, run inside ours_by_turn). Texts are
    compared as the tokenizer reads them (decoded after encoding: Qwen's tokenizers normalize to NFC).
    `row` / `template_kwargs` as in ours_by_turn; TRL renders with the same tools and arguments.
    Returns ours_by_turn's result, or None for an expected drop."""
    try:
        ours, examples, cleaned = ours_by_turn(name, messages, tokenizers, row, template_kwargs)
    except DropExample as drop:
        assert expected_drop == drop.reason, drop
        return None
    assert expected_drop is None
    assert sorted(ours) == [i for i, m in enumerate(cleaned.messages) if m["role"] == "assistant"]
    context = rendering.template_context(row or {}, template_kwargs)
    theirs = trl_by_turn(name, cleaned.messages, tokenizers, context)
    tok, _ = tokenizers(name)

    def read(text):
        return decode(tok, tok(text, add_special_tokens=False)["input_ids"])

    full = read(tok.apply_chat_template(cleaned.messages, tokenize=False, **context))
    for turn, text in ours.items():
        rendered = masking.generation_turn(cleaned.messages, turn, tok, context)
        trl_text, split_character = theirs[turn]
        found = classify(
            text,
            trl_text,
            before=read(rendered.text[: rendered.start]),
            stops=stops,
            expanded=examples[0].expanded,
            full=full,
            content=read(cleaned.messages[turn]["content"]),
        )
        assert found is not None, f"turn {turn}: new kind of difference: ours {text!r}, TRL {trl_text!r}"
        found |= {"trl_misses_split_character_tokens"} if split_character else set()
        assert found <= set(CLASSES)
    return ours, examples, cleaned


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", TEXT_PAIRS)
def test_labels_equal_trl_marker_masks_up_to_named_differences(name, conversation, tokenizers):
    check_against_trl(
        name,
        CONVERSATIONS[conversation],
        tokenizers,
        STOPS.get(name, CHATML_STOPS),
        EXPECTED_DROPS.get((name, conversation)),
    )


def test_every_bundled_pair_is_covered_or_excluded_for_a_reason(tokenizers):
    assert set(TEXT_PAIRS) | NOT_TEXT_ONLY == set(PAIRS) and len(TEXT_PAIRS) >= 25
    for name in NOT_TEXT_ONLY:  # the exclusion holds: string content does not reach the rendering
        tok, _ = tokenizers(name)
        try:
            text = tok.apply_chat_template(chat("u Hi", "a Hello."), tokenize=False)
        except Exception:
            continue
        assert "Hello." not in text


@pytest.mark.parametrize(
    "name, expanded",
    [
        ("qwen3", True),
        ("gptoss", True),
        ("nemotron_3_nano", True),
        ("phi3", False),
        ("deepseek_r1_distill", False),
    ],
)
def test_templates_that_rewrite_history_are_expanded_and_others_are_not(name, expanded, tokenizers):
    ours, examples, _ = ours_by_turn(name, CONVERSATIONS["reasoning_in_content"], tokenizers)
    assert all(e.expanded == expanded for e in examples)
    assert len(examples) == (2 if expanded else 1)


def test_generated_scaffolding_is_trained_think_blocks_channels_and_both_cohere2_tokens(tokenizers):
    scaffold = CONVERSATIONS["scaffold_words"]
    ours, _, _ = ours_by_turn("qwen3", scaffold, tokenizers)
    assert ours[1] == "<think>\n\n</think>\n\nfinal<|im_end|>"  # Qwen3 generates the empty think block
    ours, _, _ = ours_by_turn("gptoss", scaffold, tokenizers)
    assert ours[1] == "<|channel|>final<|message|>final<|return|>"  # the answer, not the channel name
    ours, _, _ = ours_by_turn("cohere2", scaffold, tokenizers)
    assert ours[1] == "final<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
    ours, _, _ = ours_by_turn("llama3", scaffold, tokenizers)
    assert ours[1] == "final<|eot_id|>"


def test_audit_rejects_a_span_found_by_searching_for_the_answer_text(tokenizers):
    """The old rule located `final` by its first match after the prompt: gpt-oss's channel name."""
    tok, stop_ids = tokenizers("gptoss")
    messages = chat("u Say final.", "a final")
    example = {"messages": messages, "index": 7}
    (tokens,), _ = masking.tokenize_example(example, tok, stop_ids)
    turn = masking.generation_turn(messages, 1, tok)
    wrong_start = turn.text.index("final", turn.start)  # inside `<|channel|>final<|message|>`
    ids, offsets = masking.tokenize_at(turn.text, [wrong_start], tok)
    k = next(i for i, (a, _) in enumerate(offsets) if a == wrong_start)
    wrong = masking.Tokens(ids, [-100] * k + ids[k:], [1])
    assert masking.trained_runs(wrong.labels) != masking.trained_runs(tokens.labels)
    with pytest.raises(DropExample, match="does not start where the model's generation starts"):
        audit.check(wrong, example, tok, stop_ids)


def test_the_templates_trl_bundles_that_sftlib_names_are_there_with_their_training_variants():
    """sftlib reads TRL's bundled templates from its package data (no public list): this fails first
    when TRL moves or renames the ones sftlib's configs, docs and oracle name."""
    from sftlib.models import modeling

    bundled = modeling.bundled_chat_templates()
    assert {"qwen3", "qwen2_5", "llama3_1", "llama3", "gptoss"} <= set(bundled)
    assert all(path.is_file() and path.read_text().strip() for path in bundled.values())
    assert {"qwen3", "qwen2_5", "llama3"} <= {
        p.stem.removesuffix("_training") for p in TEMPLATES.glob("*_training.jinja")
    }
    assert modeling.chat_template_text("qwen3") == bundled["qwen3"].read_text()
