"""`sftlib bench`: sftlib's default training path against a seed-style plain TRL run, same data and seed.

The parent process records the CPU (model name, whether bf16 is native), measures the bf16 and
fp32 matmul ceilings on large squares and on the model's own linear-layer shapes at 128, 512 and
2048 tokens per pass, tokenizes once (warming the datasets cache), then runs each side in its own
subprocess so that each side's peak RSS (ru_maxrss) is its own:

- baseline: plain `trl.SFTTrainer` as the seed ran it: TRL's defaults (bf16 autocast, activation
  checkpointing on), the checkpoint's dtype, the config's batch size, accumulation, max_length,
  learning rate and seed; no packing, each micro-batch padded to its longest example.
- sftlib: exactly what `sftlib train` builds for the config (`sftlib.fastpath.build_trainer`).

Both sides draw the same examples in the same order. The first `warmup` optimizer steps (default:
the steps sftlib times its pass-size candidates on, 7) are not timed, on either side. Token counts are real (non-pad) tokens; "trained" tokens are those that carry loss.
Model FLOPs per real token: 6N for full fine-tuning, 4N for LoRA (no weight gradients for the
frozen base), N = weights of the matmuls (lm_head included), plus causal attention
(3 x 4 x layers x attention width x (position + 1) per token), so MFU does not reward padding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIDES = ("baseline", "sftlib")
CHAT_MIX_ROWS = 2000


# --------------------------------------------------------------------------- data


def write_chat_mix(path: Path, n: int = CHAT_MIX_ROWS, seed: int = 0) -> Path:
    """A deterministic ShareGPT-like chat set: 1-4 turns, log-normal message lengths, some system prompts.

    Lengths are drawn to resemble ShareGPT's (README "Performance" gives the token statistics with
    SmolLM2's tokenizer).
    """
    rng = random.Random(seed)
    vocab_rng = random.Random(1234)
    syllables = [
        "ka",
        "lo",
        "mi",
        "tra",
        "ven",
        "sol",
        "dar",
        "ith",
        "pen",
        "qu",
        "ro",
        "sa",
        "te",
        "ul",
        "bri",
        "mon",
        "el",
        "fa",
        "gor",
        "hin",
    ]
    words = [
        "the",
        "a",
        "of",
        "to",
        "and",
        "is",
        "in",
        "that",
        "it",
        "for",
        "you",
        "with",
        "on",
        "as",
        "this",
        "be",
        "are",
        "can",
        "what",
        "how",
    ]
    words += [
        "".join(vocab_rng.choice(syllables) for _ in range(vocab_rng.randint(1, 3))) for _ in range(2000)
    ]

    def text(n_words: int) -> str:
        out = []
        for _ in range(n_words):
            out.append(rng.choice(words) + (rng.choice(".,?") if rng.random() < 0.08 else ""))
        return " ".join(out).capitalize()

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            messages = []
            if rng.random() < 0.3:
                messages.append({"role": "system", "content": text(rng.randint(5, 30))})
            for _turn in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
                messages.append({"role": "user", "content": text(max(3, int(math.exp(rng.gauss(2.3, 0.9)))))})
                messages.append(
                    {"role": "assistant", "content": text(max(3, int(math.exp(rng.gauss(3.3, 1.0)))))}
                )
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def chat_mix_overrides(folder: Path) -> list[str]:
    path = write_chat_mix(folder / "chat_mix.jsonl")
    return [
        f"dataset.name={path}",
        "dataset.eval_split=null",
        "dataset.eval_size=null",
        "dataset.max_samples=null",
    ]


# --------------------------------------------------------------------------- measurements


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_shape_ceilings(cfg, device: str, tokens=(128, 512, 2048)) -> dict[str, Any]:
    """GFLOP/s of the model's own linear layers (forward + input gradient) at a few pass sizes, bf16 and fp32.

    Built from the model's config on the meta device: only the layer shapes are needed, not the weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlib import modeling
    from sftlib.matmul import linear_shapes, model_matmul_gflops

    config = AutoConfig.from_pretrained(
        modeling.resolve_path(cfg.model), trust_remote_code=cfg.model.trust_remote_code
    )
    with torch.device("meta"):
        shapes = linear_shapes(AutoModelForCausalLM.from_config(config))
    return {
        "tokens_per_pass": list(tokens),
        "shapes": {f"{k}x{n}": count for (k, n), count in shapes.items()},
        **{
            name: {str(t): round(model_matmul_gflops(shapes, t, name, device), 1) for t in tokens}
            for name in ("bfloat16", "float32")
        },
    }


