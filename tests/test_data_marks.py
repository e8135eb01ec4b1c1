"""What the data says about itself: per-turn training flags, content parts, and the independent audit.

- `weight: 0` / `train: false` on an assistant turn (axolotl, LLaMA-Factory) holds that turn back, in
  ShareGPT and OpenAI-shape rows: its tokens are -100, the others trained as before, the report counts it;
  a bad flag or a prompt turn flagged to train is a counted drop.
- OpenAI content parts (`[{"type": "text", "text": ...}]`) in every role train with the labels of the
  same rows written with string content, on Qwen3's and Llama 3.1's templates and real vocabularies,
  whether the template reads parts (Qwen3.5) or strings (Qwen3, Llama 3.1: joined, as vLLM serves
  them); a non-text part is a counted drop naming its type.
- The independent audit re-renders through `apply_chat_template`: a start offset planted in masking's
  `render_turn` passes masking's own audit and fails this one.
"""

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import vocabularies
from test_chat_templates import TEMPLATES

from sftlib.config import DatasetConfig, ModelConfig, RunConfig
from sftlib.data import audit, dataset, masking, rendering
from sftlib.errors import DropExample, SftlibError
from sftlib.lessons import tool_task

ROOT = Path(__file__).resolve().parents[1]
TINY = "embedded:tiny-random-llama"


def run_config(path: Path, **dataset_kwargs) -> RunConfig:
    return RunConfig(
        model=ModelConfig(path=TINY, max_seq_length=512),
        dataset=DatasetConfig(name=str(path), **dataset_kwargs),
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trained(tokenizer, row) -> list[str]:
    return [
        tokenizer.decode(row["input_ids"][a:b], skip_special_tokens=False)
        for a, b in masking.trained_runs(row["labels"])
    ]


SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "Capital of France?", "weight": 0},
        {"from": "gpt", "value": "Lyon.", "weight": 0},  # a wrong answer, kept as context only
        {"from": "human", "value": "Are you sure?", "weight": 0},
        {"from": "gpt", "value": "Paris.", "weight": 1},
    ]
}


def test_weight_0_holds_a_sharegpt_turn_back_and_the_report_counts_it(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "flags.jsonl", [SHAREGPT, {"conversations": SHAREGPT["conversations"][:2]}])
    prepared = dataset.prepare(run_config(path, max_dropped_fraction=0.5), tokenizer, splits=("train",))
    (row,) = prepared.train
    assert trained(tokenizer, row) == ["Paris.<|im_end|>"]  # "Lyon." is in the input, never trained
    assert "Lyon." in tokenizer.decode(row["input_ids"])
    report = prepared.report["train"]
    assert report["turns_held_back"] == 1  # Lyon, in the kept row
    assert report["dropped"] == {"all_turns_held_back": 1}  # the second row: its only turn held back


def test_sftlib_masks_shows_the_held_back_turn_untrained(tmp_path):
    path = write_jsonl(tmp_path / "flags.jsonl", [SHAREGPT])
    out = tmp_path / "masks.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{path: {TINY}, max_seq_length: 256}}\ndataset: {{name: {path}}}\ntraining: {{output_dir: {tmp_path / 'run'}}}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sftlib",
            "masks",
            "--config",
            str(config),
            "--limit",
            "1",
            "--text",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["trained"] == ["Paris.<|im_end|>"] and "Lyon." in record["text"]


def test_train_false_holds_back_an_openai_turn_and_last_assistant_respects_it(tokenizer):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "train": False},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!", "train": True},
    ]
    (tokens,), conversation = masking.tokenize_example({"index": 0, "messages": messages}, tokenizer)
    assert trained(tokenizer, dataclasses.asdict(tokens)) == ["Bye!<|im_end|>"]
    assert conversation.held_back == (1,)
    assert all("train" not in m for m in conversation.messages)  # the template never sees the flag
    last_held = [*messages[:3], {**messages[3], "train": False}]
    with pytest.raises(DropExample, match="all_turns_held_back"):
        masking.tokenize_example({"index": 0, "messages": last_held}, tokenizer, train_on="last_assistant")


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ({"role": "assistant", "content": "x", "weight": 0.5}, "weight=0.5"),
        ({"role": "assistant", "content": "x", "weight": True}, "weight=True"),
        ({"role": "assistant", "content": "x", "train": "yes"}, "train='yes'"),
        ({"role": "user", "content": "x", "weight": 1}, "message 0 \\(user\\) is marked to train"),
    ],
)
def test_a_bad_training_flag_is_a_counted_drop_naming_it(tokenizer, message, says):
    messages = (
        [message, {"role": "assistant", "content": "ok"}]
        if message["role"] == "user"
        else [
            {"role": "user", "content": "q"},
            message,
        ]
    )
    with pytest.raises(DropExample, match=f"bad_train_flag: .*{says}"):
        masking.tokenize_example({"index": 0, "messages": messages}, tokenizer)


# ------------------------------------------------------------------------------- content parts


