"""Labels for every format and chat template (sftlib.masking), checked against TRL and decode-back."""

import copy
from pathlib import Path

import datasets
import pytest

from sftlib import data, masking
from sftlib.config import DatasetConfig, ModelConfig, RunConfig
from sftlib.errors import SftlibError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
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


def config(name, max_seq_length=512, **dataset):
    path = name if "/" in name else str(FIXTURES / name)
    return RunConfig(
        model=ModelConfig(path="unused", max_seq_length=max_seq_length),
        dataset=DatasetConfig(name=path, **dataset),
    )


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def trained_texts(tokenizer, row):
    return [decode(tokenizer, row["input_ids"][a:b]) for a, b in masking.trained_runs(row["labels"])]


def chat(*turns):
    roles = {"s": "system", "u": "user", "a": "assistant"}
    return [{"role": roles[t[0]], "content": t[2:]} for t in turns]


# --------------------------------------------------------------------------- every format


@pytest.mark.parametrize("fixture", FORMAT_FIXTURES)
def test_every_label_is_ignored_or_its_input_token_and_both_occur(fixture, tokenizer):
    prepared = masking.prepare(config(fixture), tokenizer)
    rows = list(prepared.train)
    assert rows and prepared.report["train"]["kept"] == len(rows)
    for row in rows:
        assert len(row["labels"]) == len(row["input_ids"])
        assert all(label in (-100, tok) for tok, label in zip(row["input_ids"], row["labels"], strict=True))
        assert any(label != -100 for label in row["labels"])
    if prepared.format != "text":
        assert all(-100 in row["labels"] for row in rows)
    stats = masking.check_invariants(prepared.train, tokenizer)
    assert stats["examples"] == len(rows) and len(stats["trained_fraction"]) == len(rows)


@pytest.mark.parametrize(
    "fixture", [f for f in FORMAT_FIXTURES if f != "prompt_completion.jsonl" and f != "text.jsonl"]
)
def test_every_assistant_turn_decodes_back_to_its_content_and_im_end(fixture, tokenizer):
    prepared = masking.prepare(config(fixture), tokenizer)
    raw = data.load_raw(DatasetConfig(name=str(FIXTURES / fixture)))["train"]
    norm = data.normalize(raw, prepared.format)
    for row in prepared.train:
        example = norm[row["index"]]
        messages, first = masking.chat_messages(example)
        expected = [m["content"] + "<|im_end|>" for m in messages[first:] if m["role"] == "assistant"]
        assert trained_texts(tokenizer, row) == expected
        masking.audit(row, example, tokenizer)


def test_multi_turn_messages_train_exactly_each_assistant_turn_and_its_im_end(tokenizer):
    rows = list(masking.prepare(config("messages.jsonl"), tokenizer).train)
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
    rows = list(masking.prepare(config("sharegpt.jsonl"), tokenizer).train)
    assert trained_texts(tokenizer, rows[0]) == ["Paris.<|im_end|>", "Rome.<|im_end|>"]
    assert trained_texts(tokenizer, rows[1]) == ["4<|im_end|>", " 12 <|im_end|>"]


def test_system_prompt_user_turns_and_scaffolding_are_never_trained(tokenizer):
    out = masking.tokenize_example({"messages": chat("u Hi", "a Hello.", "u Bye", "a Bye!")}, tokenizer)
    view = masking.token_view(out["input_ids"], out["labels"], tokenizer)
    trained = "".join(text for text, is_trained, _ in view if is_trained)
    assert trained == "Hello.<|im_end|>Bye!<|im_end|>"
    untrained = "".join(text for text, is_trained, _ in view if not is_trained)
    assert SMOL_SYSTEM in untrained  # the template's injected default system prompt
    assert untrained.count("<|im_start|>") == 5  # every turn header, untrained
    assert not any(
        is_trained and text == "\n" for text, is_trained, _ in view
    )  # nor the newline after <|im_end|>


def test_explicit_system_message_is_not_trained(tokenizer):
    out = masking.tokenize_example({"messages": chat("s Be brief.", "u Hi", "a Hello.")}, tokenizer)
    assert trained_texts(tokenizer, out) == ["Hello.<|im_end|>"]
    assert SMOL_SYSTEM not in decode(tokenizer, out["input_ids"])


def test_trained_eos_survives_when_pad_equals_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    out = masking.tokenize_example({"messages": chat("u Hi", "a Hello.")}, tokenizer)
    assert out["labels"][-2] == tokenizer.eos_token_id  # <|im_end|>, then the untrained "\n"
    assert out["labels"][-1] == -100