def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: every nn.Linear, the LM head included."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def train_flops(lengths: list[int], n_params: int, config, lora: bool) -> float:
    """Model FLOPs to train on examples of these lengths (real tokens only; see the module docstring)."""
    text = config.get_text_config()
    width = text.num_attention_heads * getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    dense = (4 if lora else 6) * n_params * sum(lengths)
    attention = 3 * 4 * text.num_hidden_layers * width * sum(n * (n + 1) / 2 for n in lengths)
    return dense + attention


class Counter:
    """Wraps a data collator; records each micro-batch's real and trained token counts, in order."""

    def __init__(self, collate):
        self.collate = collate
        self.batches: list[tuple[list[int], int]] = []

    def __call__(self, examples):
        batch = self.collate(examples)
        labels = batch["labels"]
        trained = int((labels[:, 1:] != -100).sum())
        self.batches.append(([len(e["input_ids"]) for e in examples], trained))
        return batch


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """When each optimizer step ended, and the peak RSS (MB) by then."""

        def __init__(self):
            self.ends: list[float] = []
            self.peak_rss_mb: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.peak_rss_mb.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    return StepTimer()


# --------------------------------------------------------------------------- one side (a subprocess)


def _peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def default_warmup() -> int:
    """Untimed steps on both sides: sftlib times its pass-size candidates on its first steps."""
    from sftlib.autotune import MAX_CANDIDATES, PassTuner

    return PassTuner.tuning_steps(MAX_CANDIDATES)


def run_side(
    side: str,
    config: str,
    overrides: list[str],
    steps: int,
    warmup: int | None = None,
    profile_steps: int = 0,
) -> dict[str, Any]:
    """Train `warmup + steps` optimizer steps on one side; measure the last `steps`. With `profile_steps`,
    that many more steps run under torch.profiler (not timed) and `profile` holds their breakdown."""
    import dataclasses

    from trl import SFTTrainer

    from sftlib import dataset, fastpath, modeling
    from sftlib.config import load_config

    warmup = default_warmup() if warmup is None else warmup
    out_dir = tempfile.mkdtemp(prefix=f"sftlib-bench-{side}-")
    cfg = load_config(config, overrides)
    tokenizer = modeling.load_tokenizer(cfg.model)
    train = dataset.prepare(cfg, tokenizer, splits=("train",)).train
    total = warmup + steps
    run = {
        "output_dir": out_dir,
        "max_steps": total + profile_steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": total,
    }
    if side == "baseline":
        from trl import SFTConfig

        t = cfg.training
        model_cfg = dataclasses.replace(cfg.model, dtype=None)
        model = modeling.load_model(model_cfg)
        args = SFTConfig(
            per_device_train_batch_size=t.get("per_device_train_batch_size", 8),
            gradient_accumulation_steps=t.get("gradient_accumulation_steps", 1),
            learning_rate=t.get("learning_rate", 2e-5),
            seed=t.get("seed", 42),
            max_length=cfg.model.max_seq_length,
            report_to="none",
            use_cpu=training_device() == "cpu",
            **run,
        )
        peft_config = modeling.lora_config(model_cfg, model) if model_cfg.use_lora else None
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config
        )
    else:
        model = modeling.load_model(cfg.model)
        model.config.use_cache = False
        peft_config = modeling.lora_config(cfg.model, model) if cfg.model.use_lora else None
        trainer = fastpath.build_trainer(cfg, model, tokenizer, train, None, peft_config, run_args=run)
    n_params = matmul_params(
        trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    )
    counter = Counter(trainer.data_collator)
    trainer.data_collator = counter
    timer = step_timer()
    trainer.add_callback(timer)
    profiler = None
    if profile_steps:
        from sftlib.profiling import ProfileSteps

        profiler = ProfileSteps(total + 1, profile_steps, model.config.get_text_config().vocab_size)
        trainer.add_callback(profiler)
    trainer.train()

    accumulation = trainer.args.gradient_accumulation_steps
    plan = trainer.plan.record() if side == "sftlib" else None
    timed = counter.batches[warmup * accumulation : total * accumulation]
    seconds = timer.ends[total - 1] - timer.ends[warmup - 1]
    lengths = [n for batch, _ in timed for n in batch]
    trained = sum(t for _, t in timed)
    flops = train_flops(lengths, n_params, model.config, cfg.model.use_lora)
    return {
        "side": side,
        "steps_timed": steps,
        "micro_batch_size": trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": accumulation,
        "activation_checkpointing": bool(trainer.args.activation_checkpointing),
        "bf16_autocast": bool(trainer.args.bf16),
        "weights_dtype": _frozen_dtype(trainer.model),
        "collator": type(counter.collate).__name__,
        "padding_free": bool(getattr(counter.collate, "padding_free", False)),
        "pass_tokens": plan["pass_tokens"] if plan else None,
        "precision": plan["precision"] if plan else None,
        "activation_mb_per_1k_tokens": (
            plan["bytes_per_token"] * 1024 / 2**20 if plan and plan["bytes_per_token"] is not None else None
        ),
        "fast_path": plan,
        "warmup_steps": warmup,
        "examples": len(lengths),
        "real_tokens": sum(lengths),
        "trained_tokens": trained,
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "tokens_per_second": sum(lengths) / seconds,
        "trained_tokens_per_second": trained / seconds,
        "model_flops": flops,
        "achieved_gflops": flops / seconds / 1e9,
        "peak_rss_mb": timer.peak_rss_mb[total - 1],  # before any profiled step (the profiler holds memory)
        "peak_gpu_mb": _peak_gpu_mb(),
        "final_loss": trainer.state.log_history[-1].get("train_loss"),
        "profile": profiler.result if profiler else None,
    }


