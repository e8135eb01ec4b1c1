"""Tool-call formats: each parser reads what its templates render, and a perfect model scores 100%.

- The format is chosen from the template: every TRL-bundled template either gets the parser of the
  format it writes, or is refused with an error (it renders no call, or raises on one).
- Each parser reads back, exactly, the calls the template itself renders: parallel calls, nested
  arguments, values of every JSON type, quotes in strings.
- The oracle: a "perfect model" that generates, turn by turn, what the template renders for a held-out
  conversation (tokenized and decoded again on the template's vocabulary, special tokens kept) goes
  through the real loop and scores 1.0 on calls and answers, through one, two rounds and parallel
  calls, on each family of templates; Llama 3.1 on the real Llama 3 vocabulary. The loop's chat,
  rendered by the template, is the conversation's own prompt at every round.
"""

import copy
import datetime as dt
import json
import re

import pytest
import vocabularies
from test_chat_templates import TEMPLATES, template_tokenizers

from sftlib.data import rendering
from sftlib.errors import BadToolCall, DropExample, SftlibError
from sftlib.inference import tool_formats, tool_loop
from sftlib.inference.generate import Generation
from sftlib.lessons import tool_task

FORMATS = {f.name: f for f in tool_formats.FORMATS}

# What each TRL-bundled template writes; None: refused (it renders no tool call, or raises on one).
EXPECTED = {
    **dict.fromkeys(["qwen2_5", "qwen3", "qwen3_instruct_2507", "qwen3_vl"], "hermes"),
    **dict.fromkeys(["qwen3_5_think", "qwen3_5_nothink", "qwen3_6", "qwen3_8"], "qwen_xml"),
    **dict.fromkeys(["nemotron_3_5_lightning", "nemotron_3_nano", "nemotron_3_super", "nemotron_3_ultra"], "qwen_xml"),
    "glm4moe": "glm4",
    "llama3_1": "llama3_json",
    "llama3_2": "llama3_json",
    "gptoss": "harmony",
    **dict.fromkeys(["gemma4", "gemma4_v2", "gemma4_v3", "gemma4_v4", "gemma4_v5", "diffusion_gemma"], "gemma4"),
    **dict.fromkeys(["lfm2_v2", "lfm2_2_5", "lfm2_2_5_v2", "lfm2_2_5_vl"], "pythonic"),
    "muse_glimmer": "atem",
    "deepseekv3": "deepseek_v3",
    **dict.fromkeys(
        ["cohere", "cohere2", "deepseek_r1_distill", "gemma", "gemma3", "lfm2", "llama3", "phi3", "phi3_5"], None
    ),
    **dict.fromkeys(["qwen2_5_vl", "idefics3", "llava_next", "smolvlm"], None),
}  # fmt: skip
ALL = sorted(p.name.removesuffix(".jinja") for p in TEMPLATES.glob("*.jinja") if "_training" not in p.name)
VOCABULARY = {name: vocab for vocab, names in vocabularies.TEMPLATES.items() for name in names}


def shift(date: str, days: int) -> str:
    """The ISO date `days` after `date` (a second tool, for chats of two rounds)."""
    return (dt.date.fromisoformat(date) + dt.timedelta(days=days)).isoformat()


TOOLS = {**tool_task.TOOLS, "shift": shift}
SHIFT = {
    "type": "function",
    "function": {
        "name": "shift",
        "description": "The date some days later.",
        "parameters": {
            "type": "object",
            "properties": {"date": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["date", "days"],
        },
    },
}
SCHEMAS = [*tool_task.TOOL_SCHEMAS, SHIFT]


@pytest.fixture(scope="module")
def template_tokenizer(tokenizer):
    """name -> a tokenizer with that template: the real Llama 3 / Qwen vocabulary for their templates,
    SmolLM2's with the template's control strings added as special tokens for the others."""
    smol, built = template_tokenizers(tokenizer), {}

    def get(name):
        if name not in VOCABULARY:
            return smol(name)[0]
        vocab = VOCABULARY[name]
        if vocab not in built:
            built[vocab] = vocabularies.build(vocab)
        tok = copy.copy(built[vocab])
        tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
        return tok

    return get


def test_every_bundled_template_is_expected():
    assert sorted(EXPECTED) == ALL


@pytest.mark.parametrize("name", ALL)
def test_the_parser_is_chosen_from_the_template_or_the_template_is_refused(name, template_tokenizer):
    tok = template_tokenizer(name)
    if EXPECTED[name] is None:
        with pytest.raises(
            SftlibError, match="does not render an assistant turn's tool calls|raises on a tool call"
        ):
            tool_formats.for_template(tok)
    else:
        assert tool_formats.for_template(tok).name == EXPECTED[name]


def test_a_template_in_an_unknown_format_is_refused_naming_what_it_writes(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{{ m.role }}: {% if m.tool_calls %}{% for c in m.tool_calls %}"
        "CALL {{ c.function.name }} WITH {{ c.function.arguments | tojson }};{% endfor %}"
        "{% else %}{{ m.content }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(SftlibError, match=r"writes tool calls as 'CALL sftlib_probe WITH \{.*no parser for"):
        tool_formats.for_template(tok)


# A call of every JSON type, nested, with quotes: typed back by the schema in the bare-text formats.
RICH_TOOL = {
    "type": "function",
    "function": {
        "name": "plan",
        "description": "Plan a trip.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "budget": {"type": "number"},
                "flexible": {"type": "boolean"},
                "stops": {"type": "array"},
                "when": {"type": "object"},
                "count": {"type": "string"},
            },
        },
    },
}
RICH_CALLS = [
    {"name": "plan", "arguments": {"city": 'Paris "Ville"', "days": 3, "budget": 1.5, "flexible": True}},
    {
        "name": "plan",
        "arguments": {"stops": ["Lyon", "Nice"], "when": {"from": "2021-03-05", "nights": 2}, "count": "7"},
    },
]
# Templates that render one call per turn only: the second call is its own turn there.
SINGLE_CALL = {"llama3_json", "harmony"}
# ATEM renders each of a turn's calls as its own message, ended by `<|eom|>`, a stop token.
ONE_CALL_PER_GENERATION = {"atem"}