def test_last_assistant_trains_only_the_final_turn(tokenizer):
    prepared = masking.prepare(config("messages.jsonl", train_on="last_assistant"), tokenizer)
    rows = list(prepared.train)
    assert trained_texts(tokenizer, rows[0]) == ["Rome.<|im_end|>"]
    assert trained_texts(tokenizer, rows[1]) == ["10, since 12 - 2 = 10.\nDone.<|im_end|>"]


def test_conversational_prompt_completion_trains_only_completion_turns(tokenizer):
    example = {"prompt": chat("u Say hi.", "a Hi!", "u Again."), "completion": chat("a HI!")}
    out = masking.tokenize_example(example, tokenizer)
    assert trained_texts(tokenizer, out) == ["HI!<|im_end|>"]
    masking.audit(out, example, tokenizer)


def test_chat_input_ids_equal_apply_chat_template_ids(tokenizer):
    messages = chat("u What?", "a This.", "u Why?", "a Because.")
    out = masking.tokenize_example({"messages": messages}, tokenizer)
    assert (
        out["input_ids"]
        == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    )


def test_text_trains_every_token_and_ends_with_eos(tokenizer):
    out = masking.tokenize_example({"text": "Hello world."}, tokenizer)
    assert out["labels"] == out["input_ids"]
    assert out["input_ids"][-1] == tokenizer.eos_token_id


# --------------------------------------------------------------------------- agreement with TRL


