"""The mask oracle on agentic data: tool schemas, tool calls, tool results and reasoning (issue 20).

Every bundled text template masks conversations that call tools (one call, parallel calls, several
rounds, arguments as a mapping and as a JSON string, JSON results, a `tools` column) and that carry
reasoning (`reasoning_content`, `thinking`, alone and with tool calls). Each (template, conversation)
trains, or is the counted drop that EXPECTED_DROPS predicts from what the template can't render or
refuses. A trained row must:
- pass masking.audit, and have the tokens before each trained span equal `tokenizer(P_i)`, the prompt
  rendered for that turn with the row's tools and arguments, tokenized alone (as at inference);
- equal TRL's `{% generation %}` masks up to the named CLASSES of test_chat_templates.py, where TRL
  bundles a training template (or the template carries the markers itself);
- train each turn's tool calls (function name, argument names and values), reasoning and answer, and
  never the tool results, the schemas or the system text.
Templates written for Llama 3 and Qwen run on those vocabularies (tests/vocabularies.py), the others on
SmolLM2's tokenizer with the template's control strings added (test_chat_templates.template_tokenizers).
Rows that masking gets wrong today are listed in BUGS: their tests assert the right outcome and are
expected to fail until masking is fixed.
"""

import copy
import json
import re
from pathlib import Path

import pytest
import vocabularies
from datasets import Dataset
from test_chat_templates import (
    CHATML_STOPS,
    NOT_TEXT_ONLY,
    STOPS,
    TEMPLATES,
    check_against_trl,
    decode,
    ours_by_turn,
    template_tokenizers,
)

from sftlib.data import chat, masking, rendering, sources
from sftlib.errors import DropExample

SYSTEM = "You are a concise weather assistant."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather conditions for one city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local wall-clock time in an IANA timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "e.g. Europe/Paris"}},
            "required": ["timezone"],
        },
    },
}


def user(text):
    return {"role": "user", "content": text}


def calls(*calls, **reasoning):
    """An assistant turn that calls tools, content empty (as OpenAI exports it)."""
    return {"role": "assistant", "content": "", "tool_calls": list(calls), **reasoning}


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def result(content: dict):
    return {"role": "tool", "content": json.dumps(content)}


def answer(text, **reasoning):
    return {"role": "assistant", "content": text, **reasoning}


