"""Dataset mixtures: `dataset:` as a list of sources, each loaded, normalized and masked by its own
settings, then concatenated and shuffled with the seed; each source reported on its own."""

import json
from pathlib import Path

import datasets
import pytest

from sftlib.config import config_from_dict
from sftlib.data import dataset, masking
from sftlib.errors import SftlibError
from sftlib.views import tables

TINY = "embedded:tiny-random-llama"


@pytest.fixture(autouse=True)
def hf_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def two_turn_chats(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Say {i}."},
                {"role": "assistant", "content": f"{i}"},
                {"role": "user", "content": "Again."},
                {"role": "assistant", "content": f"{i} again"},
            ]
        }
        for i in range(n)
    ]


def completions(n: int) -> list[dict]:
    return [{"prompt": f"Count to {i}:", "completion": " ".join(map(str, range(1, i + 2)))} for i in range(n)]


def mixture(tmp_path, **second) -> dict:
    return {
        "model": {"path": TINY},
        "dataset": [
            {"name": write(tmp_path / "chats.jsonl", two_turn_chats(20)), "train_on": "last_assistant"},
            {"name": write(tmp_path / "pc.jsonl", completions(30)), **second},
        ],
        "training": {"output_dir": str(tmp_path / "out"), "seed": 7},
    }


def test_each_source_is_masked_by_its_own_settings_and_reported_with_its_share(tmp_path, tokenizer):
    cfg = config_from_dict(mixture(tmp_path, fraction=0.5, eval_size=5))
    prepared = dataset.prepare(cfg, tokenizer)
    chats, pcs = prepared.sources
    assert (chats["format"], pcs["format"]) == ("messages", "prompt_completion")
    assert (chats["train"]["rows"], pcs["train"]["rows"], pcs["eval"]["rows"]) == (
        20,
        12,
        5,
    )  # half of 25 rows
    assert prepared.report["train"]["examples"] == 32 and "eval" not in chats
    assert chats["train"]["share_of_examples"] == pytest.approx(20 / 32, abs=1e-3)
    train = prepared.train
    assert sorted(set(train["source"])) == [0, 1] and train["source"][:32] != sorted(
        train["source"]
    )  # shuffled
    for row in train:
        runs = masking.trained_runs(row["labels"])
        assert len(runs) == 1  # last_assistant: one trained turn per chat; a completion is one run
    assert set(prepared.eval["source"]) == {1}
    gates = tables.gate_rows(prepared, cfg)  # one row per source and split, each with its own gate
    assert [g["split"] for g in gates] == [
        f"{chats['name']} train",
        f"{pcs['name']} train",
        f"{pcs['name']} eval",
    ]


def test_a_source_over_its_drop_gate_stops_the_run_naming_the_source(tmp_path, tokenizer):
    raw = mixture(tmp_path)
    bad = [{"messages": [{"role": "user", "content": "only a question"}]}] * 5
    raw["dataset"][1] = {"name": write(tmp_path / "bad.jsonl", bad)}
    with pytest.raises(SftlibError) as err:
        dataset.prepare(config_from_dict(raw), tokenizer)
    assert "train of " in err.value.message and "bad.jsonl" in err.value.message


def test_a_single_mapping_is_one_source_and_list_items_are_checked(tmp_path):
    raw = mixture(tmp_path)
    single = config_from_dict({**raw, "dataset": raw["dataset"][0]})
    assert len(single.sources) == 1 and single.dataset_label.endswith("chats.jsonl")
    with pytest.raises(SftlibError, match=r"unknown config key `dataset\[1\]\.nmae`"):
        config_from_dict({**raw, "dataset": [raw["dataset"][0], {"nmae": "x"}]})
    with pytest.raises(
        SftlibError, match=r"dataset\[1\]\.fraction and dataset\[1\]\.max_samples are both set"
    ):
        config_from_dict(mixture(tmp_path, fraction=0.5, max_samples=3))
    with pytest.raises(SftlibError, match="empty list"):
        config_from_dict({**raw, "dataset": []})
