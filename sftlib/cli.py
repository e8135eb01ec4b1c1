"""`sftlib` command line: argument parsing only, one subcommand per step.

Every error ends as a single `error: ...` line and a non-zero exit. An error that is not sftlib's
own (a library's, out of memory) also leaves its full traceback in output_dir/error.log, or in a
temporary file before output_dir exists, and the line names that file; `--debug` raises it instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sftlib.errors import SftlibError, describe_os_error, save_traceback
from sftlib.export import commands


def _add_config(p: argparse.ArgumentParser, required: bool = False, default: str | None = None) -> None:
    """--config (None when not given: the command picks its default, named by `default` in the help)."""
    shown = "required" if required else f"default: {default or 'configs/default_train_config.yaml'}"
    p.add_argument("--config", required=required, default=None, help=f"YAML config ({shown})")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.max_steps=3 (repeatable)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors ending in the same `error: ... Fix: ...` line as every other error."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        fix = f"see `{self.prog} --help` for the valid arguments"
        self.exit(2, f"error: {self.prog}: {message}. Fix: {fix}.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sftlib", description="Supervised fine-tuning of causal LMs.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune as the config says")
    _add_config(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in output_dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check", help="validate the config and the data, print a data report")
    _add_config(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("masks", help="write input_ids and labels of each kept example as JSONL")
    _add_config(p)
    p.add_argument("--split", default="train", choices=["train", "eval"])
    p.add_argument("--limit", type=int, default=None, help="at most this many examples")
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--text", action="store_true", help="also write the decoded text")
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser(
        "merge", help="merge output_dir/lora_weights into the base model (after training.merge: false)"
    )
    _add_config(p)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.set_defaults(func=cmd_merge)

    commands.add_parsers(sub)  # generate, chat, export: the commands that use a trained model

    p = sub.add_parser("materialize", help="write the embedded models into the cache (done once)")
    p.add_argument("names", nargs="*", default=["SmolLM2-135M-Instruct", "tiny-random-llama"])
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("bench", help="time sftlib's training path against a plain TRL run (same data, seed)")
    _add_config(p, required=True)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per side (after the warm-up)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per side (default: sftlib's 7 tuning steps)"
    )
    p.add_argument("--profile-steps", type=int, default=0, help="then this many steps under torch.profiler")
    p.add_argument("--json", default=None, help="also write the full results here")
    p.add_argument("--data", choices=["config", "chat-mix"], default="config", help="chat-mix: synthetic")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternated; best of each compared")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("pipeline", help="run the notebooks in order with papermill")
    _add_config(p, required=True)
    _add_notebook_args(
        p,
        "folder for the executed notebooks, their HTML, plots, summary.json and the trained run (OUT/model)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="PREFIX",
        help="run only notebooks starting with PREFIX (e.g. 03)",
    )
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("demo", help="the demo: SmolLM2 fails a task, is fine-tuned on CPU, then solves it")
    _add_config(
        p,
        default="configs/demo.yaml as shipped with sftlib; --lesson chat: configs/chat_lesson.yaml; "
        "--lesson tools: configs/tool_lesson.yaml",
    )
    p.add_argument(
        "--lesson",
        choices=["dates", "chat", "tools"],
        default="dates",
        help="dates: one-turn ISO dates; chat: two-turn chats on Qwen3's reasoning template (turn-by-turn masks); "
        "tools: calling a weekday(date) tool, with the real tool loop in notebook 05",
    )
    _add_notebook_args(
        p,
        "folder for everything the demo makes, the trained run in OUT/model "
        "(default: runs/demo, runs/demo-chat, runs/demo-tools)",
        required=False,
    )
    p.set_defaults(func=cmd_demo)
    return parser


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from accelerate import PartialState

    from sftlib.training.train import run_from_files

    info = run_from_files(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
    if PartialState().is_main_process:  # under accelerate launch every rank returns here
        steps, loss = info["global_step"], info["final_loss"]
        print(f"done: {steps} steps, final loss {loss:.4f}, outputs in {info['output_dir']}")
    return 0


def _prepared(args, **kwargs):
    from sftlib.config import load_config
    from sftlib.data import dataset
    from sftlib.models import modeling

    cfg = load_config(args.config, args.overrides)
    tokenizer = modeling.load_tokenizer(cfg.model)
    return cfg, tokenizer, dataset.prepare(cfg, tokenizer, **kwargs)


def cmd_check(args) -> int:
    from sftlib.views import report

    cfg, tokenizer, data = _prepared(args)
    print(report.format_report(data, cfg, tokenizer))
    return 0


def cmd_masks(args) -> int:
    from sftlib.data import export

    if args.limit is not None and args.limit <= 0:
        raise SftlibError(
            f"--limit must be positive, got {args.limit}.", "give --limit 1 or more, or omit it."
        )
    cfg, tokenizer, data = _prepared(args, splits=(args.split,), limit=args.limit)
    ds = data.train if args.split == "train" else data.eval
    if ds is None:
        raise SftlibError(
            "--split eval: the config defines no eval split.", "set dataset.eval_split or dataset.eval_size."
        )
    n = export.write_masks_jsonl(ds, tokenizer, Path(args.out), with_text=args.text)
    print(f"wrote {n} examples to {args.out}")
    return 0


def cmd_merge(args) -> int:
    from sftlib.config import load_config
    from sftlib.outputs import merge, saving

    cfg = load_config(args.config, args.overrides)
    if not cfg.model.use_lora:
        print("model.use_lora is false: a full fine-tune has nothing to merge.")
        return 0
    result = saving.merge_run(cfg, dtype=args.dtype)
    print(merge.summary(result))
    print(f"merged model written to {cfg.output_dir}")
    return 0


def cmd_materialize(args) -> int:
    from sftlib.models import embedded

    for name in args.names:
        print(f"{embedded.PREFIX}{name} -> {embedded.resolve(embedded.PREFIX + name)}")
    return 0


def _add_notebook_args(p: argparse.ArgumentParser, out_help: str, required: bool = True) -> None:
    p.add_argument("--out", required=required, default=None, help=out_help)
    run = p.add_mutually_exclusive_group()
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in OUT/model")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its newest complete checkpoint",
    )
    p.add_argument(
        "-p",
        "--parameter",
        dest="params",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a notebook parameter in every notebook that declares it, e.g. -p NUM_PROCESSES 2",
    )


def cmd_bench(args) -> int:
    from sftlib.bench import compare

    if args.steps < 1 or args.repeats < 1:
        raise SftlibError("--steps and --repeats must be at least 1.")
    result = compare.bench(
        args.config,
        args.overrides,
        steps=args.steps,
        data=args.data,
        repeats=args.repeats,
        warmup=args.warmup,
        profile_steps=args.profile_steps,
    )
    print(compare.format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"results in {args.json}")
    return 0


def cmd_pipeline(args) -> int:
    from sftlib.suite.pipeline import run_pipeline

    summary = run_pipeline(
        args.config,
        args.out,
        args.overrides,
        dict(args.params),
        args.only,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    done = f"{len(summary['notebooks'])} notebooks in {summary['wall_seconds']:.0f} s"
    print(f"done: {done}; summary in {Path(args.out) / 'summary.json'}")
    return 0


def cmd_demo(args) -> int:
    from sftlib.lessons.demo import run_demo

    run_demo(
        args.out,
        args.config,
        args.overrides,
        dict(args.params),
        lesson=args.lesson,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    return 0


# --------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return report(lambda: args.func(args), debug=args.debug, output_dir=lambda: _output_dir(args))


def _output_dir(args) -> Path | None:
    """Where the command writes its run: training.output_dir (train, merge), read from the config without
    validating it, or --out (pipeline, demo); None for the commands that write no run."""
    from sftlib.config import output_dir_of

    if args.command in ("pipeline", "demo"):
        from sftlib.lessons.demo import default_out

        return Path(args.out or default_out(args.lesson))
    if args.command not in ("train", "merge"):
        return None
    try:
        return output_dir_of(args.config, args.overrides)
    except SftlibError:
        return None


def report(run, debug: bool = False, output_dir=lambda: None) -> int:
    """Call `run()`; every error ends as one `error: ...` line on stderr and a non-zero exit code
    (with `debug`, the traceback instead). An error that is not an SftlibError also has its traceback
    written to `output_dir()`/error.log, or a temporary file before that folder exists, named in the
    line. Returns `run()`'s exit code (0 when it returns None)."""
    try:
        return run() or 0
    except SftlibError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)  # guards.Interrupted: 128 + the signal number
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # a library's error: still one line, and its traceback kept in a file
        if debug:
            raise
        try:
            evidence = f"traceback in {save_traceback(exc, output_dir())}"
        except OSError as cant:  # a full disk, say: the line still says how to see the traceback
            evidence = f"traceback not saved ({cant.strerror or cant}); run with --debug to see it"
        known = describe_os_error(exc)  # disk full, permission denied, a file where a folder should be
        if known is not None:
            print(f"error: {known} ({evidence})", file=sys.stderr)
            return 1
        text = str(exc).strip().splitlines()
        print(f"error: {type(exc).__name__}: {text[0] if text else ''} ({evidence})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
