"""Notebook 05's chat: type a message, and the base and the tuned model answer side by side, token by
token, each keeping its own multi-turn history; a system prompt box and a reset button. With tools, each
side runs the real tool loop, its calls, results and answer shown as separate parts; reasoning is shown
apart from the answer.

Under the pipeline (no one at the notebook) it loads nothing and says where the chat appears.
"""

from __future__ import annotations

import html

from sftlib.inference.chat import Part, Session
from sftlib.views.browser import is_headless

PART_STYLES = {
    "user": "background:#f0f0f0; padding:4px 8px; border-radius:6px; margin:4px 0",
    "reasoning": "color:#777; font-style:italic; border-left:3px solid #ccc; padding-left:6px; margin:4px 0",
    "call": "font-family:monospace; border-left:3px solid #3182bd; padding-left:6px; margin:4px 0",
    "result": "font-family:monospace; border-left:3px solid #31a354; padding-left:6px; margin:4px 0",
    "answer": "padding:2px 0; margin:4px 0",
    "error": "color:#b00; margin:4px 0",
    "live": "padding:2px 0; margin:4px 0; color:#333",
}
LABELS = {"reasoning": "thinking", "call": "tool call", "result": "tool result", "answer": "", "error": ""}


def part_html(kind: str, text: str) -> str:
    label = LABELS.get(kind, "")
    head = f"<b>{label}:</b> " if label else ""
    return f'<div class="sftlib-chat-{kind}" style="{PART_STYLES[kind]}">{head}{html.escape(text)}</div>'


class Side:
    """One model's column: its session, and the HTML of its conversation so far."""

    def __init__(self, name: str, session: Session):
        import ipywidgets as widgets

        self.name, self.session, self.shown = name, session, []
        self.view = widgets.HTML(value="")
        self.view.add_class(f"sftlib-chat-{name}")
        self.box = widgets.VBox(
            [widgets.HTML(f"<b>{name}</b>"), self.view], layout=widgets.Layout(width="50%")
        )

    def send(self, text: str) -> list[Part]:
        self.shown.append(part_html("user", text))
        live: list[str] = []

        def piece(p: str) -> None:
            from sftlib.inference.tool_loop import without_specials

            live.append(without_specials(p, self.session.engine.specials))
            self.view.value = "".join(self.shown) + part_html("live", "".join(live))

        parts = self.session.send(text, piece)
        self.shown += [part_html(p.kind, p.text) for p in parts]
        self.view.value = "".join(self.shown)
        return parts

    def reset(self) -> None:
        self.session.reset()
        self.shown = []
        self.view.value = ""


def chat_box(sides: list[Side], system: str = ""):
    """The widget over `sides`: the system prompt, the columns, the message box, Send and Reset."""
    import ipywidgets as widgets

    system_box = widgets.Textarea(
        value=system, placeholder="system prompt (optional)", layout=widgets.Layout(width="100%")
    )
    message = widgets.Text(
        placeholder="type a message, then Enter or Send", layout=widgets.Layout(width="70%")
    )
    send, reset = widgets.Button(description="Send"), widgets.Button(description="Reset")
    status = widgets.HTML("")

    def on_send(_=None) -> None:
        text = message.value.strip()
        if not text:
            return
        message.value, send.disabled = "", True
        try:
            for side in sides:
                side.session.system = system_box.value.strip() or None
                status.value = f"<i>{side.name} is answering…</i>"
                side.send(text)
            status.value = ""
        except Exception as exc:  # shown in the widget: a callback's exception would vanish in the log
            status.value = f'<span style="color:#b00">error: {html.escape(str(exc))}</span>'
        finally:
            send.disabled = False

    def on_reset(_=None) -> None:
        for side in sides:
            side.reset()
        status.value = "<i>conversation reset</i>"

    send.on_click(on_send)
    message.on_submit(on_send)
    reset.on_click(on_reset)
    box = widgets.VBox(
        [system_box, widgets.HBox([side.box for side in sides]), widgets.HBox([message, send, reset]), status]
    )
    box.add_class("sftlib-chat")
    return box


def for_notebook(cfg, evaluation, use_adapter: bool, tools: str, max_rounds: int, max_new_tokens: int = 256):
    """Notebook 05's chat: the base and the tuned model of `cfg`; the system prompt and template context
    of the first evaluated prompt (tools included, as trained); the tool loop when `tools` names them."""
    import ipywidgets as widgets

    if is_headless():
        return widgets.HTML("<i>The chat with both models appears when this notebook runs in JupyterLab.</i>")
    from sftlib.inference import chat, evaluate, loading, tool_formats

    first = evaluation.prompts[0] if evaluation.prompts else []
    system = first[0]["content"] if first and isinstance(first, list) and first[0]["role"] == "system" else ""
    context = dict(evaluation.contexts[0] or {}) if evaluation.contexts else {}
    loaded = evaluate.load_tools(tools) if tools else None
    sampling = chat.Sampling(max_new_tokens=max_new_tokens)
    sides = []
    for name, model_cfg in (("base", (cfg.model, None)), ("tuned", loading.tuned_model(cfg, use_adapter))):
        model, tokenizer = loading.load_for_generation(*model_cfg)
        fmt = tool_formats.for_template(tokenizer, cfg.sources[0].chat_template_kwargs) if loaded else None
        engine = chat.TransformersEngine(model, tokenizer)
        sides.append(Side(name, chat.Session(engine, None, context, loaded, fmt, sampling, max_rounds)))
    return chat_box(sides, system)
