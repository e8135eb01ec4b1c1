"""What notebook 05 measures, with one interface for both kinds of task.

- `Plain`: the prompts `sftlib.inference.prompts.prompts_for` picks (held-out, your own, or a few seen in training),
  answered by one generation each, scored by exact match and token F1 (sftlib.inference.scoring).
- `ToolLoop`: held-out tool chats run through the real tool loop (sftlib.inference.tool_loop), scored by the
  call, the final answer, and the prompts that need no tool.

Each gives its `prompts` and their template `contexts`, `answer(model, tokenizer, ...)` for a model, `scores(base, tuned)`, and `rows(base, tuned)`
for the before/after table and plot (views.before_after_html, plots.before_after_table): a loop's
transcript is shown as "call -> result -> answer", green where the whole loop matches the reference.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sftlib.errors import SftlibError
from sftlib.inference import generate, scoring, tool_loop
from sftlib.inference.prompts import Prompts, prompts_for


class Plain:
    def __init__(self, asked: Prompts):
        self.asked, self.origin, self.prompts = asked, asked.origin, asked.prompts
        self.contexts = asked.contexts or [None] * len(asked.prompts)

    def answer(self, model, tokenizer, max_new_tokens: int, batch_size: int, label: str = "") -> list[str]:
        return generate.generate(
            model,
            tokenizer,
            self.prompts,
            max_new_tokens,
            batch_size,
            contexts=self.asked.contexts,
            label=label,
        )

    def scores(self, base: list[str], tuned: list[str]) -> dict:
        """{"base": ..., "tuned": ...} on held-out prompts; {} when there is nothing to score against."""
        if not self.asked.scored():
            return {}
        return {
            "base": scoring.score(base, self.asked.references),
            "tuned": scoring.score(tuned, self.asked.references),
        }

    def rows(self, base: list[str], tuned: list[str]) -> list[dict]:
        return scoring.comparison_rows(self.prompts, self.asked.references, base, tuned)


class ToolLoop:
    origin = "held-out"

    def __init__(self, cases: tool_loop.Cases, tools: dict[str, Callable]):
        self.cases, self.tools, self.prompts, self.contexts = cases, tools, cases.prompts, cases.contexts

    def answer(
        self, model, tokenizer, max_new_tokens: int, batch_size: int, label: str = ""
    ) -> list[tool_loop.Transcript]:
        return tool_loop.run_loop(
            model,
            tokenizer,
            self.prompts,
            self.cases.contexts,
            self.tools,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            label=label,
        )

    def scores(self, base, tuned) -> dict:
        return {
            name: tool_loop.score(t, self.cases.calls, self.cases.answers)
            for name, t in (("base", base), ("tuned", tuned))
        }

    def rows(self, base, tuned) -> list[dict]:
        expected = [
            tool_loop.expected(c, a, self.tools)
            for c, a in zip(self.cases.calls, self.cases.answers, strict=True)
        ]
        return [
            {"prompt": p, "reference": e.shown(), "base": b.shown(), "tuned": t.shown()}
            for p, e, b, t in zip(self.prompts, expected, base, tuned, strict=True)
        ]


def score_lines(scores: dict) -> list[str]:
    """One line per model: exact match and token F1, or the tool loop's three fractions."""
    lines = []
    for name, s in scores.items():
        if "call_exact" in s:
            lines.append(
                f"{name:>5}: exact call {s['call_exact']:6.1%}   final answer {s['answer_exact']:6.1%}   "
                f"no call where none is needed {s['no_tool_correct']:6.1%} "
                f"(answered exactly {s['no_tool_answer_exact']:6.1%})   "
                f"(n={s['tool_prompts']} + {s['no_tool_prompts']})"
            )
        else:
            lines.append(
                f"{name:>5}: exact match {s['exact_match']:5.1f}%   token F1 {s['token_f1']:5.1f}%   (n={s['n']})"
            )
    return lines


def load_tools(spec: str) -> dict[str, Callable]:
    """`module:NAME` -> the mapping of tool names to Python functions that NAME holds."""
    module, _, name = spec.partition(":")
    try:
        tools = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SftlibError(
            f"TOOLS {spec!r} names no importable mapping ({exc}).",
            "give module:NAME of a dict of tool names to functions, e.g. sftlib.lessons.tool_task:TOOLS.",
        ) from None
    if not isinstance(tools, dict) or not all(callable(f) for f in tools.values()):
        raise SftlibError(f"TOOLS {spec!r} is not a mapping of tool names to functions.")
    return tools


def for_notebook(
    cfg, limit: int | None, prompts: list[str] | None = None, tools: str = ""
) -> Plain | ToolLoop:
    """The evaluation notebook 05 runs: the tool loop when `tools` names the Python tools, else plain."""
    if tools:
        if prompts:
            raise SftlibError(
                "PROMPTS and TOOLS are both set.", "give your own prompts, or run the tool loop."
            )
        return ToolLoop(tool_loop.held_out_cases(cfg, limit), load_tools(tools))
    return Plain(prompts_for(cfg, limit, prompts))