def sft_trainer(tokenizer, tmp_path, dataset):
    """A trl.SFTTrainer on the tiny model; its constructor prepares (tokenizes) `dataset`."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sftlib import embedded

    model = AutoModelForCausalLM.from_pretrained(
        embedded.resolve("embedded:tiny-random-llama"), dtype=torch.float32
    )
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, max_length=512)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def test_string_prompt_completion_and_text_labels_equal_trl(tokenizer, tmp_path):
    pc_rows = [
        row for row in data.load_raw(DatasetConfig(name=str(FIXTURES / "prompt_completion.jsonl")))["train"]
    ]
    pc_rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in pc_rows]
    ours = masking.prepare(config("prompt_completion.jsonl"), tokenizer).train
    trl_ds = sft_trainer(tokenizer, tmp_path, datasets.Dataset.from_list(pc_rows)).train_dataset
    assert list(ours["input_ids"]) == list(trl_ds["input_ids"])
    assert list(ours["labels"]) == list(trl_ds["labels"])

    text_rows = [
        {"text": r["text"]} for r in data.load_raw(DatasetConfig(name=str(FIXTURES / "text.jsonl")))["train"]
    ]
    ours = masking.prepare(config("text.jsonl"), tokenizer).train
    trl_ds = sft_trainer(tokenizer, tmp_path, datasets.Dataset.from_list(text_rows)).train_dataset
    assert list(ours["input_ids"]) == list(trl_ds["input_ids"])
    assert [list(x) for x in ours["labels"]] == [list(x) for x in trl_ds["input_ids"]]


def test_sft_trainer_keeps_prepared_labels_and_collates_trained_eos_despite_pad_equal_eos(
    tokenizer, tmp_path
):
    ours = masking.prepare(config("messages.jsonl"), tokenizer).train
    trainer = sft_trainer(tokenizer, tmp_path, ours)
    assert list(trainer.train_dataset["labels"]) == list(ours["labels"])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ours))])
    for k, row in enumerate(ours):
        n = len(row["labels"])
        assert batch["labels"][k, :n].tolist() == row["labels"]
        assert (batch["labels"][k, n:] == -100).all()  # padding (pad == eos) is not trained...
        assert tokenizer.eos_token_id in batch["labels"][k, :n].tolist()  # ...but each turn's <|im_end|> is


def test_mask_agrees_with_generation_markers_of_trl_chatml_training_template(tokenizer):
    """TRL's qwen2_5_training.jinja marks "\\n" + content + "<|im_end|>" + "\\n" as assistant tokens.

    Ours is that minus the two newlines: the "\\n" ending the `<|im_start|>assistant` header is
    scaffolding the prompt already fixes, and the "\\n" after `<|im_end|>` is never generated.
    """
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (TRL_TEMPLATES / "qwen2_5_training.jinja").read_text()
    newline = tok.convert_tokens_to_ids("Ċ")
    for messages in (chat("u Hi", "a Hello there."), chat("s Terse.", "u 2+2?", "a 4", "u Times 3?", "a 12")):
        ours = masking.tokenize_example({"messages": messages}, tok)
        marked = tok.apply_chat_template(
            messages, return_assistant_tokens_mask=True, return_dict=True, tokenize=True
        )
        assert ours["input_ids"] == marked["input_ids"]
        ours_mask = [label != -100 for label in ours["labels"]]
        theirs = [bool(m) for m in marked["assistant_masks"]]
        assert all(t for o, t in zip(ours_mask, theirs, strict=True) if o)  # ours is inside theirs
        extra = [k for k, (o, t) in enumerate(zip(ours_mask, theirs, strict=True)) if t and not o]
        assert all(ours["input_ids"][k] == newline for k in extra)
        assert len(extra) == 2 * sum(m["role"] == "assistant" for m in messages)


# --------------------------------------------------------------------------- templates


def test_non_prefix_stable_template_raises(tokenizer):
    tok = copy.deepcopy(tokenizer)
    # Renders the final assistant turn differently from earlier ones, so a turn's rendering changes
    # once another turn follows it.
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% if loop.last and m.role == 'assistant' %} (final){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(SftlibError, match="not prefix-stable"):
        masking.tokenize_example({"messages": chat("u a", "a b", "u c", "a d")}, tok)


def test_template_without_end_of_turn_token_raises(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(SftlibError, match="never learn to stop"):
        masking.tokenize_example({"messages": chat("u a", "a b")}, tok)


def test_template_that_strips_content_is_still_masked_exactly(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    out = masking.tokenize_example({"messages": chat("u Hi", "a  Hello.  ")}, tok)
    assert trained_texts(tokenizer, out) == ["Hello.<|im_end|>"]
    masking.audit(out, {"messages": chat("u Hi", "a  Hello.  ")}, tok)


def test_chat_data_with_tokenizer_without_chat_template_raises_with_fix(tokenizer, tmp_path):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(SftlibError) as err:
        masking.prepare(config("messages.jsonl"), tok)
    assert "no chat template" in err.value.message and "prompt/completion" in err.value.fix


def test_audit_rejects_a_wrong_mask(tokenizer):
    example = {"messages": chat("u Hi", "a Hello.")}
    out = masking.tokenize_example(example, tokenizer)
    wrong = {**out, "labels": list(out["input_ids"])}
    with pytest.raises(SftlibError, match="decode-back audit failed"):
        masking.audit(wrong, example, tokenizer)
    shifted = {**out, "labels": [-100] + out["labels"][:-1]}  # trains the "\n" instead of "H"
    with pytest.raises(SftlibError, match="decode-back audit failed"):
        masking.audit(shifted, example, tokenizer)


# --------------------------------------------------------------------------- bad input, truncation


def test_bad_conversations_are_dropped_with_one_counted_reason_each(tokenizer):
    prepared = masking.prepare(config("bad_messages.jsonl", max_dropped_fraction=1.0), tokenizer)
    report = prepared.report["train"]
    assert report["dropped"] == {
        "non_string_content": 2,
        "empty_assistant_turn": 1,
        "unknown_role": 1,
        "starts_with_assistant": 1,
        "repeated_role": 1,
        "misplaced_system": 1,
        "no_assistant_turn": 1,
        "empty_conversation": 1,
    }
    assert (report["rows"], report["kept"], report["trailing_user_turns_trimmed"]) == (11, 2, 1)
    assert list(prepared.train["index"]) == [0, 1]
    assert trained_texts(tokenizer, prepared.train[1]) == ["Yes.<|im_end|>"]  # "Really?" trimmed


def test_bad_prompt_completions_are_dropped_with_reasons(tokenizer):
    report = masking.prepare(
        config("bad_prompt_completion.jsonl", max_dropped_fraction=1.0), tokenizer
    ).report
    assert report["train"]["dropped"] == {"empty_completion": 2, "non_string_content": 1}


def test_too_many_drops_raise_listing_reasons_and_counts(tokenizer):
    with pytest.raises(SftlibError) as err:
        masking.prepare(config("bad_messages.jsonl"), tokenizer)
    assert "9 of 11 train examples" in err.value.message
    assert "non_string_content 2" in err.value.message and "max_dropped_fraction" in err.value.fix


def test_truncation_keeps_the_start_counts_truncated_and_drops_fully_cut_examples(tokenizer):
    # messages.jsonl rows 0 and 2 train from token 37 and 33 on (after the default system prompt);
    # row 1, with its own short system prompt, from token 24.
    prepared = masking.prepare(
        config("messages.jsonl", max_seq_length=30, max_dropped_fraction=1.0), tokenizer
    )
    report = prepared.report["train"]
    assert report["dropped"] == {"all_trained_tokens_truncated": 2}
    assert report["truncated"] == 1 and report["kept"] == 1
    row = prepared.train[0]
    assert len(row["input_ids"]) == 30 and row["truncated"] and row["index"] == 1
    full = masking.tokenize_example(
        data.normalize(
            data.load_raw(DatasetConfig(name=str(FIXTURES / "messages.jsonl")))["train"], "messages"
        )[row["index"]],
        tokenizer,
    )
    assert row["input_ids"] == full["input_ids"][:30] and row["labels"] == full["labels"][:30]


def test_truncation_drops_are_guarded_by_max_dropped_fraction(tokenizer):
    with pytest.raises(SftlibError) as err:
        masking.prepare(config("messages.jsonl", max_seq_length=30), tokenizer)
    assert "all_trained_tokens_truncated 2" in err.value.message
    assert "max_seq_length" in err.value.fix


def test_straddling_token_is_dropped_not_mislabelled(tokenizer):
    # "\n" ending the header and the content's leading "\n" merge into one token in some tokenizers;
    # whatever this one does, the example is either masked exactly (audit) or dropped with a reason.
    example = {"messages": chat("u Hi", "a \nHello.")}
    try:
        out = masking.tokenize_example(example, tokenizer)
    except masking.DropExample as drop:
        assert drop.reason == "token_straddles_turn_boundary"
    else:
        masking.audit(out, example, tokenizer)


# --------------------------------------------------------------------------- caching, display


def test_second_prepare_hits_the_cache_and_tokenizes_nothing(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "messages.jsonl"
    path.write_text((FIXTURES / "messages.jsonl").read_text())
    first = masking.prepare(config(str(path)), tokenizer)
    files = sorted(p.name for p in Path(datasets.config.HF_DATASETS_CACHE).rglob("*.arrow"))

    def no_tokenization(*args, **kwargs):
        raise AssertionError("tokenized again: the cache was missed")

    monkeypatch.setattr(masking, "tokenize_example", no_tokenization)
    second = masking.prepare(config(str(path)), tokenizer)
    assert second.train.cache_files == first.train.cache_files
    assert sorted(p.name for p in Path(datasets.config.HF_DATASETS_CACHE).rglob("*.arrow")) == files
    assert second.report == first.report  # drop reasons and counts survive caching


def test_a_change_to_the_masking_code_misses_the_cache(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "messages.jsonl"
    path.write_text((FIXTURES / "messages.jsonl").read_text())
    masking.prepare(config(str(path)), tokenizer)
    calls = []
    real = masking.tokenize_example
    monkeypatch.setattr(masking, "tokenize_example", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(data, "code_version", lambda: "edited")
    masking.prepare(config(str(path)), tokenizer)
    assert len(calls) == 3


def test_drop_reasons_survive_caching(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text((FIXTURES / "bad_messages.jsonl").read_text())
    reports = [
        masking.prepare(config(str(path), max_dropped_fraction=1.0), tokenizer).report for _ in range(2)
    ]
    assert reports[0] == reports[1] and reports[0]["train"]["dropped"]


def test_token_view_and_report_show_what_is_trained(tokenizer, tmp_path):
    prepared = masking.prepare(config("messages.jsonl"), tokenizer)
    row = prepared.train[0]
    view = masking.token_view(row["input_ids"], row["labels"], tokenizer)
    assert ("<|im_end|>", True, True) in view and ("<|im_start|>", False, True) in view
    assert "[[Paris.<|im_end|>]]" in masking.render_view(view)
    assert "\033[42mParis.<|im_end|>\033[0m" in masking.render_view(view, "ansi")
    assert '<span style="background:#c8f7c5">&lt;|im_end|&gt;</span>' in masking.render_view(view, "html")
    assert "[[Paris.<|im_end|>]]" in masking.format_report(prepared, config("messages.jsonl"), tokenizer)
    n = masking.write_masks_jsonl(prepared.train, tokenizer, tmp_path / "m.jsonl", with_text=True)
    assert (
        n == 3 and '"trained": ["Paris.<|im_end|>", "Rome.<|im_end|>"]' in (tmp_path / "m.jsonl").read_text()
    )


def test_save_to_disk_dataset_prepares_with_eval_split(tokenizer, tmp_path):
    ds = data.load_raw(DatasetConfig(name=str(FIXTURES / "sharegpt.jsonl")))["train"].remove_columns("index")
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "saved"))
    prepared = masking.prepare(config(str(tmp_path / "saved"), eval_split="test"), tokenizer)
    assert (len(prepared.train), len(prepared.eval)) == (2, 1)
    assert prepared.eval[0]["index"] == 0
