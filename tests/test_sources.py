"""Loading, format detection and normalization (sftlib.data.sources), on the committed fixtures."""

import logging
import shutil
from pathlib import Path

import datasets
import pytest

from sftlib.config import DatasetConfig
from sftlib.data import formats, sources
from sftlib.errors import SftlibError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(autouse=True)
def hf_cache(tmp_path_factory, monkeypatch):
    """Keep datasets' cache out of the user's home."""
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


def load(name, **kwargs):
    return sources.load_raw(DatasetConfig(name=str(FIXTURES / name) if "/" not in name else name, **kwargs))


@pytest.mark.parametrize(
    "fixture, fmt",
    [
        ("prompt_completion.jsonl", "prompt_completion"),
        ("prompt_completion_chat.jsonl", "prompt_completion"),
        ("alpaca.jsonl", "alpaca"),
        ("alpaca.csv", "alpaca"),
        ("messages.jsonl", "messages"),
        ("sharegpt.jsonl", "sharegpt"),
        ("text.jsonl", "text"),
    ],
)
def test_each_fixture_format_is_detected_with_a_reason(fixture, fmt):
    train = load(fixture)["train"]
    detected, reason = formats.detect_format(train)
    assert detected == fmt
    assert reason and "\n" not in reason
    assert train["index"] == list(range(len(train)))


def test_unknown_columns_raise_listing_columns_and_accepted_formats():
    with pytest.raises(SftlibError) as err:
        formats.detect_format(load("unknown_columns.jsonl")["train"])
    assert "question, answer" in err.value.message
    assert "alpaca" in err.value.fix and "sharegpt" in err.value.fix


def test_columns_mapping_renames_source_columns_to_canonical_names():
    train = load("unknown_columns.jsonl", columns={"prompt": "question", "completion": "answer"})["train"]
    assert formats.detect_format(train)[0] == "prompt_completion"
    assert train[0]["prompt"] == "2 + 2?"


def test_columns_mapping_naming_a_missing_column_raises():
    with pytest.raises(SftlibError, match="not a column"):
        load("unknown_columns.jsonl", columns={"prompt": "query"})


def test_explicit_format_with_missing_columns_lists_present_columns():
    train = load("text.jsonl")["train"]
    with pytest.raises(SftlibError, match="needs column.*prompt, completion; the dataset has: text, index"):
        sources.normalize(train, "prompt_completion")


def test_missing_file_raises_naming_it():
    with pytest.raises(SftlibError, match="nope.jsonl"):
        load("./nope.jsonl")


def test_glob_matching_no_file_raises():
    with pytest.raises(SftlibError, match="matches no file"):
        load(str(FIXTURES / "nothing_*.jsonl"))


def test_malformed_json_line_names_file_and_line():
    with pytest.raises(SftlibError) as err:
        load("malformed.jsonl")
    assert "malformed.jsonl line 3" in err.value.message


def test_glob_loads_several_files_as_one_split():
    train = load(str(FIXTURES / "split_dir" / "*.jsonl"))["train"]
    assert len(train) == 6


def test_parquet_file_loads(tmp_path):
    path = tmp_path / "messages.parquet"
    load("messages.jsonl")["train"].remove_columns("index").to_parquet(str(path))
    train = load(str(path))["train"]
    assert formats.detect_format(train)[0] == "messages"
    assert len(train) == 3


def test_save_to_disk_folder_loads_dataset_and_dataset_dict(tmp_path):
    ds = load("alpaca.jsonl")["train"].remove_columns("index")
    ds.save_to_disk(str(tmp_path / "single"))
    assert len(load(str(tmp_path / "single"))["train"]) == 3
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    raw = load(str(tmp_path / "dict"), eval_split="validation")
    assert (len(raw["train"]), len(raw["eval"])) == (3, 1)


def test_folder_of_files_named_by_split_loads_each_split(tmp_path):
    shutil.copytree(FIXTURES / "split_dir", tmp_path / "d")
    raw = load(str(tmp_path / "d"), eval_split="test")
    assert (len(raw["train"]), len(raw["eval"])) == (4, 2)
    assert raw["eval"]["index"] == [0, 1]


def test_missing_split_lists_available_splits():
    with pytest.raises(SftlibError, match="no split 'validation'; it has: train"):
        load("text.jsonl", eval_split="validation")