def parts(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


def as_parts(row: dict) -> dict:
    """The row with every message's content as one text part, as OpenAI's API logs write it."""
    return {
        **row,
        "messages": [
            {**m, "content": parts(m["content"])} if m.get("content") else m for m in row["messages"]
        ],
    }


def part_rows() -> list[dict]:
    """Tool chats (system, user, assistant call, tool result, answer) and plain chats: parts in every role."""
    train, _ = tool_task.build_tool_rows(12, 4)
    return train[:6]


def _template_tokenizer(vocabulary: str, template: str):
    tok = copy.copy(vocabularies.build(vocabulary))
    tok.chat_template = (TEMPLATES / f"{template}.jinja").read_text()
    return tok, vocabularies.stop_ids(vocabulary, tok)


@pytest.mark.parametrize(
    ("vocabulary", "template", "reads_parts"),
    [("qwen3", "qwen3", False), ("llama3", "llama3_1", False), ("qwen3_5", "qwen3_5_nothink", True)],
)
def test_content_parts_in_every_role_train_with_the_labels_of_string_content(
    vocabulary, template, reads_parts
):
    tok, stops = _template_tokenizer(vocabulary, template)
    assert all(
        rendering.reads_parts(tok, role) == reads_parts for role in ("system", "user", "assistant", "tool")
    )
    for k, row in enumerate(part_rows()):
        if template == "llama3_1" and any(m.get("tool_calls") for m in row["messages"]):
            row = {**row, "messages": row["messages"][:3]}  # Llama 3.1 keeps no call id: a plain chat
            row["messages"][2] = {"role": "assistant", "content": "2021-03-05"}
        example = {"index": k, **row}
        written = {"index": k, **as_parts(row)}
        assert any(isinstance(m["content"], list) for m in written["messages"])
        strings, _ = masking.tokenize_example(example, tok, stops)
        from_parts, _ = masking.tokenize_example(written, tok, stops)
        assert [(t.input_ids, t.labels) for t in from_parts] == [(t.input_ids, t.labels) for t in strings]
        for tokens in from_parts:
            audit.check(tokens, written, tok, stops)
            audit.check_independently(tokens, written, tok)


def test_several_text_parts_are_joined_for_a_string_template_as_vllm_serves_it(tokenizer):
    two = [
        {"type": "text", "text": "Write this date as YYYY-MM-DD:"},
        {"type": "text", "text": "March 5th, 2021"},
    ]
    joined = "Write this date as YYYY-MM-DD:\nMarch 5th, 2021"
    messages = [{"role": "user", "content": two}, {"role": "assistant", "content": "2021-03-05"}]
    (tokens,), _ = masking.tokenize_example({"index": 0, "messages": messages}, tokenizer)
    (same,), _ = masking.tokenize_example(
        {"index": 0, "messages": [{"role": "user", "content": joined}, messages[1]]}, tokenizer
    )
    assert (tokens.input_ids, tokens.labels) == (same.input_ids, same.labels)


def test_a_non_text_part_is_a_counted_drop_naming_its_type(tokenizer, tmp_path):
    image = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "x.png"}}]
    rows = [
        {"messages": [{"role": "user", "content": image}, {"role": "assistant", "content": "A cat."}]},
        {
            "messages": [
                {"role": "user", "content": parts("Hi")},
                {"role": "assistant", "content": parts("Hello.")},
            ]
        },
    ]
    path = write_jsonl(tmp_path / "parts.jsonl", rows)
    prepared = dataset.prepare(run_config(path, max_dropped_fraction=0.5), tokenizer, splits=("train",))
    report = prepared.report["train"]
    assert report["dropped"] == {"non_text_part": 1}
    assert "holds a 'image_url' part" in report["drop_first"]["non_text_part"]["detail"]
    assert trained(tokenizer, prepared.train[0]) == ["Hello.<|im_end|>"]
    with pytest.raises(SftlibError, match="non_text_part"):
        dataset.prepare(
            run_config(write_jsonl(tmp_path / "all.jsonl", rows[:1])), tokenizer, splits=("train",)
        )


# ------------------------------------------------------------------------------- the independent audit


def test_a_start_offset_planted_in_render_turn_passes_maskings_audit_and_fails_the_independent_one(
    tokenizer, monkeypatch, tmp_path
):
    real = rendering.render_turn

    def off_by_one(*args, **kwargs):  # the planted bug: generation "starts" one character early
        turn = real(*args, **kwargs)
        return dataclasses.replace(turn, start=turn.start - 1)

    monkeypatch.setattr(rendering, "render_turn", off_by_one)
    example = {
        "index": 0,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye!"},
        ],
    }
    examples, _ = masking.tokenize_example(example, tokenizer)
    for tokens in examples:
        audit.check(tokens, example, tokenizer)  # masking's own audit reads the same wrong start
    assert trained(tokenizer, dataclasses.asdict(examples[0]))[0] == "\nHello.<|im_end|>"
    with pytest.raises(DropExample, match="audit_failed: .*not the prompt as apply_chat_template renders it"):
        audit.check_independently(examples[0], example, tokenizer)
    rows = [{"messages": example["messages"]}] * 3
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(SftlibError, match="audit_failed 3 .*this is a masking bug"):
        dataset.prepare(run_config(path), tokenizer, splits=("train",))  # the run stops, naming it


def test_the_independent_audit_covers_small_splits_whole_and_a_fixed_sample_of_large_ones():
    assert all(audit.selected(i, audit.INDEPENDENT_ROWS, seed=1) for i in range(audit.INDEPENDENT_ROWS))
    rows = 100_000
    chosen = [i for i in range(rows) if audit.selected(i, rows, seed=1)]
    assert abs(len(chosen) - audit.INDEPENDENT_ROWS) < 200  # about that many, whatever the size
    assert chosen == [i for i in range(rows) if audit.selected(i, rows, seed=1)]  # the same rows each run
    assert chosen != [i for i in range(rows) if audit.selected(i, rows, seed=2)]


def test_the_report_counts_the_rows_the_independent_audit_rendered(tokenizer, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": "a"}]}
        for k in range(5)
    ]
    prepared = dataset.prepare(
        run_config(write_jsonl(tmp_path / "r.jsonl", rows)), tokenizer, splits=("train",)
    )
    assert prepared.report["train"]["independently_audited"] == 5
