"""An exported GGUF checked on llama.cpp against the run's merged model in transformers.

Two checks, `sftlib export --check`:
- the template: the chat template stored in the GGUF, rendered by llama.cpp's runtime (llama-cpp-python's
  Jinja2 formatter), gives the same text as the run's tokenizer for a tool conversation and a
  reasoning conversation (a runtime that renders differently feeds the model prompts it never saw);
- the scores: the run's held-out prompts (its resolved config, as notebook 05 picks them) answered
  greedily by both; llama.cpp's headline score (exact match, or exact calls for the tool loop) may fall
  at most TOLERANCE points below transformers': 2 at 16 bits and more, 5 for q8_0.
"""

from __future__ import annotations

from pathlib import Path

from sftlib.errors import SftlibError

TOLERANCE = {"f16": 2.0, "bf16": 2.0, "f32": 2.0, "q8_0": 5.0}  # points of the headline score

_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weekday", "arguments": {"date": "2021-03-05"}},
}
_TOOL = {
    "type": "function",
    "function": {
        "name": "weekday",
        "description": "The day of the week of a date.",
        "parameters": {"type": "object", "properties": {"date": {"type": "string"}}, "required": ["date"]},
    },
}
CONVERSATIONS = {
    "tool conversation": (
        [
            {"role": "system", "content": "You answer questions about dates."},
            {"role": "user", "content": "What day was 2021-03-05?"},
            {"role": "assistant", "content": "", "tool_calls": [_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "name": "weekday", "content": "Friday"},
            {"role": "assistant", "content": "Friday"},
            {"role": "user", "content": "And the day after?"},
        ],
        {"tools": [_TOOL]},
    ),
    "reasoning conversation": (
        [
            {"role": "user", "content": "Write 5 March 2021 as YYYY-MM-DD."},
            {"role": "assistant", "content": "2021-03-05", "reasoning_content": "March is month 03."},
            {"role": "user", "content": "And as DD/MM/YYYY?"},
        ],
        {},
    ),
}


def template_differences(engine, tokenizer) -> list[str]:
    """The conversations whose text differs between the GGUF's template on llama.cpp's runtime and the
    run's tokenizer, each with the first differing characters; a conversation the tokenizer's template
    refuses to render is not compared."""
    found = []
    for name, (messages, context) in CONVERSATIONS.items():
        try:
            expected = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **context
            )
        except Exception:  # a template without tools or reasoning may raise on them: nothing to compare
            continue
        got = engine.render(messages, context)
        if got != expected:
            k = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                min(len(got), len(expected)),
            )
            found.append(
                f"{name}: llama.cpp renders {got[k : k + 40]!r} where the tokenizer has {expected[k : k + 40]!r}"
            )
    return found


def headline(scores: dict) -> tuple[str, float]:
    """(name, percent) of the score that decides: exact calls for the tool loop, else exact match."""
    if "call_exact" in scores:
        return "exact call", 100 * scores["call_exact"]
    return "exact match", scores["exact_match"]


def check(
    run_dir: str | Path,
    gguf_path: str | Path,
    outtype: str,
    limit: int = 64,
    tools: str = "",
    max_new_tokens: int = 64,
) -> list[str]:
    """Both checks; returns the report's lines, or raises SftlibError when either fails."""
    from sftlib.config import ModelConfig, load_config
    from sftlib.export.llama_cpp import LlamaCppEngine
    from sftlib.inference import evaluate, loading, tool_loop
    from sftlib.outputs.layout import RESOLVED_CONFIG

    run_dir = Path(run_dir)
    engine = LlamaCppEngine(gguf_path)
    model, tokenizer = loading.load_for_generation(ModelConfig(path=str(run_dir)))
    differences = template_differences(engine, tokenizer)
    if differences:
        raise SftlibError(
            "the GGUF's chat template renders differently on llama.cpp: " + "; ".join(differences),
            "export again with `sftlib export ...`; report the template if it persists (docs/use-the-model.md).",
        )
    cfg = load_config(run_dir / RESOLVED_CONFIG)
    evaluation = evaluate.for_notebook(cfg, limit, None, tools, 3)
    if evaluation.origin != "held-out":
        raise SftlibError(
            f"{run_dir}'s config has no held-out prompts to score.", "set dataset.eval_split or eval_size."
        )
    ours = evaluation.answer(model, tokenizer, max_new_tokens, 16, "transformers")

    def generator(chats, contexts, label):
        return engine.generations(chats, contexts, max_new_tokens)

    theirs = evaluation.answer_with(generator, tool_loop.special_tokens(tokenizer), "llama.cpp")
    scores = evaluation.scores(ours, theirs)
    (name, hf), (_, gg) = headline(scores["base"]), headline(scores["tuned"])
    lines = [
        f"template: the GGUF's renders as the tokenizer's ({', '.join(CONVERSATIONS)})",
        *evaluate.score_lines({"transformers": scores["base"], f"llama.cpp {outtype}": scores["tuned"]}),
        f"{name} on {len(evaluation.prompts)} held-out prompts: transformers {hf:.1f}%, llama.cpp ({outtype}) {gg:.1f}%",
    ]
    if gg < hf - TOLERANCE[outtype]:
        raise SftlibError(
            " ".join(lines) + f": more than {TOLERANCE[outtype]:g} points below.",
            "export with --outtype f16 (no quantization), and compare again.",
        )
    return lines