@pytest.mark.parametrize("name", sorted(n for n, f in EXPECTED.items() if f))
def test_each_parser_reads_back_exactly_what_its_template_renders(name, template_tokenizer):
    tok = template_tokenizer(name)
    fmt = tool_formats.for_template(tok)
    batches = [[c] for c in RICH_CALLS] if fmt.name in SINGLE_CALL else [RICH_CALLS]
    for calls in batches:
        arguments = [c["arguments"] for c in calls]
        if name == "deepseekv3":  # its template takes arguments only as a JSON string
            arguments = [json.dumps(a) for a in arguments]
        turn = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": f"call{k}abcd", "type": "function", "function": {"name": c["name"], "arguments": a}}
                for k, (c, a) in enumerate(zip(calls, arguments, strict=True))
            ],
        }
        prompt = [{"role": "user", "content": "Plan it."}]
        context = {"tools": [RICH_TOOL]}
        given = rendering.render(tok, prompt, True, context)
        answered = rendering.render(tok, [*prompt, turn], False, context)
        written = (
            answered[len(given) :] if answered.startswith(given) else answered[answered.rfind("Plan it.") :]
        )
        read = fmt.calls(written, tool_formats.schemas_of([RICH_TOOL]))
        assert [c["function"] for c in read] == calls, written


def test_the_mistral_parser_reads_both_of_mistrals_forms_and_keeps_the_ids():
    """Mistral's templates are not among TRL's: its two shapes, as Mistral's tokenizers write them
    (`[TOOL_CALLS][{...}]` up to v7, `[TOOL_CALLS]NAME[ARGS]{...}` from v11, `[CALL_ID]` in v13)."""
    fmt = FORMATS["mistral"]
    listed = '[TOOL_CALLS][{"name": "weekday", "arguments": {"date": "2021-03-05"}, "id": "abcdefghi"}]</s>'
    assert fmt.calls(listed) == [
        {
            "type": "function",
            "id": "abcdefghi",
            "function": {"name": "weekday", "arguments": {"date": "2021-03-05"}},
        }
    ]
    named = (
        '[TOOL_CALLS]weekday[ARGS]{"date": "2021-03-05"}[TOOL_CALLS]shift[CALL_ID]k3P9z[ARGS]{"days": 2}</s>'
    )
    assert [(c.get("id"), c["function"]["name"]) for c in fmt.calls(named)] == [
        (None, "weekday"),
        ("k3P9z", "shift"),
    ]


def test_a_mistral_shaped_template_is_read_by_the_mistral_parser(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m.role == 'user' %}[INST]{{ m.content }}[/INST]"
        "{% elif m.tool_calls %}[TOOL_CALLS][{% for c in m.tool_calls %}{{ {'name': c.function.name, "
        "'arguments': c.function.arguments, 'id': c.id} | tojson }}{{ ', ' if not loop.last }}{% endfor %}]</s>"
        "{% else %}{{ m.content }}</s>{% endif %}{% endfor %}"
    )
    assert tool_formats.for_template(tok).name == "mistral"


