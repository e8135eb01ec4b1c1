"""Figures are built headless and saved as PNGs; HTML views (sftlib.views.tokens) escape text and carry one legend."""

import html

import pytest
from matplotlib.figure import Figure

from sftlib.errors import SftlibError
from sftlib.views import plots, tables, tokens

LOG_HISTORY = [
    {"loss": 2.5, "step": 10, "epoch": 0.1},
    {"loss": 1.2, "step": 20, "epoch": 0.2},
    {"eval_loss": 1.4, "step": 20, "epoch": 0.2},
    {"train_runtime": 12.0, "step": 20},
]
ROWS = [
    {
        "prompt": [{"role": "user", "content": "Date: <b>5 Mar 2021</b>"}],
        "reference": "2021-03-05",
        "base": "Sure! & more",
        "tuned": "2021-03-05",
    },
    {"prompt": "5.3.2021", "reference": "2021-03-05", "base": "2021-03-05\n", "tuned": "2021-05-03"},
]


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_curve_plots_train_and_eval_loss(tmp_path):
    fig = plots.loss_curve(LOG_HISTORY, path=tmp_path / "loss.png")
    assert isinstance(fig, Figure) and _is_png(tmp_path / "loss.png")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["train loss", "eval loss"]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [10, 20]


def test_loss_curve_without_eval_or_any_loss():
    assert [ln.get_label() for ln in plots.loss_curve(LOG_HISTORY[:2]).axes[0].get_lines()] == ["train loss"]
    assert plots.loss_curve([]).axes[0].get_lines() == []


def test_length_histograms_mark_max_seq_length_where_it_is_in_view(tmp_path):
    fig = plots.length_histograms(
        [10, 20, 480], [5, 600], max_seq_length=512, path=tmp_path / "sub" / "len.png"
    )
    assert _is_png(tmp_path / "sub" / "len.png")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert any(list(line.get_xdata()) == [512, 512] for line in ax.get_lines())
    assert "1 over the limit" in fig.axes[1].get_title()


def test_length_histograms_zoom_to_short_data_and_name_the_limit():
    fig = plots.length_histograms([10, 20, 30], [5, 8], max_seq_length=512)
    for ax, top in zip(fig.axes, (30, 8), strict=True):
        assert ax.get_xlim()[1] < 2 * top  # the bars fill the plot
        assert not ax.get_lines() and "limit 512 off to the right" in ax.get_title()


def test_trained_fraction_histogram(tmp_path):
    fig = plots.trained_fraction_histogram([0.0, 0.2, 0.5, 1.0], path=tmp_path / "frac.png")
    assert _is_png(tmp_path / "frac.png") and "1 with nothing trained" in fig.axes[0].get_title()


def test_before_after_table_marks_correct_answers(tmp_path):
    fig = plots.before_after_table(ROWS, path=tmp_path / "table.png")
    assert _is_png(tmp_path / "table.png")
    texts = [cell.get_text().get_text() for cell in fig.axes[0].tables[0].get_celld().values()]
    assert "✓ 2021-03-05" in texts and "✗ Sure! & more" in texts
    assert "✓ 2021-03-05↵ " in texts  # an answer right after .strip() counts as right
    assert "✗ 2021-05-03" in texts


def test_before_after_without_references_marks_nothing():
    unscored = [{**row, "reference": None} for row in ROWS]
    fig = plots.before_after_table(unscored)
    texts = [cell.get_text().get_text() for cell in fig.axes[0].tables[0].get_celld().values()]
    assert "reference" not in texts and not any(t.startswith(("✓", "✗")) for t in texts)
    assert "✓" not in tables.before_after_html(unscored) and "reference" not in tables.before_after_html(
        unscored
    )


def test_before_after_html_escapes_text():
    out = tables.before_after_html(ROWS)
    assert "&lt;b&gt;5 Mar 2021&lt;/b&gt;" in out and "<b>" not in out
    assert "Sure! &amp; more" in out
    assert out.count("✓") == 2 and out.count("✗") == 2


def test_token_html_shows_special_tokens_whitespace_and_a_legend():
    states = [("<|im_start|>", 0), ("user", 0), ("\n", 0), ("a<b", 0), (" 2021", 1), ("<|im_end|>", 1)]
    out = tokens.legend_html() + tokens.tokens_html(states)
    assert "&lt;|im_end|&gt;" in out and "<|im_end|>" not in out
    assert "a&lt;b" in out
    assert "·2021" in out
    assert "↵<br>" in out
    assert out.count("Legend") == 1
    for label, colour in tokens.TOKEN_STATES.values():
        assert html.escape(label) in out and colour in out


def test_token_view_html_refuses_unknown_states():
    with pytest.raises(SftlibError, match=r"states \[7\]"):
        tokens.tokens_html([("x", 7)])
