"""What a notebook writes: its run folder, its recorded results, its figures and pages, and its HTML copy.

Notebooks hold parameters, calls and display; these are the calls that put things on disk in the
same places for every notebook (read back by the tests, the pipeline and later notebooks). Figures
are `matplotlib.figure.Figure` objects built without pyplot (sftlib.views.plots). Nothing runs at import.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from sftlib.errors import SftlibError
from sftlib.views.browser import is_headless

# nbconvert's lab template drops an image's alt text (IPython's Image(alt=...) keeps it in the output's
# metadata) and then warns that it is missing; this template puts it back. An image without alt text
# in its metadata is left alone, so that warning still means what it says.
HTML_TEMPLATE = "sftlib-index.html.j2"
HTML_TEMPLATE_SOURCE = """{%- extends 'index.html.j2' -%}
{% block data_png scoped %}
{%- set alt = output | get_metadata('alt', 'image/png') -%}
{%- if alt -%}
{{ super() | replace('<img src=', '<img alt="' ~ (alt | escape_html) ~ '" src=', 1) }}
{%- else -%}
{{ super() }}
{%- endif -%}
{% endblock data_png %}
"""


def go_to_project_root() -> Path:
    """Move to the folder the notebook's relative paths (CONFIG, the config's own paths) mean; return it.

    Under the pipeline (`sftlib pipeline` / `sftlib demo`) the kernel already runs in the user's working
    directory, where their paths are relative to: it stays there. Opened in JupyterLab from a checkout's
    `notebooks/`, it moves up to the checkout (the folder holding configs/ and notebooks/), so the
    default CONFIG, `configs/...`, resolves. Elsewhere it stays in the folder the notebook runs in.
    """
    here = Path.cwd().resolve()
    if is_headless():
        return here
    for folder in (here, *here.parents):
        if (folder / "configs").is_dir() and (folder / "notebooks").is_dir():
            os.chdir(folder)
            return folder
    return here


def run_dir(path: str | Path) -> Path:
    """The folder results and pictures go to, created if needed."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def record(run_dir_path: str | Path, name: str, results: dict[str, Any]) -> None:
    """Write a notebook's results to RUN_DIR/<name>.json (read by tests, the pipeline and later notebooks)."""
    path = run_dir(run_dir_path) / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def save_figure(fig, path: str | Path):
    """Save `fig` as a PNG at `path`; return that PNG as an IPython image, so a cell ending with this
    call shows the picture (and an executed or exported notebook embeds it) without pyplot."""
    from IPython.display import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return Image(filename=str(path), alt=path.stem.replace("_", " "))


# The stylesheet of a saved page: the token views and tables of sftlib.views.tokens, readable on their own.
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
    ".tokens{font-family:ui-monospace,monospace;line-height:1.9;white-space:normal;margin:.3em 0 1.2em}"
    "table.sftlib{border-collapse:collapse}table.sftlib th,table.sftlib td{text-align:left;padding:2px 8px;"
    "border-bottom:1px solid #eee;vertical-align:top}"
)


def page(body: str, title: str) -> str:
    """An HTML fragment (e.g. from sftlib.views.tokens) as a standalone, styled page."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def save_html(body: str, path: str | Path, title: str) -> None:
    """Write an HTML fragment as a standalone, styled page (`page`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(body, title), encoding="utf-8")


def export_to_html(executed: Path) -> Path:
    """An HTML copy of an executed notebook next to it (pictures embedded)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    try:
        exporter = HTMLExporter(
            extra_loaders=[DictLoader({HTML_TEMPLATE: HTML_TEMPLATE_SOURCE})], template_file=HTML_TEMPLATE
        )
        body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    except ValueError as exc:
        if "template" not in str(exc).lower():
            raise
        # Seen with `pip install --target`: nbconvert's templates are data files under <target>/share/jupyter.
        raise SftlibError(
            f"nbconvert can't find its HTML templates, so {executed.name} ran but was not exported "
            f"({str(exc).splitlines()[0].rstrip(': ')}).",
            "reinstall nbconvert into the environment (`pip install --force-reinstall nbconvert`), or set "
            "JUPYTER_PATH to the share/jupyter folder that holds nbconvert/templates.",
        ) from None
    target = executed.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target
