"""The commands that use a trained model: `sftlib generate` (one answer per prompt, as JSON lines),
`sftlib chat` (a conversation in the terminal) and `sftlib export` (GGUF and a Modelfile).

`generate` and `chat` take a run folder, any model folder or hub id, `embedded:NAME`, or (chat) a
`.gguf` file, which llama.cpp runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sftlib.errors import SftlibError

MODEL_HELP = "an output_dir, a model folder, a hub id or embedded:NAME"


def _add_sampling(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--system", default=None, help="a system message before each chat")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above: sampled")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature above 0)")
    p.add_argument("--seed", type=int, default=None, help="fix the sampling's random numbers")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument(
        "--chat-template-kwargs",
        default=None,
        help="JSON object for the chat template, e.g. '{\"enable_thinking\": false}', added to those the "
        "run was trained with (its resolved_config.yaml)",
    )


def add_parsers(sub) -> None:
    """Register generate, chat and export on the `sftlib` parser's subcommands."""
    p = sub.add_parser("generate", help="answer prompts with a trained model, as JSON lines")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--adapter", default=None, help="LoRA adapter folder, applied on --model")
    p.add_argument("--input", default=None, help="a JSONL file of chats: per line a list of messages")
    _add_sampling(p, 64)
    p.add_argument("prompt", nargs="*", help="user message(s)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat with a model in the terminal (/reset, /exit)")
    p.add_argument("--model", required=True, help=MODEL_HELP + ", or a .gguf file (run by llama.cpp)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder, applied on --model")
    p.add_argument("--tools", default=None, metavar="MODULE:NAME", help="run the tool loop with these tools")
    p.add_argument("--max-tool-rounds", type=int, default=3, help="rounds of calls before an answer")
    _add_sampling(p, 256)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("export", help="convert a finished run to GGUF, with an Ollama Modelfile")
    p.add_argument("run", help="the run's output_dir (merged), e.g. runs/demo/model")
    p.add_argument("--outtype", default="q8_0", help="q8_0 (default), f16, bf16 or f32")
    p.add_argument("--out", default=None, help="folder for the GGUF and the Modelfile (default: RUN/gguf)")
    p.add_argument(
        "--check",
        action="store_true",
        help="then run it on llama.cpp: its template renders as the tokenizer's, and it scores the held-out "
        "prompts as the merged model does (needs the export extra)",
    )
    p.add_argument("--limit", type=int, default=64, help="--check: held-out prompts answered by each")
    p.add_argument(
        "--tools", default="", metavar="MODULE:NAME", help="--check: the tools of a tool-calling run"
    )
    p.set_defaults(func=cmd_export)


def _sampling(args):
    from sftlib.inference.generate import Sampling

    return Sampling(args.temperature, args.top_p, args.seed, args.max_new_tokens)


def cmd_generate(args) -> int:
    from sftlib.config import ModelConfig
    from sftlib.inference import generate, loading, prompts

    if bool(args.prompt) == bool(args.input):
        raise SftlibError(
            "give prompts or --input, one of the two.", "pass prompts as arguments, or --input FILE.jsonl."
        )
    sampling = _sampling(args)
    kwargs = prompts.trained_template_kwargs(args.model, args.adapter, args.chat_template_kwargs)
    if args.input:
        asked = prompts.chats_file(args.input, kwargs, args.system)
    else:
        asked = prompts.own_prompts(args.prompt, kwargs, args.system)
    model, tokenizer = loading.load_for_generation(ModelConfig(path=args.model), args.adapter)
    made = generate.generations(
        model, tokenizer, asked.prompts, args.max_new_tokens, contexts=asked.contexts, sampling=sampling
    )
    for prompt, g in zip(args.prompt or asked.prompts, made, strict=True):
        print(json.dumps({"prompt": prompt, "completion": g.text, "cut_off": g.cut_off}))
    cut = sum(g.cut_off for g in made)
    if cut:
        print(
            f"warning: {cut} of {len(made)} answers hit --max-new-tokens {args.max_new_tokens} and may be "
            "cut short: raise --max-new-tokens.",
            file=sys.stderr,
        )
    return 0


def engine_for(model: str, adapter: str | None):
    """The chat engine for `--model`: llama.cpp for a .gguf file, else transformers. Returns
    (engine, tokenizer) (the tokenizer: for the tool-call format)."""
    if model.endswith(".gguf"):
        if adapter:
            raise SftlibError("--adapter applies to a transformers model, not a GGUF.", "drop --adapter.")
        from sftlib.export.llama_cpp import LlamaCppEngine

        engine = LlamaCppEngine(model)
        return engine, engine.tokenizer
    from sftlib.config import ModelConfig
    from sftlib.inference import chat, loading

    model_obj, tokenizer = loading.load_for_generation(ModelConfig(path=model), adapter)
    return chat.TransformersEngine(model_obj, tokenizer), tokenizer


def run_of(model: str) -> str:
    """The folder whose resolved_config.yaml holds the run's template arguments: for a GGUF in a run's
    gguf/ folder (where `sftlib export` writes it), that run; else the model's own folder."""
    path = Path(model)
    if model.endswith(".gguf"):
        return str(path.parent.parent if path.parent.name == "gguf" else path.parent)
    return model


def cmd_chat(args) -> int:
    from sftlib.inference import chat, evaluate, prompts, tool_formats

    sampling = _sampling(args)
    kwargs = prompts.trained_template_kwargs(run_of(args.model), args.adapter, args.chat_template_kwargs)
    engine, tokenizer = engine_for(args.model, args.adapter)
    tools = evaluate.load_tools(args.tools) if args.tools else None
    fmt = tool_formats.for_template(tokenizer, kwargs) if tools else None
    session = chat.Session(engine, args.system, kwargs, tools, fmt, sampling, args.max_tool_rounds)
    talk(session, sys.stdin, sys.stdout)
    return 0


def talk(session, lines, out) -> None:
    """The terminal loop: each line a message (/reset forgets the history, /exit or end of input ends);
    replies streamed as they are decoded, then their calls, results and notes on lines of their own."""
    from sftlib.inference.tool_loop import without_specials

    prompt = sys.stdin.isatty() and lines is sys.stdin
    out.write("chat: /reset forgets the conversation, /exit ends it\n")
    while True:
        if prompt:
            out.write("you> ")
            out.flush()
        line = lines.readline()
        if not line or line.strip() == "/exit":
            return
        text = line.strip()
        if text == "/reset":
            session.reset()
            out.write("(conversation reset)\n")
            continue
        if not text:
            continue
        out.write("model> ")

        def shown(piece: str) -> None:
            out.write(without_specials(piece, session.engine.specials))
            out.flush()

        try:
            parts = session.send(text, shown)
        except SftlibError as exc:
            out.write(f"\n(error: {exc})\n")
            continue
        out.write("\n")
        for part in parts:
            if part.kind in ("call", "result", "error"):
                out.write(f"  [{part.kind}] {part.text}\n")
        out.flush()


def cmd_export(args) -> int:
    from sftlib.export import check, gguf, llama_cpp

    if args.check:
        llama_cpp.require()  # before the conversion, not after it
    exported = gguf.export(args.run, args.out, args.outtype)
    print(exported.describe(), flush=True)
    if args.check:
        print("\n".join(check.check(args.run, exported.gguf, args.outtype, args.limit, args.tools)))
    return 0
