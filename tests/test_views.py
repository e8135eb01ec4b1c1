"""What notebooks and `sftlib check` show: masks coloured under one legend, tables, the example browser."""

import datasets
import pytest

from sftlib.config import DatasetConfig, ModelConfig, RunConfig
from sftlib.data import dataset
from sftlib.suite import notebook
from sftlib.views import browser, report, tables, tokens


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
    page = tokens.masking_view_html(prepared.train, tokenizer, 5)
    for label, colour in tokens.TOKEN_STATES.values():
        assert label in page and colour in page
    assert page.count("Legend") == 1
    assert "↵<br>" in page and "&lt;|im_end|&gt;" in page
    row = prepared.train[0]
    assert f"row 0: {row['num_trained_tokens']} of {row['num_tokens']} tokens trained" in page


def test_turn_by_turn_shows_the_first_multi_turn_conversation(prepared, tokenizer):
    page = tokens.turn_by_turn_html(prepared.train, tokenizer)
    assert "row 1:" in page and "row 0:" not in page


def test_standalone_page_is_styled_and_tables_are_left_aligned():
    page = notebook.page(tables.table_html([{"a": "<x>", "b": 1}]), "T & t")
    assert page.startswith("<!doctype html>") and "<style>" in page and "<title>T &amp; t</title>" in page
    assert "&lt;x&gt;" in page and "text-align:left" in tables.table_html([{"a": 1}])


def test_drop_and_gate_rows_read_the_report(prepared):
    rows = tables.drop_rows(prepared.report)
    assert {"split": "train", "outcome": "kept", "count": 2, "meaning": "trained on, as 2 examples"} in rows
    cfg = RunConfig(ModelConfig(path="x"), DatasetConfig(name="y", max_dropped_fraction=0.25))
    (gate,) = tables.gate_rows(prepared, cfg)
    assert gate["dropped"] == "0.0% (gate: 25%)" and gate["rows"] == 2


def test_example_browser_is_a_live_widget_whose_buttons_and_slider_change_the_example(prepared, tokenizer):
    widget = browser.example_browser(prepared.train, tokenizer)
    (previous, following), slider, view = (
        widget.children[0].children,
        widget.children[1],
        widget.children[2],
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
    monkeypatch.setenv(browser.HEADLESS_ENV, "1")
    assert "Legend" in browser.browse(prepared.train, tokenizer, 1).data


WEEKDAY = {"type": "function", "function": {"name": "weekday", "parameters": {"type": "object"}}}


def agentic_rows() -> list[dict]:
    """3 tool-calling rows (with HTML in their text), 2 with reasoning, 1 plain chat."""
    tool = [
        {
            "tools": [WEEKDAY],
            "messages": [
                {"role": "user", "content": f"Day of 2021-03-0{i + 1}? <script>alert(1)</script>"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": f"c{i}",
                            "type": "function",
                            "function": {"name": "weekday", "arguments": '{"date": "2021-03-01"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": f"c{i}", "content": "Monday <b>"},
                {"role": "assistant", "content": "A Monday."},
            ],
        }
        for i in range(3)
    ]
    thought = [
        {"messages": [{"role": "user", "content": f"{i} + 1?"},
                      {"role": "assistant", "reasoning_content": f"{i} plus one", "content": str(i + 1)}]}
        for i in range(2)
    ]  # fmt: skip
    chat = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    return tool + thought + chat


@pytest.fixture(scope="module")
def agentic(tmp_path_factory):
    """The agentic rows prepared under Qwen3's template (which renders tools and reasoning)."""
    import json

    from sftlib.models import modeling

    path = tmp_path_factory.mktemp("agentic") / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in agentic_rows()))
    cfg = RunConfig(
        ModelConfig(path="embedded:tiny-random-llama", chat_template="qwen3"), DatasetConfig(name=str(path))
    )
    tokenizer = modeling.load_tokenizer(cfg.model)
    return cfg, tokenizer, dataset.prepare(cfg, tokenizer)


def test_rows_carrying_tools_tool_calls_tool_results_and_reasoning_are_counted(agentic, prepared):
    cfg, tokenizer, ready = agentic
    counts = {"tools": 3, "tool_calls": 3, "tool_results": 3, "reasoning": 2}
    assert ready.report["train"]["rows_with"] == counts
    assert prepared.report["train"]["rows_with"] == dict.fromkeys(counts, 0)
    text = report.format_report(ready, cfg, tokenizer)
    assert "train rows with tools: 3, tool calls: 3, tool results: 3, reasoning: 2" in text
    (row,) = tables.split_rows(ready.report)
    assert row["with tool calls"] == 3 and row["with reasoning"] == 2 and row["rows"] == 6


def test_views_show_tool_schemas_calls_results_and_reasoning_apart_and_escaped(agentic):
    cfg, tokenizer, ready = agentic
    source = dataset.row_lookup(cfg)
    first = {row["index"]: row for row in ready.train}
    tool_view = tokens.example_html(first[0], tokenizer, source)
    assert '<details class="part tools"' in tool_view and "weekday" in tool_view  # collapsed schemas
    assert (
        'class="part tool_call"' in tool_view
        and "weekday({&quot;date&quot;: &quot;2021-03-01&quot;})" in tool_view
    )
    assert 'class="part tool_result"' in tool_view and "Monday &lt;b&gt;" in tool_view
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in tool_view and "<script>" not in tool_view
    assert "Monday <b>" not in tool_view
    assert 'class="part reasoning"' not in tool_view
    reasoning_view = tokens.example_html(first[3], tokenizer, source)
    assert 'class="part reasoning"' in reasoning_view and "0 plus one" in reasoning_view
    assert "tool_call" not in reasoning_view and "tool_result" not in reasoning_view
    # The tokens are coloured as without the messages, and the page has both legends.
    assert (
        tokens.tokens_html(tokens.token_states(first[0]["input_ids"], first[0]["labels"], tokenizer))
        in tool_view
    )
    page = tokens.masking_view_html(ready.train, tokenizer, 6, source)
    assert page.count("Legend") == 1 and page.count("Messages:") == 1 and page.count("<table") == 6
    assert tokens.masking_view_html(ready.train, tokenizer, 1).count("<table") == 0  # no source: tokens only