@pytest.mark.parametrize(
    ("fmt", "text", "says"),
    [
        ("hermes", "<tool_call>\n{name: weekday}\n</tool_call>", "not JSON"),
        ("hermes", '<tool_call>{"arguments": {}}</tool_call>', "no function name"),
        ("hermes", '<tool_call>{"name": "weekday", "arguments": [1]}</tool_call>', "not a mapping"),
        ("hermes", '<tool_call>{"name": "weekday", "arguments": {"date": "2021-03-0', "unfinished"),
        ("qwen_xml", "<tool_call>\n<parameter=date>\nx\n</parameter>\n</tool_call>", "no <function=NAME>"),
        (
            "glm4",
            "<tool_call><arg_key>date</arg_key><arg_value>x</arg_value></tool_call>",
            "no function name",
        ),
        ("llama3_json", '{"name": "weekday", "parameters": {"date": ', "unfinished"),
        ("llama3_json", "<|python_tag|>[1, 2]<|eom_id|>", "not an object"),
        ("gemma4", '<|tool_call>call:weekday{date:<|"|>2021}<tool_call|>', "unclosed string"),
        ("pythonic", "<|tool_call_start|>[weekday('2021-03-05')]<|tool_call_end|>", "keyword arguments"),
        ("pythonic", "<|tool_call_start|>[weekday(date=open('x'))]<|tool_call_end|>", "not a literal"),
        ("harmony", " to=functions.weekday<|channel|>commentary json<|message|>{date}<|call|>", "not JSON"),
    ],
)
def test_a_malformed_call_is_named_never_guessed(fmt, text, says):
    with pytest.raises(BadToolCall, match=says):
        FORMATS[fmt].calls(text)


def test_a_pythonic_call_is_read_as_literals_and_never_run(tmp_path):
    planted = tmp_path / "ran"
    fmt = FORMATS["pythonic"]
    text = f"<|tool_call_start|>[weekday(date=__import__('pathlib').Path({str(planted)!r}).touch())]<|tool_call_end|>"
    with pytest.raises(BadToolCall, match="not a literal"):
        fmt.calls(text)
    assert not planted.exists()


def test_no_call_is_read_from_plain_answers_in_any_format():
    for fmt in tool_formats.FORMATS:
        assert fmt.calls("Friday") == [], fmt.name


# ------------------------------------------------------------------------------------- the oracle

ONE_CALL = "What day of the week was the fifth of March, 2021?"


def conversations() -> dict[str, list[dict]]:
    """Held-out shapes, each ending in the final answer: no call, one call, two rounds, parallel calls."""
    user = lambda text: {"role": "user", "content": text}  # noqa: E731

    def calls(*items, prefix):
        return [
            {"id": f"{prefix}{k}abcdefgh"[:9], "type": "function", "function": {"name": n, "arguments": a}}
            for k, (n, a) in enumerate(items)
        ]

    def results(turn):
        return [
            {
                "role": "tool",
                "tool_call_id": c["id"],
                "content": TOOLS[c["function"]["name"]](**c["function"]["arguments"]),
            }
            for c in turn["tool_calls"]
        ]

    one = {
        "role": "assistant",
        "content": "",
        "tool_calls": calls(("weekday", {"date": "2021-03-05"}), prefix="a"),
    }
    first = {
        "role": "assistant",
        "content": "",
        "tool_calls": calls(("shift", {"date": "2021-03-05", "days": 3}), prefix="b"),
    }
    second = {
        "role": "assistant",
        "content": "",
        "tool_calls": calls(("weekday", {"date": "2021-03-08"}), prefix="c"),
    }
    both = {
        "role": "assistant",
        "content": "",
        "tool_calls": calls(
            ("weekday", {"date": "2021-03-05"}), ("weekday", {"date": "2021-03-06"}), prefix="d"
        ),
    }
    return {
        "no_call": [user("Write this date as YYYY-MM-DD: March 5th, 2021"), {"role": "assistant", "content": "2021-03-05"}],
        "one_call": [user(ONE_CALL), one, *results(one), {"role": "assistant", "content": "Friday"}],
        "two_rounds": [
            user("What day of the week is three days after the fifth of March, 2021?"),
            first, *results(first), second, *results(second),
            {"role": "assistant", "content": "Monday"},
        ],
        "parallel": [
            user("Which days of the week were the fifth and sixth of March, 2021?"),
            both, *results(both), {"role": "assistant", "content": "Friday and Saturday"},
        ],
    }  # fmt: skip


# One template per format (and the lesson's own), on its real vocabulary where sftlib has it.
ORACLE_TEMPLATES = ["qwen2_5", "qwen3", "qwen3_5_nothink", "glm4moe", "llama3_1", "gptoss", "gemma4", "lfm2_v2", "muse_glimmer", "nemotron_3_nano"]  # fmt: skip


