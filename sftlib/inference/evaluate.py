"""What notebook 05 measures, with one interface for both kinds of task.

- `Plain`: the prompts `sftlib.inference.prompts.prompts_for` picks (held-out, your own, or a few seen in training),
  answered by one generation each, scored by exact match and token F1 (sftlib.inference.scoring).
- `ToolLoop`: held-out tool chats run through the real tool loop (sftlib.inference.tool_loop), its calls
  read in the format the chat template writes (sftlib.inference.tool_formats), scored by the calls, the
  final answer, and the prompts that need no tool.

Each gives its `prompts` and their template `contexts`, `answer(model, tokenizer, ...)` for a model
(`answer_with(generator, ...)` for another runtime), `scores(base, tuned)`, and `rows(base, tuned)`
for the before/after table and plot (views.before_after_html, plots.before_after_table): a loop's
transcript is shown as "call -> result -> answer", green where the whole loop matches the reference.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sftlib.errors import SftlibError
from sftlib.inference import generate, scoring, tool_formats, tool_loop
from sftlib.inference.prompts import Prompts, prompts_for


class Plain:
    tool_format = None

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

    def answer_with(
        self, generator: tool_loop.Generator, specials: tuple[str, ...], label: str = ""
    ) -> list[str]:
        """Answers from another runtime (a Generator over chat prompts: llama.cpp's, say)."""
        return [g.text for g in generator(self.prompts, self.contexts, label)]

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

    def __init__(
        self,
        cases: tool_loop.Cases,
        tools: dict[str, Callable],
        fmt: tool_formats.ToolFormat,
        max_rounds: int = 3,
    ):
        self.cases, self.tools, self.prompts, self.contexts = cases, tools, cases.prompts, cases.contexts
        self.fmt, self.tool_format, self.max_rounds = fmt, fmt.name, max_rounds

    def answer(
        self, model, tokenizer, max_new_tokens: int, batch_size: int, label: str = ""
    ) -> list[tool_loop.Transcript]:
        return tool_loop.run_loop(
            self.prompts,
            self.cases.contexts,
            self.tools,
            self.fmt,
            tool_loop.model_generator(model, tokenizer, max_new_tokens, batch_size),
            specials=tool_loop.special_tokens(tokenizer),
            max_rounds=self.max_rounds,
            label=label,
        )

    def answer_with(
        self, generator: tool_loop.Generator, specials: tuple[str, ...], label: str = ""
    ) -> list[tool_loop.Transcript]:
        """Transcripts from another runtime (a Generator over chat prompts: llama.cpp's, say)."""
        return tool_loop.run_loop(
            self.prompts, self.contexts, self.tools, self.fmt, generator, specials, self.max_rounds, label
        )

    def scores(self, base, tuned) -> dict:
        return {
            name: tool_loop.score(t, self.cases.rounds, self.cases.answers)
            for name, t in (("base", base), ("tuned", tuned))
        }

    def rows(self, base, tuned) -> list[dict]:
        expected = [
            tool_loop.expected(r, a, self.tools)
            for r, a in zip(self.cases.rounds, self.cases.answers, strict=True)
        ]
        return [
            {"prompt": p, "reference": e.shown(), "base": b.shown(), "tuned": t.shown()}
            for p, e, b, t in zip(self.prompts, expected, base, tuned, strict=True)
        ]


def describe(evaluation: Plain | ToolLoop) -> str:
    """How many prompts, whence, the first; for the tool loop, the format its calls are read in."""
    first = scoring.prompt_text(evaluation.prompts[0])
    line = f"{len(evaluation.prompts)} prompts ({evaluation.origin}); first: {first!r}"
    if evaluation.tool_format:
        line += f"\ntool calls read in the {evaluation.tool_format} format, as the chat template writes them"
    return line


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
                + "".join(
                    f"   {s[k]} {k.replace('_', ' ')}"
                    for k in ("malformed", "cut_off", "unfinished")
                    if s.get(k)
                )
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
    cfg, limit: int | None, prompts: list[str] | None = None, tools: str = "", max_rounds: int = 3
) -> Plain | ToolLoop:
    """The evaluation notebook 05 runs: the tool loop when `tools` names the Python tools (its calls
    read in the format the run's chat template writes, refused here when no parser reads it; up to
    `max_rounds` rounds of calls per prompt), else plain."""
    if tools:
        from sftlib.models import modeling

        if prompts:
            raise SftlibError(
                "PROMPTS and TOOLS are both set.", "give your own prompts, or run the tool loop."
            )
        if max_rounds < 1:
            raise SftlibError(f"MAX_TOOL_ROUNDS must be at least 1, got {max_rounds}.")
        loaded = load_tools(tools)
        fmt = tool_formats.for_template(
            modeling.load_tokenizer(cfg.model), cfg.sources[0].chat_template_kwargs
        )
        return ToolLoop(tool_loop.held_out_cases(cfg, limit), loaded, fmt, max_rounds)
    return Plain(prompts_for(cfg, limit, prompts))
