"""What notebooks and `sftlib check` show: masks coloured under one legend, tables, the example browser."""

import datasets
import pytest

from sftlib import dataset, notebook, views
from sftlib.config import DatasetConfig, ModelConfig, RunConfig


@pytest.fixture(scope="module")
def prepared(tokenizer, tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "5 Mar 2021"}, {"role": "assistant", "content": "2021-03-05"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    datasets.config.HF_DATASETS_CACHE = str(tmp_path_factory.mktemp("hf"))
    cfg = RunConfig(ModelConfig(path="embedded:tiny-random-llama"), DatasetConfig(name=str(path)))
    return dataset.prepare(cfg, tokenizer)


def test_masking_view_colours_each_token_state_under_one_legend(prepared, tokenizer):
    page = views.masking_view_html(prepared.train, tokenizer, 5)
    for label, colour in views.TOKEN_STATES.values():
        assert label in page and colour in page
    assert page.count("Legend") == 1
    assert "↵<br>" in page and "&lt;|im_end|&gt;" in page
    row = prepared.train[0]
    assert f"row 0: {row['num_trained_tokens']} of {row['num_tokens']} tokens trained" in page


def test_turn_by_turn_shows_the_first_multi_turn_conversation(prepared, tokenizer):
    page = views.turn_by_turn_html(prepared.train, tokenizer)
    assert "row 1:" in page and "row 0:" not in page


def test_standalone_page_is_styled_and_tables_are_left_aligned():
    page = notebook.page(views.table_html([{"a": "<x>", "b": 1}]), "T & t")
    assert page.startswith("<!doctype html>") and "<style>" in page and "<title>T &amp; t</title>" in page
    assert "&lt;x&gt;" in page and "text-align:left" in views.table_html([{"a": 1}])


def test_drop_and_gate_rows_read_the_report(prepared):
    rows = views.drop_rows(prepared.report)
    assert {"split": "train", "outcome": "kept", "count": 2, "meaning": "trained on, as 2 examples"} in rows
    (gate,) = views.gate_rows(prepared.report, 0.1)
    assert gate["dropped"] == "0.0% (gate: 10%)" and gate["rows"] == 2


def test_example_browser_is_a_live_widget_whose_buttons_and_slider_change_the_example(prepared, tokenizer):
    browser = views.example_browser(prepared.train, tokenizer)
    (previous, following), slider, view = (
        browser.children[0].children,
        browser.children[1],
        browser.children[2],
    )
    assert slider.layout.width == "100%" and slider.max == len(prepared.train) - 1
    first = view.value
    following.click()
    assert slider.value == 1 and view.value != first and "row 1" in view.value
    following.click()  # already the last example: stays
    assert slider.value == 1
    previous.click()
    assert slider.value == 0 and view.value == first


def test_browse_is_static_under_the_pipeline(prepared, tokenizer, monkeypatch):
    monkeypatch.setenv(notebook.HEADLESS_ENV, "1")
    assert "Legend" in views.browse(prepared.train, tokenizer, 1).data