def perfect_model(tok, rows: dict[str, list[dict]], stops: list[str], seen: list):
    """A Generator that writes, for each chat, the template's rendering of the row's next assistant
    turn (up to and including the first stop token), tokenized and decoded on `tok`, special tokens
    kept. It checks that the loop's chat renders as the row's own prompt does, and records it."""

    def generate(chats, contexts, label):
        out = []
        for chat, context in zip(chats, contexts, strict=True):
            asked = next(m for m in chat if m["role"] == "user")  # rows are told apart by their question
            row = next(r for r in rows.values() if next(m for m in r if m["role"] == "user") == asked)
            turns = [i for i, m in enumerate(row) if m["role"] == "assistant"]
            i = turns[sum(m["role"] == "assistant" for m in chat)]
            assert rendering.render(tok, chat, True, context) == rendering.render(tok, row[:i], True, context)
            turn = rendering.render_turn(row, i, tok, context)
            written = turn.text[turn.start :]
            ends = [written.find(s) + len(s) for s in stops if s in written]
            ids = tok(written[: min(ends)] if ends else written, add_special_tokens=False)["input_ids"]
            raw = tok.decode(ids, skip_special_tokens=False)
            out.append(Generation(tok.decode(ids, skip_special_tokens=True), raw, cut_off=False))
            seen.append(raw)
        return out

    return generate


@pytest.mark.parametrize("name", ORACLE_TEMPLATES)
def test_a_perfect_model_scores_every_call_and_answer_through_the_real_loop(name, template_tokenizer):
    tok = template_tokenizer(name)
    fmt = tool_formats.for_template(tok)
    stops = vocabularies.VOCABULARIES[VOCABULARY[name]][2] if name in VOCABULARY else _stops(name)
    rows = conversations()
    context = {"tools": SCHEMAS}
    renderable = {}
    for shape, row in rows.items():  # a shape the template can't render is one it can't be asked
        try:
            [
                rendering.render_turn(row, i, tok, context)
                for i, m in enumerate(row)
                if m["role"] == "assistant"
            ]
        except DropExample:
            continue
        renderable[shape] = row
    assert {"no_call", "one_call", "two_rounds"} <= set(renderable), name
    if fmt.name in ONE_CALL_PER_GENERATION:  # a stop token ends each call: parallel calls are not one turn
        renderable.pop("parallel", None)
    elif fmt.name not in SINGLE_CALL:
        assert "parallel" in renderable, name
    prompts = [row[:1] for row in renderable.values()]
    seen = []
    transcripts = tool_loop.run_loop(
        prompts,
        [context] * len(prompts),
        TOOLS,
        fmt,
        perfect_model(tok, renderable, stops, seen),
        specials=tool_loop.special_tokens(tok),
    )
    expected = [tool_loop.expected_rounds(row, 1) for row in renderable.values()]
    s = tool_loop.score(transcripts, [r for r, _ in expected], [a for _, a in expected])
    assert (s["call_exact"], s["answer_exact"], s["no_tool_answer_exact"]) == (1.0, 1.0, 1.0), (
        [t.shown() for t in transcripts],
        seen,
    )
    assert (s["malformed"], s["cut_off"], s["unfinished"]) == (0, 0, 0)


def _stops(name: str) -> list[str]:
    from test_chat_templates import CHATML_STOPS, STOPS

    return STOPS.get(name, CHATML_STOPS)


def test_the_llama_parser_scores_the_tool_lessons_held_out_chats_on_the_real_llama_3_vocabulary(
    template_tokenizer,
):
    """The tool lesson's held-out rows under llama3_1, on Llama 3's own vocabulary: a model that writes
    what the template renders is read by the Llama parser and scores 1.0."""
    tok = template_tokenizer("llama3_1")
    fmt = tool_formats.for_template(tok)
    assert fmt.name == "llama3_json"
    _, test = tool_task.build_tool_rows(40, 16)
    rows = {str(k): r["messages"] for k, r in enumerate(test)}
    prompts, rounds, answers = [], [], []
    for row in rows.values():
        first = next(i for i, m in enumerate(row) if m["role"] == "assistant")
        prompts.append(row[:first])
        r, a = tool_loop.expected_rounds(row, first)
        rounds.append(r)
        answers.append(a)
    seen = []
    transcripts = tool_loop.run_loop(
        prompts,
        [{"tools": tool_task.TOOL_SCHEMAS}] * len(prompts),
        tool_task.TOOLS,
        fmt,
        perfect_model(tok, rows, vocabularies.VOCABULARIES["llama3"][2], seen),
        specials=tool_loop.special_tokens(tok),
    )
    s = tool_loop.score(transcripts, rounds, answers)
    assert s["tool_prompts"] > 0 and s["no_tool_prompts"] > 0
    assert (s["call_exact"], s["answer_exact"], s["no_tool_answer_exact"]) == (1.0, 1.0, 1.0)
    calls = [raw for raw in seen if "weekday" in raw]
    assert calls and all(
        re.fullmatch(r'\{"name": "weekday", "parameters": \{"date": "\d{4}-\d\d-\d\d"\}\}<\|eot_id\|>', raw)
        for raw in calls
    ), calls[:3]
