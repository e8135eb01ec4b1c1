"""`sftlib` command line: argument parsing only, one subcommand per step.

Every user error ends as a single `error: ...` line and a non-zero exit; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sftlib.errors import SftlibError


def _add_config(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config (default: configs/default_train_config.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.max_steps=3 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftlib", description="Supervised fine-tuning of causal LMs.")
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

    p = sub.add_parser("merge", help="merge output_dir/lora_weights into the base model")
    _add_config(p)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("generate", help="generate from a trained output_dir with the chat template")
    p.add_argument("--model", required=True, help="merged model folder (an output_dir)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder, applied on --model")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("prompt", nargs="+", help="user message(s)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("materialize", help="write the embedded models into the cache (done once)")
    p.add_argument("names", nargs="*", default=["SmolLM2-135M-Instruct", "tiny-random-llama"])
    p.set_defaults(func=cmd_materialize)
    return parser


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from sftlib.train import run_from_files

    info = run_from_files(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
    print(f"done: {info['global_step']} steps, final loss {info['final_loss']:.4f}, outputs in {info['output_dir']}")
    return 0


def _prepared(args, **kwargs):
    from sftlib import masking, modeling
    from sftlib.config import load_config

    cfg = load_config(args.config, args.overrides)
    tokenizer = modeling.load_tokenizer(cfg.model)
    return cfg, tokenizer, masking.prepare(cfg, tokenizer, **kwargs)


def cmd_check(args) -> int:
    from sftlib import masking

    cfg, tokenizer, data = _prepared(args)
    print(masking.format_report(data, cfg, tokenizer))
    return 0


def cmd_masks(args) -> int:
    from sftlib import masking

    if args.limit is not None and args.limit <= 0:
        raise SftlibError(f"--limit must be positive, got {args.limit}.")
    cfg, tokenizer, data = _prepared(args, splits=(args.split,), limit=args.limit)
    ds = data.train if args.split == "train" else data.eval
    if ds is None:
        raise SftlibError("--split eval: the config defines no eval split.", "set dataset.eval_split or dataset.eval_size.")
    n = masking.write_masks_jsonl(ds, tokenizer, Path(args.out), with_text=args.text)
    print(f"wrote {n} examples to {args.out}")
    return 0


def cmd_merge(args) -> int:
    from sftlib import merge
    from sftlib.config import load_config
    from sftlib.train import ADAPTER_DIRNAME

    cfg = load_config(args.config, args.overrides)
    if not cfg.model.use_lora:
        print("model.use_lora is false: a full fine-tune has nothing to merge.")
        return 0
    merge.merge_adapter(cfg.model, cfg.output_dir / ADAPTER_DIRNAME, cfg.output_dir, dtype=args.dtype)
    print(f"merged model written to {cfg.output_dir}")
    return 0


def cmd_generate(args) -> int:
    from sftlib import generate

    model, tokenizer = generate.load_for_generation(args.model, args.adapter)
    prompts = [[{"role": "user", "content": p}] for p in args.prompt]
    for prompt, answer in zip(args.prompt, generate.generate(model, tokenizer, prompts, args.max_new_tokens), strict=True):
        print(json.dumps({"prompt": prompt, "completion": answer}))
    return 0


def cmd_materialize(args) -> int:
    from sftlib import embedded

    for name in args.names:
        print(f"{embedded.PREFIX}{name} -> {embedded.resolve(embedded.PREFIX + name)}")
    return 0


# --------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except SftlibError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # a library's error: still one line, with the way to see more
        if args.debug:
            raise
        text = str(exc).strip().splitlines()
        print(f"error: {type(exc).__name__}: {text[0] if text else ''} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
