"""The demo task: deterministic, disjoint splits, answers that are the ISO form of the prompt's date."""

import datetime as dt
import re
from pathlib import Path

import pytest

from sftlib import demo
from sftlib.errors import SftlibError

COMMITTED = Path(__file__).resolve().parents[1] / demo.DATA_DIR


def test_build_demo_rows_is_deterministic_for_a_seed():
    assert demo.build_demo_rows(50, 10, seed=3) == demo.build_demo_rows(50, 10, seed=3)
    assert demo.build_demo_rows(50, 10, seed=3) != demo.build_demo_rows(50, 10, seed=4)


def test_test_split_never_shares_a_date_or_prompt_with_train():
    train, test = demo.build_demo_rows()
    assert len(train) == demo.N_TRAIN and len(test) == demo.N_EVAL >= 50
    train_answers = {r["messages"][1]["content"] for r in train}
    train_prompts = {r["messages"][0]["content"] for r in train}
    assert not train_answers & {r["messages"][1]["content"] for r in test}
    assert not train_prompts & {r["messages"][0]["content"] for r in test}


def test_rows_are_user_then_assistant_with_an_iso_answer():
    train, test = demo.build_demo_rows(200, 64)
    for row in train + test:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].startswith(demo.INSTRUCTION)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", assistant["content"])
        dt.date.fromisoformat(assistant["content"])


def test_every_style_appears_in_the_test_split():
    _, test = demo.build_demo_rows()
    prompts = [r["messages"][0]["content"] for r in test]
    assert any("(US)" in p for p in prompts) and any("(UK)" in p for p in prompts)
    assert any(p.split(": ", 1)[1].startswith("the ") for p in prompts)
    assert len(test) >= len(demo.STYLES)


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("month_ordinal_year", "March 5th, 2021"),
        ("day_mon_year", "5 Mar 2021"),
        ("words_of_month", "the fifth of March, 2021"),
        ("us_slashes", "03/05/2021 (US)"),
        ("uk_slashes", "05/03/2021 (UK)"),
        ("weekday_month_day_year", "Friday, March 5, 2021"),
        ("european_dots", "5.3.2021"),
    ],
)
def test_make_row_writes_the_date_in_its_style(style, expected):
    row = demo.make_row(dt.date(2021, 3, 5), style)
    assert row["messages"][0]["content"] == f"{demo.INSTRUCTION} {expected}"
    assert row["messages"][1]["content"] == "2021-03-05"


@pytest.mark.parametrize(
    ("day", "text"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (11, "11th"), (12, "12th"), (22, "22nd"), (31, "31st")],
)
def test_ordinal_suffix(day, text):
    assert demo.ordinal_suffix(day) == text


def test_committed_files_are_what_the_generator_writes(tmp_path):
    paths = demo.write_demo_dataset(tmp_path)
    for split in ("train", "test"):
        assert paths[split].read_bytes() == (COMMITTED / f"{split}.jsonl").read_bytes(), (
            f"{COMMITTED / split}.jsonl is stale: regenerate it with `python -c 'from sftlib import demo; "
            "demo.write_demo_dataset()'`"
        )


def test_split_prompt_reference_and_prompt_completion_form():
    train, _ = demo.build_demo_rows(3, 0)
    prompts, references = demo.split_prompt_reference(train)
    assert prompts == [r["messages"][:1] for r in train]
    assert references == [r["messages"][1]["content"] for r in train]
    pc = demo.to_prompt_completion(train[0])
    assert pc["prompt"] == train[0]["messages"][:1] and pc["completion"] == train[0]["messages"][1:]
    with pytest.raises(SftlibError, match="row 0"):
        demo.split_prompt_reference([{"messages": [{"role": "user", "content": "hi"}]}])


def test_too_many_rows_is_a_clear_error():
    with pytest.raises(SftlibError, match="distinct dates"):
        demo.build_demo_rows(10**6, 1)