def _frozen_dtype(model) -> str:
    """The dtype most weights are stored in (the frozen base with LoRA)."""
    import collections

    sizes: collections.Counter = collections.Counter()
    for p in model.parameters():
        sizes[str(p.dtype).replace("torch.", "")] += p.numel()
    return sizes.most_common(1)[0][0]


# --------------------------------------------------------------------------- the comparison (parent)


def bench(
    config: str,
    overrides: list[str] = (),
    steps: int = 5,
    data: str = "config",
    repeats: int = 1,
    warmup: int | None = None,
    profile_steps: int = 0,
) -> dict[str, Any]:
    """Run both sides `repeats` times, alternating (ABBA...), and compare the best run of each."""
    from sftlib import dataset, modeling
    from sftlib.config import load_config
    from sftlib.errors import SftlibError

    overrides = list(overrides)
    workdir = Path(tempfile.mkdtemp(prefix="sftlib-bench-"))
    if data == "chat-mix":
        overrides += chat_mix_overrides(workdir)
    elif data != "config":
        raise SftlibError(f"--data {data!r} is not one of config, chat-mix.")
    cfg = load_config(config, overrides)
    dataset.prepare(
        cfg, modeling.load_tokenizer(cfg.model), splits=("train",)
    )  # tokenize once, outside the timings

    from sftlib.matmul import matmul_gflops

    device = training_device()
    warmup = default_warmup() if warmup is None else warmup
    ceilings = {
        "device": device,
        "bf16_gflops": matmul_gflops("bfloat16", device),
        "fp32_gflops": matmul_gflops("float32", device),
        "model_shapes": model_shape_ceilings(cfg, device),
    }
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    order = [SIDES if r % 2 == 0 else SIDES[::-1] for r in range(repeats)]
    for sides in order:
        for side in sides:
            result_file = workdir / f"{side}-{len(runs[side])}.json"
            cmd = [
                sys.executable,
                "-m",
                "sftlib.bench",
                "--side",
                side,
                "--config",
                config,
                "--steps",
                str(steps),
                "--warmup",
                str(warmup),
                "--profile-steps",
                str(profile_steps),
            ]
            cmd += [x for o in overrides for x in ("--set", o)] + ["--out", str(result_file)]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
            )
            if proc.returncode != 0:
                raise SftlibError(f"bench side {side!r} failed:\n{proc.stderr[-3000:]}")
            runs[side].append(json.loads(result_file.read_text()))
    best = {side: max(rs, key=lambda r: r["tokens_per_second"]) for side, rs in runs.items()}
    base, ours = best["baseline"], best["sftlib"]
    for r in best.values():
        r["mfu_bf16"] = r["achieved_gflops"] / ceilings["bf16_gflops"]
        # Where bf16 is emulated (no AVX512-BF16/AMX) its ceiling is below fp32's and mfu_bf16 can exceed 1:
        # utilization against the machine's fastest measured matmul is the honest figure there.
        r["mfu_best"] = r["achieved_gflops"] / max(ceilings["bf16_gflops"], ceilings["fp32_gflops"])
        # Against the model's own layer shapes at 512 tokens per pass: what these matmuls can reach here.
        r["mfu_model_bf16"] = r["achieved_gflops"] / ceilings["model_shapes"]["bfloat16"]["512"]
    return {
        "config": config,
        "overrides": overrides,
        "data": data,
        "steps": steps,
        "warmup_steps": warmup,
        "repeats": repeats,
        "machine": machine(),
        "ceilings": ceilings,
        "baseline": base,
        "sftlib": ours,
        "runs": runs,
        "speedup": ours["tokens_per_second"] / base["tokens_per_second"],
        "rss_ratio": max(r["peak_rss_mb"] for r in runs["sftlib"])
        / max(r["peak_rss_mb"] for r in runs["baseline"]),
        "gpu_memory_ratio": (
            max(r["peak_gpu_mb"] for r in runs["sftlib"]) / max(r["peak_gpu_mb"] for r in runs["baseline"])
            if device == "cuda"
            else None
        ),
        "mfu_bf16": ours["mfu_bf16"],
        "mfu_best": ours["mfu_best"],
        "mfu_model_bf16": ours["mfu_model_bf16"],
    }


