"""The demo lessons, their tasks and their run (`sftlib demo [--lesson chat|tools]`): the notebook suite on each.

- `dates` (the default): rewrite an English date written in one of many styles as ISO `YYYY-MM-DD`.
- `chat`: a two-turn chat on a reasoning-style template (TRL's bundled `qwen3`). Turn 1 reasons in a
  `<think>` block, then answers the ISO date; turn 2 asks a follow-up that only the first turn
  answers ("Now as DD/MM/YYYY.", "Which year is that?", "Which month is that?"), so the score shows the
  model answering the second turn from the first. Qwen3's template drops earlier turns' reasoning
  once a later turn follows, so each conversation is trained as two examples (sftlib.data.masking).
- `tools`: call a `weekday(date)` tool with the date normalized, answer with its result, and answer
  lesson 1's question without a call (sftlib.lessons.tool_task); notebook 05 runs the real tool loop.

The tasks' rows come from sftlib.lessons.date_task and sftlib.lessons.tool_task; this module writes them and runs the
notebook suite on a lesson.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftlib.errors import SftlibError
from sftlib.lessons import date_task, tool_task

TASK_NAME = "iso_dates"


@dataclasses.dataclass(frozen=True)
class Lesson:
    """A lesson of `sftlib demo`: its shipped config, the data folder that config names (the copy
    shipped with sftlib is used), the generator of that data (train, test rows from n_train, n_eval,
    seed), where its run goes by default, and the notebook parameters it needs."""

    config: str
    data: Path
    build: Callable[[int, int, int], tuple[list[dict], list[dict]]]
    out: str
    params: dict[str, str] = dataclasses.field(default_factory=dict)


LESSONS = {
    "dates": Lesson("demo.yaml", Path("configs/data") / TASK_NAME, date_task.build_demo_rows, "runs/demo"),
    "chat": Lesson(
        "chat_lesson.yaml", Path("configs/data/date_chats"), date_task.build_chat_rows, "runs/demo-chat"
    ),
    # a tool call is about 30 tokens before the answer; notebook 05 runs the loop with the lesson's tool
    "tools": Lesson(
        "tool_lesson.yaml",
        Path("configs/data/weekday_tools"),
        tool_task.build_tool_rows,
        "runs/demo-tools",
        {"TOOLS": "sftlib.lessons.tool_task:TOOLS", "MAX_NEW_TOKENS": "40"},
    ),
}


def default_out(lesson: str = "dates") -> str:
    """Where `sftlib demo --lesson LESSON` puts everything when --out is not given."""
    return LESSONS[lesson].out if lesson in LESSONS else LESSONS["dates"].out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_demo_dataset(
    out_dir: Path | None = None,
    n_train: int = date_task.N_TRAIN,
    n_eval: int = date_task.N_EVAL,
    seed: int = date_task.SEED,
    lesson: str = "dates",
) -> dict[str, Path]:
    """Write a lesson's `train.jsonl` and `test.jsonl` into `out_dir` (default: the folder its config
    names); return {"train": path, "test": path}."""
    train, test = LESSONS[lesson].build(n_train, n_eval, seed)
    out_dir = Path(out_dir if out_dir is not None else LESSONS[lesson].data)
    return {
        "train": write_jsonl(train, out_dir / "train.jsonl"),
        "test": write_jsonl(test, out_dir / "test.jsonl"),
    }


# --------------------------------------------------------------------------- the run


def run_demo(
    out: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    params: dict[str, str] | None = None,
    progress: bool = True,
    lesson: str = "dates",
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The whole suite on a lesson's task: the embedded model fails it, is fine-tuned, then solves it.

    `config` defaults to the lesson's shipped config (configs/demo.yaml, configs/chat_lesson.yaml). A
    config whose `dataset.name` is a lesson's own `configs/data/...`, or whose `model.chat_template` is a
    `configs/templates/...` file, reads the copy shipped with sftlib, so the demo runs from any working
    directory. The model is materialized if needed; the trained run goes to OUT/model (default OUT: the
    lesson's, e.g. runs/demo), so everything the demo makes lies under OUT. A finished or interrupted
    run there is replaced only with `overwrite`, or continued with `resume`.
    """
    from sftlib import shipped
    from sftlib.config import load_config
    from sftlib.models import embedded
    from sftlib.suite.pipeline import run_overrides, run_pipeline

    if lesson not in LESSONS:
        raise SftlibError(f"unknown lesson {lesson!r}.", f"use one of: {', '.join(LESSONS)}.")
    out = Path(out if out is not None else default_out(lesson))
    config = Path(config) if config is not None else shipped.config(LESSONS[lesson].config)
    overrides = run_overrides(out, overrides)
    cfg = load_config(config, overrides)
    if Path(cfg.dataset.name) in {one.data for one in LESSONS.values()}:
        overrides.append(f"dataset.name={shipped.config(str(Path(cfg.dataset.name).relative_to('configs')))}")
    template = cfg.model.chat_template or ""
    shipped_template = shipped.configs_dir() / template.removeprefix("configs/")
    if template.startswith("configs/") and shipped_template.is_file():
        overrides.append(f"model.chat_template={shipped_template}")
    cfg = load_config(config, overrides)
    embedded.resolve(cfg.model.path)
    params = {**LESSONS[lesson].params, **(params or {})}
    summary = run_pipeline(
        config, out, overrides, params, progress=progress, resume=resume, overwrite=overwrite
    )
    print(demo_report(summary, out, cfg.output_dir))
    return summary


def demo_report(summary: dict, out: Path, model_dir: Path) -> str:
    """What the demo made and where, and the before/after scores, as lines for the terminal."""
    pictures = sorted(p.name for p in out.glob("*.png")) + sorted(p.name for p in out.glob("*_view.html"))
    lines = [
        f"executed notebooks: {out}/NN_*.ipynb (and .html)",
        f"plots: {', '.join(pictures)} in {out}",
        f"merged model: {model_dir} (adapter in {model_dir / 'lora_weights'})",
        f"summary: {out / 'summary.json'}",
    ]
    base, tuned = summary.get("base"), summary.get("tuned")
    if base is None or tuned is None:
        lines.append("no held-out split in the config: nothing was scored.")
    elif "call_exact" in base:  # the tool loop (sftlib.inference.tool_loop.score)
        lines.append(
            f"tool loop on {summary['eval_examples']} held-out prompts, base -> tuned: exact call "
            f"{base['call_exact']:.1%} -> {tuned['call_exact']:.1%}, final answer {base['answer_exact']:.1%} -> "
            f"{tuned['answer_exact']:.1%}, no call where none is needed {base['no_tool_correct']:.1%} -> "
            f"{tuned['no_tool_correct']:.1%} (answered exactly: {base.get('no_tool_answer_exact', 0):.1%} -> "
            f"{tuned.get('no_tool_answer_exact', 0):.1%})"
        )
    else:
        lines.append(
            f"exact match on {summary['eval_examples']} held-out prompts: "
            f"base {base['exact_match']:.1f}% -> tuned {tuned['exact_match']:.1f}% "
            f"(token F1 {base['token_f1']:.1f}% -> {tuned['token_f1']:.1f}%)"
        )
    return "\n".join(lines)