# name -> (messages, the row's template columns, what the row carries: keys of FEATURES)
CONVERSATIONS = {
    "one_tool_call": (
        [
            {"role": "system", "content": SYSTEM},
            user("Weather in Paris?"),
            calls({**call("get_weather", {"city": "Paris"}), "id": "call_0"}),
            {**result({"temp_c": 18, "sky": "overcast"}), "tool_call_id": "call_0", "name": "get_weather"},
            answer("It is 18 C in Paris."),
        ],
        {"tools": [WEATHER]},
        {"system", "tools"},
    ),
    "parallel_tool_calls": (
        [
            user("Weather in Paris and the time in Tokyo?"),
            calls(call("get_weather", {"city": "Paris"}), call("get_time", {"timezone": "Asia/Tokyo"})),
            result({"temp_c": 18, "sky": "overcast"}),
            result({"local_time": "21:04"}),
            answer("18 C in Paris; 21:04 in Tokyo."),
        ],
        {"tools": [WEATHER, CLOCK]},
        {"tools", "parallel_calls"},
    ),
    "parallel_calls_to_one_function": (
        [
            user("Weather in Paris and in Rome?"),
            calls(call("get_weather", {"city": "Paris"}), call("get_weather", {"city": "Rome"})),
            {"role": "tool", "content": "Paris: 18 C, overcast"},
            {"role": "tool", "content": "Rome: 25 C, clear"},
            answer("18 C in Paris, 25 C in Rome."),
        ],
        {"tools": [WEATHER]},
        {"tools", "parallel_calls"},
    ),
    "several_tool_rounds": (
        [
            user("Weather in Oslo, and what time is it there?"),
            calls(call("get_weather", {"city": "Oslo"})),
            result({"temp_c": 3, "sky": "snow"}),
            calls(call("get_time", {"timezone": "Europe/Oslo"})),
            result({"local_time": "08:15"}),
            answer("3 C at 08:15 in Oslo."),
            user("And in Lima?"),
            calls(call("get_weather", {"city": "Lima"})),
            result({"temp_c": 20, "sky": "haze"}),
            answer("20 C in Lima."),
        ],
        {"tools": [WEATHER, CLOCK]},
        {"tools"},
    ),
    "arguments_as_json_string": (
        [
            user("Weather in Rome?"),
            calls({"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}),
            result({"temp_c": 25, "sky": "clear"}),
            answer("25 C in Rome."),
        ],
        {"tools": [WEATHER]},
        {"tools"},
    ),
    "reasoning_content": (
        [
            user("What is 2+2?"),
            answer("4", reasoning_content="Two plus two makes four."),
            user("Times 3?"),
            answer("12", reasoning_content="Four times three is twelve."),
        ],
        {},
        {"reasoning"},
    ),
    "thinking": (
        [
            user("What is 2+2?"),
            answer("4", thinking="Two plus two makes four."),
            user("Times 3?"),
            answer("12", thinking="Four times three is twelve."),
        ],
        {},
        {"reasoning"},
    ),
    "reasoning_and_tool_call": (
        [
            user("Weather in Paris?"),
            calls(call("get_weather", {"city": "Paris"}), reasoning_content="The weather tool knows this."),
            result({"temp_c": 18, "sky": "overcast"}),
            answer("It is 18 C in Paris.", reasoning_content="The tool reported eighteen degrees."),
        ],
        {"tools": [WEATHER]},
        {"tools", "reasoning", "reasoning_with_tool_calls"},
    ),
    "thinking_over_tool_rounds": (
        [
            user("Weather in Oslo?"),
            calls(call("get_weather", {"city": "Oslo"}), thinking="Look up Oslo first."),
            result({"temp_c": 3, "sky": "snow"}),
            answer("3 C in Oslo."),
            user("And Lima?"),
            calls(call("get_weather", {"city": "Lima"}), thinking="Now look up Lima."),
            result({"temp_c": 20, "sky": "haze"}),
            answer("20 C in Lima."),
        ],
        {"tools": [WEATHER]},
        {"tools", "reasoning_with_tool_calls"},
    ),
}
FEATURES = {
    "system": "a system message",
    "tools": "tool schemas, tool calls and tool results",
    "parallel_calls": "several tool calls in one assistant turn",
    "reasoning": "reasoning on an answer turn",
    "reasoning_with_tool_calls": "reasoning on a turn that calls tools",
}

ALL = sorted(
    p.stem
    for p in TEMPLATES.glob("*.jinja")
    if not p.stem.endswith("_training") and p.stem not in NOT_TEXT_ONLY
)
NO_TOOLS = ["cohere", "cohere2", "gemma", "gemma3", "llama3", "phi3", "phi3_5", "qwen2_5_vl"]
NO_REASONING = [
    *NO_TOOLS,
    *("deepseek_r1_distill", "deepseekv3", "gemma4_v2", "lfm2", "lfm2_v2", "llama3_1", "llama3_2"),
    *("qwen2_5", "qwen3_instruct_2507", "qwen3_vl"),
]
# (template, feature) -> (drop reason, what its detail says, why): a row that carries the feature is that
# drop. The first that applies, in ORDER: the template's own error, a history it rewrites, a field it leaves out.
NOT_RENDERED_TOOLS = ("not_rendered", "tool call 'get_")
NOT_RENDERED_REASONING = ("not_rendered", "(reasoning_content|thinking) of assistant turn")
EXPECTED_DROPS = {
    ("gemma", "system"): ("template_error", "System role not supported", "Gemma has no system role"),
    ("deepseekv3", "tools"): (
        "template_error",
        "can only concatenate str",
        "the template concatenates `arguments` as a JSON string; rows carry them parsed (as the others read them)",
    ),
    **dict.fromkeys(
        [("llama3_1", "parallel_calls"), ("llama3_2", "parallel_calls")],
        ("template_error", "only supports single tool-calls", "Llama 3.1/3.2 take one tool call per turn"),
    ),
    ("gptoss", "reasoning_with_tool_calls"): (
        "history_changes",
        "renders differently before its generation prompt",
        "gpt-oss renders a tool call's analysis in the next turn's prompt, and drops it once a final answer "
        "follows: the answered conversation differs before that turn's generation prompt",
    ),
    **{(t, "tools"): (*NOT_RENDERED_TOOLS, "no tool support") for t in NO_TOOLS},
    ("deepseek_r1_distill", "tools"): (
        *NOT_RENDERED_TOOLS,
        "tool calls are left out when a turn has content",
    ),
    ("lfm2", "tools"): (*NOT_RENDERED_TOOLS, "LFM2's first template never reads `tool_calls`"),
    ("gptoss", "parallel_calls"): (*NOT_RENDERED_TOOLS, "gpt-oss renders a turn's first call"),
    # Muse Glimmer writes a turn as several messages, each ended by the stop token `<|eom|>` (reasoning
    # `to=self`, one message per call): generation stops at the first, so nothing after it is generated.
    ("muse_glimmer", "parallel_calls"): (*NOT_RENDERED_TOOLS, "each call is a message ended by <|eom|>"),
    ("muse_glimmer", "reasoning"): (  # what follows the reasoning: the answer, or an earlier turn's call
        "not_rendered",
        r"(the content|tool call 'get_\w+') of assistant turn",
        "reasoning is a message ended by <|eom|>",
    ),
    ("muse_glimmer", "reasoning_with_tool_calls"): (
        *NOT_RENDERED_TOOLS,
        "reasoning is a message ended by <|eom|>",
    ),
    **{(t, "reasoning"): (*NOT_RENDERED_REASONING, "no reasoning field") for t in NO_REASONING},
    **{
        (t, "reasoning_with_tool_calls"): (*NOT_RENDERED_REASONING, "no reasoning field")
        for t in NO_REASONING
    },
    **dict.fromkeys(
        [("gemma4", "reasoning"), ("gemma4_v3", "reasoning"), ("gemma4_v4", "reasoning")],
        (*NOT_RENDERED_REASONING, "Gemma 4 before v5 renders reasoning only on turns that call tools"),
    ),
}
ORDER = ("template_error", "history_changes", "not_rendered")
# Masking bugs found by this suite: (template, conversation) -> what goes wrong. Each row's test asserts
# the right outcome and is a strict xfail until masking is fixed. None is known today.
BUGS: dict[tuple[str, str], str] = {}
# Templates that carry TRL's `{% generation %}` markers themselves (LFM2.5): TRL masks with them as they are.
MARKED = {
    name
    for name in ALL
    if re.search(r"{%-?\s*generation\s*-?%}", (TEMPLATES / f"{name}.jinja").read_text())
    and not (TEMPLATES / f"{name}_training.jinja").is_file()
}
VOCABULARY = {name: vocab for vocab, names in vocabularies.TEMPLATES.items() for name in names}


def expected_drop(name, conversation):
    """(reason, detail pattern, why) of the drop EXPECTED_DROPS predicts for this row, or None: it trains."""
    features = CONVERSATIONS[conversation][2]
    found = [EXPECTED_DROPS[name, f] for f in sorted(features) if (name, f) in EXPECTED_DROPS]
    return min(found, key=lambda d: ORDER.index(d[0]), default=None)


@pytest.fixture(scope="module")
def agentic_tokenizers(tokenizer):
    """template name -> a getter (name, variant) -> (tokenizer, stop ids) on the template's vocabulary."""
    smol, built, cache = template_tokenizers(tokenizer), {}, {}

    def real(vocab):
        def get(name, variant=""):
            if (name, variant) not in cache:
                if vocab not in built:
                    built[vocab] = vocabularies.build(vocab)
                tok = copy.copy(built[vocab])  # masking never changes a vocabulary: copies share it
                tok.chat_template = (TEMPLATES / f"{name}{variant}.jinja").read_text()
                cache[name, variant] = tok, vocabularies.stop_ids(vocab, tok)
            return cache[name, variant]

        return get

    def for_template(name):
        get = real(VOCABULARY[name]) if name in VOCABULARY else smol
        if name in MARKED:  # TRL masks with the template itself
            return lambda n, variant="": get(n, "" if variant == "_training" else variant)
        return get

    return for_template


def stop_strings(name):
    return (
        vocabularies.VOCABULARIES[VOCABULARY[name]][2]
        if name in VOCABULARY
        else STOPS.get(name, CHATML_STOPS)
    )


def cases():
    for name in ALL:
        for conversation in sorted(CONVERSATIONS):
            bug = BUGS.get((name, conversation))
            marks = [pytest.mark.xfail(strict=True, reason=f"masking bug: {bug}")] if bug else []
            yield pytest.param(name, conversation, marks=marks, id=f"{name}-{conversation}")


@pytest.mark.parametrize("name, conversation", cases())
def test_agentic_rows_train_tool_calls_and_reasoning_or_are_the_predicted_drop(
    name, conversation, agentic_tokenizers
):
    messages, row, _ = CONVERSATIONS[conversation]
    tokenizers = agentic_tokenizers(name)
    drop = expected_drop(name, conversation)
    if drop:
        with pytest.raises(DropExample) as caught:
            ours_by_turn(name, messages, tokenizers, row)
        assert caught.value.reason == drop[0] and re.search(drop[1], caught.value.detail), caught.value
        return
    if (TEMPLATES / f"{name}_training.jinja").is_file() or name in MARKED:
        ours, examples, cleaned = check_against_trl(name, messages, tokenizers, stop_strings(name), row=row)
    else:
        ours, examples, cleaned = ours_by_turn(name, messages, tokenizers, row)
    tok, _ = tokenizers(name)
    context = rendering.template_context(row)
    history_as_at_inference(examples, cleaned.messages, tok, context)
    trained_is_the_turn_and_nothing_given(ours, cleaned.messages, row)


def history_as_at_inference(examples, messages, tok, context):
    """The tokens before each trained span are the turn's prompt P_i tokenized alone (where Q starts with P)."""
    for tokens in examples:
        for (a, _), turn in zip(masking.trained_runs(tokens.labels), tokens.turns, strict=True):
            prompt = tok.apply_chat_template(
                messages[:turn], tokenize=False, add_generation_prompt=True, **context
            )
            answered = tok.apply_chat_template(messages[: turn + 1], tokenize=False, **context)
            if answered.startswith(prompt):  # (a prefill template starts inside P: checked by the audit)
                assert tokens.input_ids[:a] == tok(prompt, add_special_tokens=False)["input_ids"], turn


def trained_is_the_turn_and_nothing_given(ours, messages, row):
    """Each trained turn holds its tool calls (name, argument names and values), reasoning and answer; no
    trained text holds a tool result, a schema's description or the system text."""
    given = [SYSTEM] + [t["function"]["description"] for t in row.get("tools") or []]
    for m in messages:
        if m["role"] in chat.TOOL_ROLES:  # as written, and as `tojson` writes it (gpt-oss, Llama 3.1)
            given += [m["content"], json.dumps(m["content"])]
            if m["content"].startswith("{"):
                given += [json.dumps(k) for k in json.loads(m["content"])]
    for turn, text in ours.items():
        message = messages[turn]
        for c in message.get("tool_calls") or []:
            function = c["function"]
            for part in (function["name"], *function["arguments"], *function["arguments"].values()):
                assert part in text, f"turn {turn}: {part!r} of the tool call is not trained: {text!r}"
        reasoning = chat.reasoning(message)
        assert reasoning is None or reasoning[1] in text, f"turn {turn}: reasoning not trained: {text!r}"
        assert message["content"] in text
        leaked = [g for g in given if g in text]
        assert not leaked, f"turn {turn} trains given text {leaked}: {text!r}"


def test_every_expected_drop_and_bug_names_a_bundled_template_and_a_feature():
    assert {t for t, _ in EXPECTED_DROPS} <= set(ALL) and {f for _, f in EXPECTED_DROPS} <= set(FEATURES)
    assert {t for t, _ in BUGS} <= set(ALL) and {c for _, c in BUGS} <= set(CONVERSATIONS)
    covered = {f for _, _, features in CONVERSATIONS.values() for f in features}
    assert covered == set(FEATURES)


def test_the_trained_text_check_catches_a_lost_call_lost_reasoning_and_a_trained_result():
    """The property check of the matrix can fail: each of these trained texts breaks it."""
    messages, row, _ = CONVERSATIONS["reasoning_and_tool_call"]
    good = {
        1: '<think>The weather tool knows this.</think>{"name": "get_weather", "arguments": {"city": "Paris"}}',
        3: "<think>The tool reported eighteen degrees.</think>It is 18 C in Paris.",
    }
    trained_is_the_turn_and_nothing_given(good, messages, row)
    for turn, bad in [
        (1, good[1].replace("Paris", "Rome")),  # the call's argument value is not the row's
        (1, good[1].replace("The weather tool", "A tool")),  # the reasoning is not the row's
        (3, messages[2]["content"] + good[3]),  # the tool result is trained
        (3, good[3] + "Current weather conditions for one city."),  # the schema is trained
    ]:
        with pytest.raises(AssertionError):
            trained_is_the_turn_and_nothing_given({**good, turn: bad}, messages, row)


def test_not_rendered_names_the_field_the_template_leaves_out(agentic_tokenizers):
    """Reasoning under Llama 3 and tool calls under templates without tool support: the row is not trained
    as if it did not hold the field, and the drop says which field."""
    cases = [
        ("llama3", "reasoning_content", "reasoning_content of assistant turn 1"),
        ("llama3", "thinking", "thinking of assistant turn 1"),
        ("llama3", "one_tool_call", "tool call 'get_weather' of assistant turn 2"),
        ("gemma3", "parallel_tool_calls", "the tool schema(s) get_weather, get_time"),
        ("phi3", "arguments_as_json_string", "tool call 'get_weather'"),
        ("qwen2_5", "reasoning_and_tool_call", "reasoning_content of assistant turn 1"),
    ]
    for name, conversation, field in cases:
        messages, row, _ = CONVERSATIONS[conversation]
        with pytest.raises(DropExample, match="not_rendered") as caught:
            ours_by_turn(name, messages, agentic_tokenizers(name), row)
        assert field in caught.value.detail


@pytest.mark.parametrize(
    "name, conversation, expansion",
    [
        ("qwen3", "reasoning_content", masking.RENDERS_HISTORY),  # earlier reasoning dropped
        ("qwen3", "reasoning_and_tool_call", ""),  # one tool loop: its reasoning stays
        ("qwen3", "thinking_over_tool_rounds", masking.RENDERS_HISTORY),  # the first loop's reasoning goes
        ("qwen3_8", "reasoning_content", ""),  # keeps reasoning in history
        ("gptoss", "thinking", masking.RENDERS_HISTORY),
        ("nemotron_3_nano", "reasoning_content", masking.RENDERS_HISTORY),
        ("gemma4_v5", "thinking_over_tool_rounds", masking.RENDERS_HISTORY),
    ],
)
def test_reasoning_the_template_drops_from_history_is_trained_where_it_was_generated(
    name, conversation, expansion, agentic_tokenizers
):
    """Expansion is not loss: every turn's reasoning is trained in that turn's own example."""
    messages, row, _ = CONVERSATIONS[conversation]
    ours, examples, cleaned = ours_by_turn(name, messages, agentic_tokenizers(name), row)
    assert {e.expansion for e in examples} == {expansion}
    for turn, text in ours.items():
        found = chat.reasoning(cleaned.messages[turn])
        assert found is None or found[1] in text


def test_sharegpt_function_call_and_observation_train_as_the_openai_row(agentic_tokenizers):
    """The glaive / LLaMA-Factory shape, with a `tools` column written as a JSON string, normalizes to
    the OpenAI row and masks to the same tokens."""
    messages, row, _ = CONVERSATIONS["one_tool_call"]
    sharegpt = {
        "conversations": [
            {"from": "system", "value": SYSTEM},
            {"from": "human", "value": "Weather in Paris?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}),
            },
            {"from": "observation", "value": messages[3]["content"]},
            {"from": "gpt", "value": "It is 18 C in Paris."},
        ],
        "tools": json.dumps(row["tools"]),
    }
    (normalized,) = sources.normalize(Dataset.from_list([sharegpt]), "sharegpt").to_list()
    tok, stop_ids = agentic_tokenizers("qwen3")("qwen3")
    ours, _ = masking.tokenize_example(normalized, tok, stop_ids)
    theirs, _ = masking.tokenize_example({"messages": messages, "index": 0, **row}, tok, stop_ids)
    assert [(e.input_ids, e.labels) for e in ours] == [(e.input_ids, e.labels) for e in theirs]
    trained = [decode(tok, e.input_ids[a:b]) for e in ours for a, b in masking.trained_runs(e.labels)]
    assert '"name": "get_weather", "arguments": {"city": "Paris"}' in trained[0]


@pytest.mark.parametrize(
    "row_kwargs, config_kwargs",
    [({"enable_thinking": False}, None), (None, {"enable_thinking": False})],
)
def test_chat_template_kwargs_per_row_and_per_config_reach_the_template(
    row_kwargs, config_kwargs, agentic_tokenizers
):
    """Qwen3 with thinking off: the prompt carries the empty think block, so it is given, not trained;
    TRL, given the same arguments, marks the same tokens (up to the named classes)."""
    messages, row, _ = CONVERSATIONS["one_tool_call"]
    row = {**row, **({"chat_template_kwargs": row_kwargs} if row_kwargs else {})}
    tokenizers = agentic_tokenizers("qwen3")
    ours, _, _ = check_against_trl(
        "qwen3", messages, tokenizers, stop_strings("qwen3"), None, row, config_kwargs
    )
    assert ours[2].startswith("<tool_call>") and ours[4] == "It is 18 C in Paris.<|im_end|>"
    thinking, _, _ = ours_by_turn("qwen3", messages, tokenizers, {**row, "chat_template_kwargs": {}}, None)
    assert thinking[4] == "<think>\n\n</think>\n\nIt is 18 C in Paris.<|im_end|>"


def test_a_row_kwarg_overrides_the_configured_one(agentic_tokenizers):
    messages, row, _ = CONVERSATIONS["one_tool_call"]
    row = {**row, "chat_template_kwargs": {"enable_thinking": True}}
    ours, _, _ = ours_by_turn("qwen3", messages, agentic_tokenizers("qwen3"), row, {"enable_thinking": False})
    assert ours[4].startswith("<think>")


# The tool lesson's own template (configs/tool_lesson.yaml): Qwen2.5's messages and generation markers,
# tools listed in a line each. Its masks are checked as a bundled template's are, against its markers.
LESSON_TEMPLATE = Path(__file__).resolve().parents[1] / "configs/templates/chatml_tools.jinja"


@pytest.fixture(scope="module")
def lesson_tokenizers(tokenizer):
    """vocabulary -> a getter (name, variant) -> (tokenizer with the lesson's template, stop ids)."""
    cache = {}

    def on(vocabulary):
        if vocabulary not in cache:
            tok = copy.deepcopy(tokenizer) if vocabulary == "smollm2" else vocabularies.build(vocabulary)
            tok.chat_template = LESSON_TEMPLATE.read_text()
            cache[vocabulary] = tok, [tok.convert_tokens_to_ids(s) for s in CHATML_STOPS]
        return lambda name, variant="": cache[vocabulary]

    return on


@pytest.mark.parametrize("vocabulary", ["smollm2", "qwen3"])  # SmolLM2's, and Qwen's real vocabulary
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_the_tool_lessons_template_masks_as_its_markers_do_and_trains_no_tool_list(
    conversation, vocabulary, lesson_tokenizers
):
    lesson_tokenizers = lesson_tokenizers(vocabulary)
    messages, row, _ = CONVERSATIONS[conversation]
    drop = expected_drop("qwen2_5", conversation)  # the same messages as qwen2_5: the same drops
    if drop:
        with pytest.raises(DropExample) as caught:
            ours_by_turn("chatml_tools", messages, lesson_tokenizers, row)
        assert caught.value.reason == drop[0] and re.search(drop[1], caught.value.detail), caught.value
        return
    ours, examples, cleaned = check_against_trl(
        "chatml_tools", messages, lesson_tokenizers, CHATML_STOPS, row=row
    )
    tok, _ = lesson_tokenizers("chatml_tools")
    context = rendering.template_context(row)
    history_as_at_inference(examples, cleaned.messages, tok, context)
    trained_is_the_turn_and_nothing_given(ours, cleaned.messages, row)
    if row.get("tools"):
        text = tok.apply_chat_template(cleaned.messages, tokenize=False, **context)
        listed = text[text.index("<tools>") : text.index("</tools>")]
        assert all(t["function"]["name"] + "(" in listed for t in row["tools"]), listed
        assert not any("<tools>" in trained for trained in ours.values())


def test_nested_tool_call_arguments_are_checked_leaf_by_leaf():
    """A template that writes a call's arguments only in part (say, the outer keys but not a nested
    list) has not rendered the call: each key and value is looked for, at every depth."""
    arguments = {"filter": {"city": "Paris", "days": [3, 14]}, "unit": "C"}
    whole = (
        '{"name": "get_weather", "arguments": {"filter": {"city": "Paris", "days": [3, 14]}, "unit": "C"}}'
    )
    assert rendering._shown(arguments, whole)
    assert not rendering._shown(arguments, whole.replace("[3, 14]", "[3]"))  # one leaf left out
    assert not rendering._shown(arguments, whole.replace('"city": "Paris", ', ""))  # one nested key left out
    assert rendering._shown({"q": 'say "hi"'}, '{"q": "say \\"hi\\""}')  # tojson escapes, still shown