def machine() -> dict[str, Any]:
    """The CPU (model name, whether bf16 is native and from which flags), cores, load, torch, GPU."""
    import platform

    import torch

    from sftlib.modeling import cpu_bf16_flags, cpu_has_fast_bf16

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_bf16_flags": cpu_bf16_flags(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        # oneDNN, which runs PyTorch's CPU matmuls, can be told to use less of the CPU than it has
        # (e.g. AVX512_CORE: no bf16 instructions, as on a CPU without native bf16); the flags then overstate.
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def format_table(result: dict[str, Any]) -> str:
    """The comparison as a fixed-width text table."""
    rows = [
        ("real tokens/s", "tokens_per_second", "{:.0f}"),
        ("trained tokens/s", "trained_tokens_per_second", "{:.0f}"),
        ("seconds/step", "seconds_per_step", "{:.2f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("peak GPU memory (MB)", "peak_gpu_mb", "{:.0f}"),
        ("MFU (bf16 ceiling)", "mfu_bf16", "{:.3f}"),
        ("MFU (fastest ceiling)", "mfu_best", "{:.3f}"),
        ("MFU (model bf16 512)", "mfu_model_bf16", "{:.3f}"),
        ("precision", "precision", "{}"),
        ("micro-batch x accum", None, None),
        ("weights / autocast", None, None),
        ("act. checkpointing", "activation_checkpointing", "{}"),
        ("tokens per pass", None, None),
        ("collator", "collator", "{}"),
    ]
    b, s = result["baseline"], result["sftlib"]
    lines = [f"{'':22}{'baseline':>22}{'sftlib':>22}"]
    for label, key, fmt in rows:
        if label.startswith("micro"):
            cells = [f"{r['micro_batch_size']} x {r['gradient_accumulation_steps']}" for r in (b, s)]
        elif label.startswith("tokens per pass"):
            cells = [
                "whole micro-batch" if r["pass_tokens"] is None else f"<= {r['pass_tokens']}" for r in (b, s)
            ]
        elif label.startswith("weights"):
            cells = [f"{r['weights_dtype']} / {'bf16' if r['bf16_autocast'] else 'off'}" for r in (b, s)]
        elif b[key] is None:
            continue  # e.g. GPU memory on a CPU run
        else:
            cells = [fmt.format(r[key]) for r in (b, s)]
        lines.append(f"{label:22}{cells[0]:>22}{cells[1]:>22}")
    from sftlib.profiling import format_breakdown

    for side in SIDES:
        if result[side].get("profile"):
            lines.append(format_breakdown(side, result[side]["profile"]))
    c, m = result["ceilings"], result["machine"]
    gpu = result.get("gpu_memory_ratio")
    bf16 = "native bf16" if m.get("cpu_native_bf16") else "emulated bf16"
    capped = f"; oneDNN capped at {m['onednn_max_cpu_isa']}" if m.get("onednn_max_cpu_isa") else ""
    lines.append(f"CPU: {m.get('cpu')} ({bf16}; flags {m.get('cpu_bf16_flags')}{capped})")
    lines.append(
        f"speedup {result['speedup']:.2f}x   rss_ratio {result['rss_ratio']:.2f}   "
        + (f"gpu_memory_ratio {gpu:.2f}   " if gpu is not None else "")
        + f"{c['device']} matmul ceilings: bf16 {c['bf16_gflops']:.0f} GFLOP/s, fp32 {c['fp32_gflops']:.0f} GFLOP/s   "
        f"load average {result['machine']['load_average'][0]:.1f} on {result['machine']['cores']} cores"
    )
    return "\n".join(lines)


def _side_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sftlib.bench", description="one side of `sftlib bench` (internal)"
    )
    p.add_argument("--side", choices=SIDES, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--profile-steps", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    result = run_side(a.side, a.config, a.overrides, a.steps, a.warmup, a.profile_steps)
    Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_side_main())
