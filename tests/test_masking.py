"""Labels for every format and chat template (sftlib.data.masking, sftlib.data.dataset): by rendering, never by search.

The oracle comparison with TRL's marker templates is tests/test_chat_templates.py.
"""

import copy
import dataclasses
import importlib.resources
import json
import random
from pathlib import Path

import datasets
import pytest
import vocabularies

from sftlib.config import DatasetConfig, ModelConfig, RunConfig
from sftlib.data import audit, conversations, dataset, export, label_cache, loader, masking, reports, sources
from sftlib.errors import DropExample, SftlibError
from sftlib.models import modeling
from sftlib.views import report, tokens

FIXTURES = Path(__file__).parent / "fixtures" / "data"
# TRL exports no list of its bundled templates (TRL 1.16): read from its package data, as
# sftlib.models.modeling.bundled_chat_templates does.
TRL_TEMPLATES = Path(str(importlib.resources.files("trl") / "chat_templates"))
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TINY = "embedded:tiny-random-llama"
FORMAT_FIXTURES = [
    "prompt_completion.jsonl",
    "prompt_completion_chat.jsonl",
    "alpaca.jsonl",
    "alpaca.csv",
    "messages.jsonl",
    "sharegpt.jsonl",
    "text.jsonl",
]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path_factory, monkeypatch):
    """Keep datasets' cache out of the user's home."""
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


def config(name, max_seq_length=512, chat_template=None, **dataset_kwargs):
    path = name if "/" in name else str(FIXTURES / name)
    return RunConfig(
        model=ModelConfig(path=TINY, max_seq_length=max_seq_length, chat_template=chat_template),
        dataset=DatasetConfig(name=path, **dataset_kwargs),
    )


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def trained_texts(tokenizer, row):
    ids, labels = (
        (row.input_ids, row.labels) if isinstance(row, masking.Tokens) else (row["input_ids"], row["labels"])
    )
    return [decode(tokenizer, ids[a:b]) for a, b in masking.trained_runs(labels)]


def one(example, tokenizer):
    """The single example `tokenize_example` makes of a conversation that needs no expansion, audited."""
    (tokens,), _ = masking.tokenize_example({"index": 0, **example}, tokenizer)
    audit.check(tokens, {"index": 0, **example}, tokenizer)
    return tokens


def chat(*turns):
    roles = {"s": "system", "u": "user", "a": "assistant"}
    return [{"role": roles[t[0]], "content": t[2:]} for t in turns]


def with_template(tokenizer, text):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = text
    return tok


# --------------------------------------------------------------------------- every format


@pytest.mark.parametrize("fixture", FORMAT_FIXTURES)
def test_every_label_is_ignored_or_its_input_token_and_both_occur(fixture, tokenizer):
    prepared = dataset.prepare(config(fixture), tokenizer)
    rows = list(prepared.train)
    assert rows and prepared.report["train"]["kept"] == prepared.report["train"]["rows"]
    for row in rows:
        assert len(row["labels"]) == len(row["input_ids"])
        assert all(label in (-100, tok) for tok, label in zip(row["input_ids"], row["labels"], strict=True))
        assert any(label != -100 for label in row["labels"])
        assert (
            row["untruncated_trained_tokens"]
            == row["num_trained_tokens"]
            == sum(x != -100 for x in row["labels"])
        )
    if prepared.format != "text":
        assert all(-100 in row["labels"] for row in rows)
    stats = dataset.check_invariants(prepared.train, tokenizer)
    assert stats["examples"] == len(rows) and len(stats["trained_fraction"]) == len(rows)


@pytest.mark.parametrize(
    "fixture", [f for f in FORMAT_FIXTURES if f != "prompt_completion.jsonl" and f != "text.jsonl"]
)
def test_every_assistant_turn_decodes_back_to_its_content_and_im_end(fixture, tokenizer):
    prepared = dataset.prepare(config(fixture), tokenizer)
    raw = sources.load_raw(DatasetConfig(name=str(FIXTURES / fixture)))["train"]
    norm = sources.normalize(raw, prepared.format)
    for row in prepared.train:
        conversation = conversations.conversation(norm[row["index"]])
        expected = [
            m["content"] + "<|im_end|>"
            for m in conversation.messages[conversation.first_trainable :]
            if m["role"] == "assistant"
        ]
        assert trained_texts(tokenizer, row) == expected