def test_eval_size_cuts_eval_from_train_reproducibly_keeping_source_index(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(20)))
    a = load(str(path), eval_size=0.25)
    b = load(str(path), eval_size=0.25)
    assert (len(a["train"]), len(a["eval"])) == (15, 5)
    assert a["eval"]["index"] == b["eval"]["index"]
    assert sorted(list(a["train"]["index"]) + list(a["eval"]["index"])) == list(range(20))
    for row in a["eval"]:
        assert row["text"] == f"row {row['index']}"
    assert len(load(str(path), eval_size=3)["eval"]) == 3


def test_max_samples_applies_to_train_after_the_eval_cut(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(20)))
    raw = load(str(path), eval_size=5, max_samples=4)
    assert (len(raw["train"]), len(raw["eval"])) == (4, 5)


def test_eval_size_as_large_as_the_split_raises():
    with pytest.raises(SftlibError, match="eval_size=2"):
        load("text.jsonl", eval_size=2)


def test_normalize_alpaca_builds_system_user_assistant_messages():
    norm = sources.normalize(load("alpaca.jsonl")["train"], "alpaca")
    assert norm.column_names == ["messages", "index"]
    assert norm[0]["messages"] == [
        {"role": "user", "content": "Give the capital of France."},
        {"role": "assistant", "content": "Paris."},
    ]
    assert norm[1]["messages"][0]["content"] == "Add the numbers.\n\n2 and 2"
    assert norm[2]["messages"][0] == {"role": "system", "content": "You are a translator."}


def test_normalize_alpaca_csv_treats_empty_input_as_none():
    norm = sources.normalize(load("alpaca.csv")["train"], "alpaca")
    assert norm[0]["messages"][0]["content"] == "Give the capital of France."
    assert norm[2]["messages"][1]["content"] == "Line one,\nline two."


def test_normalize_sharegpt_maps_roles_to_messages():
    norm = sources.normalize(load("sharegpt.jsonl")["train"], "sharegpt")
    assert [m["role"] for m in norm[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert norm[0]["messages"][1] == {"role": "assistant", "content": "Paris."}


def test_normalize_keeps_every_message_key_drops_arrow_nulls_and_nulls_non_strings():
    ds = datasets.Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": "hi", "name": "x"},
                    {"role": "assistant", "content": "yo", "reasoning_content": "greet"},
                ]
            }
        ]
    )
    assert ds[0]["messages"][0]["reasoning_content"] is None  # Arrow's shared schema pads the key
    norm = sources.normalize(ds, "messages")
    assert norm[0] == {
        "messages": [
            {"role": "user", "content": "hi", "name": "x"},
            {"role": "assistant", "content": "yo", "reasoning_content": "greet"},
        ],
        "index": 0,
    }
    bad = sources.normalize(load("bad_messages.jsonl")["train"], "messages")
    assert bad[4]["messages"][1]["content"] is None  # a list became None -> non_string_content later


def test_a_single_file_has_only_a_train_split():
    for key in ("split", "eval_split"):
        with pytest.raises(SftlibError) as err:
            sources.load_raw(DatasetConfig(name=str(FIXTURES / "messages.jsonl"), **{key: "validation"}))
        assert "no split 'validation'; it has: train" in err.value.message and "eval_size" in err.value.fix


def test_normalize_conversational_prompt_completion_keeps_message_lists():
    norm = sources.normalize(load("prompt_completion_chat.jsonl")["train"], "prompt_completion")
    assert norm[2]["prompt"][1] == {"role": "assistant", "content": "Hi!"}
    assert norm[2]["completion"] == [{"role": "assistant", "content": "HI!"}]


def test_detection_is_logged_once_by_prepare(caplog, tokenizer):
    from sftlib.config import ModelConfig, RunConfig
    from sftlib.data import dataset

    cfg = RunConfig(
        model=ModelConfig(path="embedded:tiny-random-llama"),
        dataset=DatasetConfig(name=str(FIXTURES / "sharegpt.jsonl")),
    )
    with caplog.at_level(logging.INFO, logger="sftlib"):
        dataset.prepare(cfg, tokenizer)
    lines = [r.getMessage() for r in caplog.records if "format" in r.getMessage()]
    assert lines == [
        "dataset format: sharegpt (column `conversations` holds turns with `from`/`value` keys (ShareGPT))"
    ]
