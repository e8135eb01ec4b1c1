"""The example browser: in JupyterLab a slider and buttons over every prepared example, coloured as in
notebook 02; under the pipeline, where no one moves a slider, the first examples as static HTML.

`HEADLESS_ENV` is what says which: the pipeline sets it for the kernels it starts.
"""

from __future__ import annotations

import os

from sftlib.views.tokens import example_html, legends, masking_view_html

HEADLESS_ENV = "SFTLIB_HEADLESS"  # set by sftlib.suite.pipeline: no one at the notebook, render statically


def is_headless() -> bool:
    """True under the pipeline (papermill): show static renderings instead of interactive widgets."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


def example_browser(ds, tokenizer, row_of=None):
    """A widget over the examples of a prepared split: a full-width slider, previous/next buttons, and the
    example's tokens coloured as in notebook 02."""
    import ipywidgets as widgets

    last = max(len(ds) - 1, 0)
    slider = widgets.IntSlider(
        value=0,
        min=0,
        max=last,
        description="example",
        continuous_update=False,
        layout=widgets.Layout(width="100%"),
        style={"description_width": "initial"},
    )
    previous, following = widgets.Button(description="◀ previous"), widgets.Button(description="next ▶")
    view = widgets.HTML(legends(row_of) + example_html(ds[0], tokenizer, row_of))

    def show(change):
        view.value = legends(row_of) + example_html(ds[change["new"]], tokenizer, row_of)

    slider.observe(show, names="value")
    previous.on_click(lambda _: setattr(slider, "value", max(slider.value - 1, 0)))
    following.on_click(lambda _: setattr(slider, "value", min(slider.value + 1, last)))
    return widgets.VBox(
        [widgets.HBox([previous, following]), slider, view], layout=widgets.Layout(width="100%")
    )


def browse(ds, tokenizer, n_static: int = 3, row_of=None):
    """The example browser when a person is at the notebook; under the pipeline (no one to move a slider,
    and widgets don't render in exported HTML) the first `n_static` examples as static HTML."""
    from IPython.display import HTML

    if not is_headless():
        return example_browser(ds, tokenizer, row_of)
    return HTML(masking_view_html(ds, tokenizer, n_static, row_of))