def test_multi_turn_messages_train_exactly_each_assistant_turn_and_its_im_end(tokenizer):
    rows = list(dataset.prepare(config("messages.jsonl"), tokenizer).train)
    assert trained_texts(tokenizer, rows[0]) == ["Paris.<|im_end|>", "Rome.<|im_end|>"]
    assert trained_texts(tokenizer, rows[1]) == [
        "4<|im_end|>",
        "12<|im_end|>",
        "10, since 12 - 2 = 10.\nDone.<|im_end|>",
    ]
    for row in rows:  # nothing else: the untrained tokens are the whole rendering minus those turns
        untrained = decode(
            tokenizer, [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100]
        )
        full = decode(tokenizer, row["input_ids"])
        for text in trained_texts(tokenizer, row):
            full = full.replace(text, "", 1)
        assert untrained == full


def test_multi_turn_sharegpt_trains_each_gpt_turn_verbatim(tokenizer):
    rows = list(dataset.prepare(config("sharegpt.jsonl"), tokenizer).train)
    assert trained_texts(tokenizer, rows[0]) == ["Paris.<|im_end|>", "Rome.<|im_end|>"]
    assert trained_texts(tokenizer, rows[1]) == ["4<|im_end|>", " 12 <|im_end|>"]


def test_system_prompt_user_turns_and_scaffolding_are_never_trained(tokenizer):
    out = one({"messages": chat("u Hi", "a Hello.", "u Bye", "a Bye!")}, tokenizer)
    view = export.token_view(out.input_ids, out.labels, tokenizer)
    trained = "".join(text for text, is_trained, _ in view if is_trained)
    assert trained == "Hello.<|im_end|>Bye!<|im_end|>"
    untrained = "".join(text for text, is_trained, _ in view if not is_trained)
    assert SMOL_SYSTEM in untrained  # the template's injected default system prompt
    assert untrained.count("<|im_start|>") == 5  # every turn header, untrained
    assert not any(
        is_trained and text == "\n" for text, is_trained, _ in view
    )  # nor the "\n" after <|im_end|>


def test_explicit_system_message_is_not_trained(tokenizer):
    out = one({"messages": chat("s Be brief.", "u Hi", "a Hello.")}, tokenizer)
    assert trained_texts(tokenizer, out) == ["Hello.<|im_end|>"]
    assert SMOL_SYSTEM not in decode(tokenizer, out.input_ids)


def test_trained_eos_survives_when_pad_equals_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    out = one({"messages": chat("u Hi", "a Hello.")}, tokenizer)
    assert out.labels[-2] == tokenizer.eos_token_id  # <|im_end|>, then the untrained "\n"
    assert out.labels[-1] == -100


def test_last_assistant_trains_only_the_final_turn(tokenizer):
    prepared = dataset.prepare(config("messages.jsonl", train_on="last_assistant"), tokenizer)
    rows = list(prepared.train)
    assert trained_texts(tokenizer, rows[0]) == ["Rome.<|im_end|>"]
    assert trained_texts(tokenizer, rows[1]) == ["10, since 12 - 2 = 10.\nDone.<|im_end|>"]


def test_conversational_prompt_completion_trains_only_completion_turns(tokenizer):
    example = {"prompt": chat("u Say hi.", "a Hi!", "u Again."), "completion": chat("a HI!")}
    assert trained_texts(tokenizer, one(example, tokenizer)) == ["HI!<|im_end|>"]


def test_chat_input_ids_equal_apply_chat_template_ids(tokenizer):
    messages = chat("u What?", "a This.", "u Why?", "a Because.")
    out = one({"messages": messages}, tokenizer)
    assert (
        out.input_ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    )


def test_text_trains_every_token_and_ends_with_eos(tokenizer):
    (out,), _ = masking.tokenize_example({"text": "Hello world.", "index": 0}, tokenizer)
    assert out.labels == out.input_ids
    assert out.input_ids[-1] == tokenizer.eos_token_id


def test_stop_tokens_are_the_eos_plus_generation_config(tokenizer, tmp_path):
    from transformers import GenerationConfig

    from sftlib.models import embedded

    assert modeling.stop_token_ids(ModelConfig(path=TINY), tokenizer) == [tokenizer.eos_token_id]
    folder = Path(embedded.resolve(TINY))
    copy_dir = tmp_path / "model"
    __import__("shutil").copytree(folder, copy_dir)
    GenerationConfig(eos_token_id=[2, 0]).save_pretrained(copy_dir)  # Llama 3 style: a list
    assert modeling.stop_token_ids(ModelConfig(path=str(copy_dir)), tokenizer) == [0, 2]


def test_the_first_stop_token_ends_the_turn_and_the_rest_is_untrained(tokenizer):
    # <|endoftext|> (id 0) is a stop token: the turn ends there, "<|im_end|>" after it is not generated.
    tok = with_template(
        tokenizer, tokenizer.chat_template.replace("+ '<|im_end|>'", "+ '<|endoftext|><|im_end|>'")
    )
    messages = chat("u Hi", "a Hello.")
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert "Hello.<|endoftext|><|im_end|>" in rendered
    (out,), _ = masking.tokenize_example({"messages": messages}, tok, stop_ids=[0, 2])
    assert trained_texts(tok, out) == ["Hello.<|endoftext|>"]


# --------------------------------------------------------------------------- agreement with TRL


def sft_trainer(tokenizer, tmp_path, ds):
    """A trl.SFTTrainer on the tiny model; its constructor prepares (tokenizes) `ds`."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sftlib.models import embedded

    model = AutoModelForCausalLM.from_pretrained(embedded.resolve(TINY), dtype=torch.float32)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, max_length=512)
    return SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)


def test_string_prompt_completion_and_text_labels_equal_trl(tokenizer, tmp_path):
    pc_rows = sources.load_raw(DatasetConfig(name=str(FIXTURES / "prompt_completion.jsonl")))["train"]
    pc_rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in pc_rows]
    ours = dataset.prepare(config("prompt_completion.jsonl"), tokenizer).train
    trl_ds = sft_trainer(tokenizer, tmp_path, datasets.Dataset.from_list(pc_rows)).train_dataset
    assert list(ours["input_ids"]) == list(trl_ds["input_ids"])
    assert list(ours["labels"]) == list(trl_ds["labels"])

    text_rows = [
        {"text": r["text"]}
        for r in sources.load_raw(DatasetConfig(name=str(FIXTURES / "text.jsonl")))["train"]
    ]
    ours = dataset.prepare(config("text.jsonl"), tokenizer).train
    trl_ds = sft_trainer(tokenizer, tmp_path, datasets.Dataset.from_list(text_rows)).train_dataset
    assert list(ours["input_ids"]) == list(trl_ds["input_ids"])
    assert [list(x) for x in ours["labels"]] == [list(x) for x in trl_ds["input_ids"]]


def test_sft_trainer_keeps_prepared_labels_and_collates_trained_eos_despite_pad_equal_eos(
    tokenizer, tmp_path
):
    ours = dataset.prepare(config("messages.jsonl"), tokenizer).train
    trainer = sft_trainer(tokenizer, tmp_path, ours)
    assert list(trainer.train_dataset["labels"]) == list(ours["labels"])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ours))])
    for k, row in enumerate(ours):
        n = len(row["labels"])
        assert batch["labels"][k, :n].tolist() == row["labels"]
        assert (batch["labels"][k, n:] == -100).all()  # padding (pad == eos) is not trained...
        assert tokenizer.eos_token_id in batch["labels"][k, :n].tolist()  # ...but each turn's <|im_end|> is


def test_prompt_completion_boundary_merge_is_counted_and_trained_as_trl_does(tokenizer, tmp_path):
    # "2+2=" + "4" : BPE merges "=4"? Use a boundary that merges for byte-level BPE: "hel" + "lo".
    path = tmp_path / "pc.jsonl"
    path.write_text(
        json.dumps({"prompt": "Say hel", "completion": "lo there"})
        + "\n"
        + json.dumps({"prompt": "Q:\n", "completion": "A"})
        + "\n"
    )
    prepared = dataset.prepare(config(str(path)), tokenizer)
    assert prepared.report["train"]["boundary_merged"] == 1
    trl_ds = sft_trainer(
        tokenizer,
        tmp_path,
        datasets.Dataset.from_list(
            [{"prompt": "Say hel", "completion": "lo there"}, {"prompt": "Q:\n", "completion": "A"}]
        ),
    ).train_dataset
    assert list(prepared.train["labels"]) == list(trl_ds["labels"])


# --------------------------------------------------------------------------- templates


def test_template_that_renders_history_differently_is_expanded_one_example_per_turn(tokenizer):
    # The final assistant turn gets " (final)": a turn's rendering changes once another turn follows it.
    tok = with_template(
        tokenizer,
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% if loop.last and m.role == 'assistant' %} (final){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    example = {"messages": chat("u a", "a b", "u c", "a d"), "index": 0}
    examples, _ = masking.tokenize_example(example, tok)
    assert [e.expanded for e in examples] == [True, True]
    assert [trained_texts(tok, e) for e in examples] == [["b (final)<|im_end|>"], ["d (final)<|im_end|>"]]
    assert decode(tok, examples[1].input_ids).startswith(
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>"
    )
    for e in examples:
        audit.check(e, example, tok)
    # Under last_assistant only the last turn is trained, and it sits in place: no expansion.
    (last,), _ = masking.tokenize_example(example, tok, train_on="last_assistant")
    assert not last.expanded and trained_texts(tok, last) == ["d (final)<|im_end|>"]


def test_expansion_is_reported_with_its_token_cost(tokenizer, tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(
        "\n".join(json.dumps({"messages": chat("u a", "a b", "u c", "a d", "u e", "a f")}) for _ in range(3))
    )
    cfg = config(str(path), chat_template="qwen3")
    prepared = dataset.prepare(cfg, modeling.load_tokenizer(cfg.model))
    rep = prepared.report["train"]
    assert (rep["rows"], rep["kept"], rep["examples"]) == (3, 3, 9)
    assert (rep["expanded_conversations"], rep["expanded_examples"]) == (3, 9)
    assert rep["expansion_extra_tokens_pct"] > 50
    assert any("3 conversations expanded into 9 examples" in w for w in reports.warnings("train", rep))
    assert list(prepared.train["turn"]) == [1, 3, 5] * 3  # the message index of each trained turn


def test_template_ending_with_the_answer_gets_eos_appended_and_trained(tokenizer):
    tok = with_template(
        tokenizer,
        "{% for m in messages %}{% if m.role == 'user' %}<|im_start|>{% endif %}{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_end|>{% endif %}",
    )
    # user turns open with <|im_start|>, the answer follows the generation prompt <|im_end|> and nothing ends it
    (out,), _ = masking.tokenize_example({"messages": chat("u Hi", "a Hello.")}, tok, stop_ids=[1])
    assert out.appended_eos and out.input_ids[-1] == tok.eos_token_id
    assert trained_texts(tok, out) == ["Hello.<|im_end|>"]


def test_end_of_turn_marker_that_is_not_a_stop_token_is_named(tokenizer):
    tok = with_template(
        tokenizer,
        "{% for m in messages %}{{ m.role }}: {{ m.content }}<|eot_id|>\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}",
    )
    with pytest.raises(DropExample) as drop:
        masking.tokenize_example({"messages": chat("u a", "a b")}, tok)
    assert drop.value.reason == "no_stop_token"
    assert (
        "<|eot_id|>" in drop.value.detail
        and "'<|im_end|>'" in drop.value.detail
        and "model.chat_template" in drop.value.detail
    )


def test_template_that_strips_content_is_still_masked_exactly(tokenizer):
    tok = with_template(
        tokenizer, tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    )
    out = one({"messages": chat("u Hi", "a  Hello.  ")}, tok)
    assert trained_texts(tokenizer, out) == ["Hello.<|im_end|>"]


def test_content_starting_with_a_newline_is_trained_from_the_generation_point(tokenizer):
    # "assistant\n" + "\nHello." : byte-level BPE merges the two newlines; the prompt is tokenized alone.
    messages = chat("u Hi", "a \nHello.")
    out = one({"messages": messages}, tokenizer)
    assert trained_texts(tokenizer, out) == ["\nHello.<|im_end|>"]
    prompt = tokenizer.apply_chat_template(
        messages[:1], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    first = next(k for k, label in enumerate(out.labels) if label != -100)
    assert out.input_ids[:first] == prompt["input_ids"]


def test_prefill_in_the_generation_prompt_trains_from_where_the_renderings_diverge(tokenizer):
    # DeepSeek-R1 style: the generation prompt opens "<think>\n", an answered turn has no such prefix.
    tok = with_template(
        tokenizer,
        tokenizer.chat_template.replace(
            "'<|im_start|>assistant\n' }}", "'<|im_start|>assistant\n<think>\n' }}"
        ),
    )
    messages = chat("u Hi", "a Hello.")
    assert tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False).endswith(
        "<think>\n"
    )
    assert trained_texts(tok, one({"messages": messages}, tok)) == ["Hello.<|im_end|>"]


def test_chat_template_by_bundled_name_or_file_and_a_clear_error_otherwise(tokenizer, tmp_path):
    assert modeling.chat_template_text("qwen3") == (TRL_TEMPLATES / "qwen3.jinja").read_text()
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages }}")
    assert modeling.chat_template_text(str(path)) == "{{ messages }}"
    with pytest.raises(SftlibError) as err:
        modeling.chat_template_text("qwen33")
    assert "did you mean qwen3" in err.value.fix and "llama3" in err.value.fix
    tok = modeling.load_tokenizer(ModelConfig(path=TINY, chat_template="llama3"))
    assert tok.chat_template == (TRL_TEMPLATES / "llama3.jinja").read_text()


def test_chat_data_with_tokenizer_without_chat_template_raises_with_fix(tokenizer):
    tok = with_template(tokenizer, None)
    with pytest.raises(SftlibError) as err:
        dataset.prepare(config("messages.jsonl"), tok)
    assert "no chat template" in err.value.message and "model.chat_template" in err.value.fix


def test_audit_rejects_a_wrong_mask(tokenizer):
    example = {"messages": chat("u Hi", "a Hello."), "index": 3}
    out = one(example, tokenizer)
    everything = masking.Tokens(out.input_ids, list(out.input_ids), out.turns)
    with pytest.raises(DropExample, match="audit_failed: example 3: turn 1: the trained run does not start"):
        audit.check(everything, example, tokenizer)
    shifted = masking.Tokens(out.input_ids, [-100] + out.labels[:-1], out.turns)  # trains "\n" not "H"
    with pytest.raises(DropExample, match="does not start where the model's generation starts"):
        audit.check(shifted, example, tokenizer)
    no_stop = masking.Tokens(out.input_ids, out.labels[:-2] + [-100, -100], out.turns)
    with pytest.raises(DropExample, match="does not end with its first stop token"):
        audit.check(no_stop, example, tokenizer)


# --------------------------------------------------------------------------- bad input, truncation


def test_bad_conversations_are_dropped_with_one_counted_reason_each(tokenizer):
    prepared = dataset.prepare(config("bad_messages.jsonl", max_dropped_fraction=1.0), tokenizer)
    report = prepared.report["train"]
    assert report["dropped"] == {
        "non_string_content": 2,
        "no_assistant_turn": 2,
        "empty_assistant_turn": 1,
        "unknown_role": 1,
        "repeated_role": 1,
        "misplaced_system": 1,
        "empty_conversation": 1,
    }
    assert report["drop_first"]["no_assistant_turn"]["index"] == 6  # "I speak first." trimmed: no answer
    trimmed = report["trailing_user_turns_trimmed"]  # counted over kept rows
    assert (report["rows"], report["kept"], trimmed) == (11, 2, 1)
    assert list(prepared.train["index"]) == [0, 1]
    assert trained_texts(tokenizer, prepared.train[1]) == ["Yes.<|im_end|>"]  # "Really?" trimmed


def test_leading_assistant_turns_are_trimmed_and_counted_not_dropped(tokenizer, tmp_path):
    path = tmp_path / "sg.jsonl"
    rows = [
        {
            "conversations": [
                {"from": "gpt", "value": "Hi! How can I help?"},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello."},
            ]
        },
        {
            "conversations": [
                {"from": "system", "value": "Terse."},
                {"from": "gpt", "value": "Yes?"},
                {"from": "human", "value": "2+2"},
                {"from": "chatgpt", "value": "4"},
            ]
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    prepared = dataset.prepare(config(str(path)), tokenizer)
    assert prepared.report["train"]["leading_assistant_turns_trimmed"] == 2
    assert [trained_texts(tokenizer, r) for r in prepared.train] == [["Hello.<|im_end|>"], ["4<|im_end|>"]]


def scraped_sharegpt(n: int, seed: int = 0) -> list[dict]:
    """ShareGPT rows shaped like a scraped dump: ~40% open with the bot, trailing human turns, system
    prompts, code blocks, emoji, leading newlines, and a few broken rows (empty answers, a null turn,
    an unknown speaker, two human turns in a row)."""
    rng = random.Random(seed)
    contents = [
        "How do I sort a list in Python?",
        "```python\nsorted(xs)\n```",
        "Thanks! 🙏",
        "\nSure, here it is:",
        "Translate 'bonjour'.",
        "Hello.",
        "It means hello.",
        "Explain  recursion\tbriefly.",
        "A function that calls itself.",
    ]
    rows = []
    for _ in range(n):
        turns = []
        if rng.random() < 0.1:
            turns.append({"from": "system", "value": "You are a helpful assistant."})
        bot_first = rng.random() < 0.4  # a greeting scraped before the first question
        speakers = ["gpt", "human"] if bot_first else ["human", "gpt"]
        for k in range(rng.randint(3 if bot_first else 2, 8)):
            turns.append({"from": speakers[k % 2], "value": rng.choice(contents)})
        broken = rng.random()
        if broken < 0.03:
            turns[-1]["value"] = ""
        elif broken < 0.05:
            turns.append({"from": "bard", "value": "?"})
        elif broken < 0.07:
            turns.insert(len(turns) - 1, {"from": turns[-2]["from"], "value": "again"})
        rows.append({"id": f"row{len(rows)}", "conversations": turns})
    return rows


def test_a_scraped_sharegpt_dump_with_assistant_first_rows_keeps_most_conversations(tokenizer, tmp_path):
    rows = scraped_sharegpt(300)
    assert 0.3 < sum(r["conversations"][0]["from"] == "gpt" for r in rows) / len(rows) < 0.5
    path = tmp_path / "dump.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    rep = dataset.prepare(config(str(path)), tokenizer).report["train"]
    assert rep["kept"] / rep["rows"] >= 0.8, rep
    assert rep["leading_assistant_turns_trimmed"] > 0.3 * rep["rows"]


def test_a_template_error_drops_the_row_named_in_the_report_not_the_dataset(tokenizer, tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"messages": chat("u Hi", "a Hello.")}] * 9 + [{"messages": chat("s Terse.", "u Hi", "a Hello.")}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    template = tmp_path / "no_system.jinja"  # as Gemma's: raises on a system message
    template.write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + tokenizer.chat_template
    )
    cfg = config(str(path), chat_template=str(template))
    no_system = modeling.load_tokenizer(cfg.model)
    prepared = dataset.prepare(cfg, no_system)
    rep = prepared.report["train"]
    assert rep["dropped"] == {"template_error": 1}
    assert rep["drop_first"]["template_error"]["index"] == 9
    assert "System role not supported" in rep["drop_first"]["template_error"]["detail"]
    with pytest.raises(SftlibError) as err:  # over the gate, the error names the row and the message
        dataset.prepare(config(str(path), chat_template=str(template), max_dropped_fraction=0.05), no_system)
    assert "template_error 1 (first: row 9: TemplateError: System role not supported" in err.value.message


def test_bad_prompt_completions_are_dropped_with_reasons(tokenizer):
    report = dataset.prepare(
        config("bad_prompt_completion.jsonl", max_dropped_fraction=1.0), tokenizer
    ).report
    assert report["train"]["dropped"] == {"empty_completion": 2, "non_string_content": 1}


def test_too_many_drops_raise_listing_reasons_and_counts(tokenizer):
    with pytest.raises(SftlibError) as err:
        dataset.prepare(config("bad_messages.jsonl"), tokenizer)
    assert "9 of 11 train rows" in err.value.message
    assert "non_string_content 2" in err.value.message and "max_dropped_fraction" in err.value.fix


def test_truncation_keeps_the_start_counts_truncated_and_drops_fully_cut_examples(tokenizer):
    # messages.jsonl rows 0 and 2 train from token 37 and 33 on (after the default system prompt);
    # row 1, with its own short system prompt, from token 24.
    prepared = dataset.prepare(
        config("messages.jsonl", max_seq_length=30, max_dropped_fraction=1.0), tokenizer
    )
    report = prepared.report["train"]
    assert report["dropped"] == {"all_trained_tokens_truncated": 2}
    assert report["truncated"] == 1 and report["kept"] == 1
    row = prepared.train[0]
    assert len(row["input_ids"]) == 30 and row["truncated"] and row["index"] == 1
    norm = sources.normalize(
        sources.load_raw(DatasetConfig(name=str(FIXTURES / "messages.jsonl")))["train"], "messages"
    )
    (full,), _ = masking.tokenize_example(norm[row["index"]], tokenizer)
    assert row["input_ids"] == full.input_ids[:30] and row["labels"] == full.labels[:30]
    assert row["untruncated_tokens"] == len(full.input_ids)
    lost = sum(label != -100 for label in full.labels[30:])  # the trained tokens past max_seq_length
    assert lost and (report["truncated_trained"], report["trained_tokens_truncated"]) == (1, lost)
    (said,) = [line for line in reports.warnings("train", report) if "cut trained tokens from" in line]
    assert f"from 1 example(s) ({lost} trained tokens" in said and "model.max_seq_length" in said


def test_truncation_drops_are_guarded_by_max_dropped_fraction(tokenizer):
    with pytest.raises(SftlibError) as err:
        dataset.prepare(config("messages.jsonl", max_seq_length=30), tokenizer)
    assert "all_trained_tokens_truncated 2" in err.value.message
    assert "max_seq_length" in err.value.fix


# --------------------------------------------------------------------------- caching, display


def test_second_prepare_hits_the_cache_and_tokenizes_nothing(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "messages.jsonl"
    path.write_text((FIXTURES / "messages.jsonl").read_text())
    first = dataset.prepare(config(str(path)), tokenizer)
    files = sorted(p.name for p in Path(datasets.config.HF_DATASETS_CACHE).rglob("*.arrow"))

    def no_tokenization(*args, **kwargs):
        raise AssertionError("tokenized again: the cache was missed")

    monkeypatch.setattr(masking, "tokenize_example", no_tokenization)
    second = dataset.prepare(config(str(path)), tokenizer)
    assert second.train.cache_files == first.train.cache_files
    assert sorted(p.name for p in Path(datasets.config.HF_DATASETS_CACHE).rglob("*.arrow")) == files
    assert second.report == first.report  # drop reasons and counts survive caching


@pytest.mark.parametrize(
    "change",
    ["code", "a library's release", "chat_template", "stop_tokens", "train_on", "template_kwargs"],
)
def test_a_change_to_anything_labels_depend_on_misses_the_cache(
    change, tokenizer, tmp_path, monkeypatch, caplog
):
    path = tmp_path / "messages.jsonl"
    path.write_text((FIXTURES / "messages.jsonl").read_text())
    dataset.prepare(config(str(path)), tokenizer)
    calls = []
    real = masking.tokenize_example
    monkeypatch.setattr(masking, "tokenize_example", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level("INFO", logger="sftlib"):
        dataset.prepare(config(str(path)), tokenizer)  # unchanged: reused, and the log says so
    assert not calls and "train: labels reused from the cache" in caplog.text
    cfg, tok, stop_ids = config(str(path)), tokenizer, None
    if change == "code":
        monkeypatch.setattr(label_cache, "code_version", lambda: "edited")
    elif change == "a library's release":
        versions = label_cache.library_versions()
        monkeypatch.setattr(label_cache, "library_versions", lambda: {**versions, "tokenizers": "0.0.1"})
        label_cache.code_version.cache_clear()
    elif change == "chat_template":
        tok = with_template(
            tokenizer, tokenizer.chat_template.replace("<|im_start|>", "<|im_start|>", 1) + " "
        )
    elif change == "stop_tokens":
        stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    elif change == "train_on":
        cfg = config(str(path), train_on="last_assistant")
    else:
        cfg = config(str(path), chat_template_kwargs={"enable_thinking": False})
    dataset.prepare(cfg, tok, stop_ids=stop_ids)
    if change == "a library's release":
        label_cache.code_version.cache_clear()  # the next test keys by the installed releases again
    assert len(calls) == 3


def test_the_label_cache_key_covers_every_module_on_the_path_from_row_to_labels(tmp_path):
    import shutil

    root = tmp_path / "sftlib"
    shutil.copytree(label_cache.PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    names = {str(p.relative_to(root)) for p in label_cache.dependencies(root)}
    expected = {
        "data/dataset.py",
        "data/masking.py",
        "data/sources.py",
        "data/chat.py",
        "config/run_config.py",
    }
    assert expected | {"data/__init__.py", "models/modeling.py"} <= names
    assert not {n for n in names if n.startswith(("views/", "inference/", "training/"))}
    before = label_cache.version(root)
    scoring = root / "inference" / "scoring.py"  # off the path from row to labels
    scoring.write_text(scoring.read_text() + "\n# not on the path\n")
    assert label_cache.version(root) == before
    for name in ("data/chat.py", "data/masking.py", "data/__init__.py"):
        (root / name).write_text((root / name).read_text() + "\n# edited\n")
        assert label_cache.version(root) != before
        before = label_cache.version(root)


def test_the_label_cache_follows_imports_into_sub_packages_at_any_depth(tmp_path):
    """A module two folders below sftlib, on the path from row to labels, is part of the key."""
    import shutil

    root = tmp_path / "sftlib"
    shutil.copytree(label_cache.PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    deep = root / "data" / "inner"
    deep.mkdir()
    (deep / "__init__.py").write_text('"""A sub-package of the data stage."""\n')
    (deep / "rule.py").write_text("LIMIT = 1\n")
    rendering = root / "data" / "rendering.py"
    rendering.write_text(rendering.read_text() + "\nfrom sftlib.data.inner.rule import LIMIT  # noqa\n")
    names = {str(p.relative_to(root)) for p in label_cache.dependencies(root)}
    assert {"data/inner/rule.py", "data/inner/__init__.py"} <= names
    before = label_cache.version(root)
    (deep / "rule.py").write_text("LIMIT = 2\n")
    assert label_cache.version(root) != before


def test_drop_reasons_survive_caching(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text((FIXTURES / "bad_messages.jsonl").read_text())
    reports = [
        dataset.prepare(config(str(path), max_dropped_fraction=1.0), tokenizer).report for _ in range(2)
    ]
    assert reports[0] == reports[1] and reports[0]["train"]["dropped"]


def test_token_view_and_report_show_what_is_trained(tokenizer, tmp_path):
    prepared = dataset.prepare(config("messages.jsonl"), tokenizer)
    row = prepared.train[0]
    view = export.token_view(row["input_ids"], row["labels"], tokenizer)
    assert ("<|im_end|>", True, True) in view and ("<|im_start|>", False, True) in view
    assert "[[Paris.<|im_end|>]]" in tokens.render_view(view)
    assert "[[Paris.<|im_end|>]]" in report.format_report(prepared, config("messages.jsonl"), tokenizer)
    n = export.write_masks_jsonl(prepared.train, tokenizer, tmp_path / "m.jsonl", with_text=True)
    assert (
        n == 3 and '"trained": ["Paris.<|im_end|>", "Rome.<|im_end|>"]' in (tmp_path / "m.jsonl").read_text()
    )


def test_save_to_disk_dataset_prepares_with_eval_split(tokenizer, tmp_path):
    ds = sources.load_raw(DatasetConfig(name=str(FIXTURES / "sharegpt.jsonl")))["train"].remove_columns(
        "index"
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "saved"))
    prepared = dataset.prepare(config(str(tmp_path / "saved"), eval_split="test"), tokenizer)
    assert (len(prepared.train), len(prepared.eval)) == (2, 1)
    assert prepared.eval[0]["index"] == 0


# --------------------------------------------------------------------------- batches and processes


def tool_rows_with_drops() -> list[dict]:
    """The tool lesson's chats (a call, its result and the answer; every fourth one without a call), a
    row whose reasoning Qwen2.5's template leaves out (dropped after rendering) and one with an unknown
    role (dropped before)."""
    from sftlib.lessons import tool_task

    rows, _ = tool_task.build_tool_rows(10, 0)
    thinking = {"role": "assistant", "content": "Friday", "reasoning_content": "2021-03-05 was a Friday."}
    rows.insert(3, {"tools": tool_task.TOOL_SCHEMAS, "messages": [*rows[3]["messages"][:2], thinking]})
    rows.insert(7, {"tools": tool_task.TOOL_SCHEMAS, "messages": [{"role": "robot", "content": "beep"}]})
    return rows


@pytest.mark.parametrize(
    "vocabulary, template", [("smollm2", "qwen2_5"), ("qwen3", "qwen2_5"), ("llama3", "llama3_1")]
)
def test_a_batch_is_masked_exactly_as_its_rows_are_one_by_one(tokenizer, vocabulary, template):
    if vocabulary == "smollm2":
        tok, stops = tokenizer, [tokenizer.eos_token_id]
    else:
        tok = vocabularies.build(vocabulary)
        stops = vocabularies.stop_ids(vocabulary, tok)
    tok = with_template(tok, (TRL_TEMPLATES / f"{template}.jinja").read_text())
    norm = sources.normalize(datasets.Dataset.from_list(tool_rows_with_drops()), "messages")
    settings = {"stop_ids": stops, "train_on": "all_assistant", "max_length": 512}
    together = dataset._prepare_rows(norm[:], tok, code_version="test", **settings)
    alone = [record for k in range(len(norm)) for record in dataset._prepare_row(norm[k], tok, **settings)]
    assert together == {name: [record[name] for record in alone] for name in together}
    assert {r for r in together["drop_reason"] if r} == {"not_rendered", "unknown_role"}
    assert sum(r is None for r in together["drop_reason"]) == 10


def test_a_large_split_is_masked_on_every_core_with_the_labels_of_one_process(
    tokenizer, tmp_path, monkeypatch
):
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in tool_rows_with_drops()))
    qwen = str(TRL_TEMPLATES / "qwen2_5.jinja")
    default = config(str(path), chat_template=qwen, max_dropped_fraction=0.5)
    one_process = dataclasses.replace(default, training={"dataset_num_proc": 1})
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert loader.num_proc_for(default, loader.PARALLEL_ROWS - 1) is None  # small: no worker processes
    monkeypatch.setattr(loader, "PARALLEL_ROWS", 4)  # this 12-row split counts as large
    assert (loader.num_proc_for(default, 12), loader.num_proc_for(one_process, 12)) == (2, 1)
    prepared = {}
    for name, cfg in {"two": default, "one": one_process}.items():
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / f"cache_{name}"))
        prepared[name] = dataset.prepare(cfg, modeling.load_tokenizer(cfg.model))
    two, one = prepared["two"], prepared["one"]
    assert two.train["input_ids"] == one.train["input_ids"] and two.train["labels"] == one.train["labels"]
    assert two.report == one.report and two.report["train"]["dropped"] == {
        "not_rendered": 1,
        "unknown_role": 1,
    }
    sharded = {name: sorted((tmp_path / f"cache_{name}").rglob("*_of_00002.arrow")) for name in prepared}
    assert sharded["two"] and not sharded["one"]  # the masks were made by two processes, then by one


def test_no_token_starting_at_the_generation_point_is_a_counted_audit_drop_not_a_crash(tokenizer):
    from sftlib.data.rendering import Turn

    turn = Turn(message=1, text="abcdef", start=2, answer="cdef")  # tokens start at 0 and 3: none at 2
    with pytest.raises(DropExample, match="audit_failed: no token starts where turn 1's generation starts"):
        masking.label_spans([5, 6], [(0, 3), (3, 6)], turn.text, [turn], tokenizer, [6])
